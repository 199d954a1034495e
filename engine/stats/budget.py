"""Budget curves of query-based attacks: success rate and robust accuracy at 100 / 1,000 / 10,000 queries.

Per (model, perturbation, ε) the rows give each attacked sample (one the target classified correctly before
the attack) either its queries to success (``queries_to_success``) or, if it was never broken, the queries it
spent (``queries``). An unbroken sample is *censored* at what it spent plus one (a success needs the query
that finds it and the success check, so one more query could not have broken it): it might have been broken
with more queries. The success rate at budget B is the Kaplan-Meier estimate 1 − S(B) over those times (equal to the
plain fraction ``broken within B / attacked`` when every unbroken sample spent at least B); robust accuracy at
B is ``(attacked − broken within B) / n``, an upper bound on the model's robust accuracy (a stronger or
longer attack can only lower it). A budget above the most queries any attacked sample spent is not reported
when some sample is still unbroken (the run did not reach it; with every sample broken it is known). Pure:
rows in, numbers out.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BUDGETS = (100, 1_000, 10_000)
UPPER_BOUND_NOTE = ("black-box (query-based) accuracies are upper bounds on robust accuracy: a stronger attack or a "
                    "larger query budget can only lower them")


@dataclass(frozen=True)
class BudgetPoint:
    """One budget B of a curve; ``success`` and ``robust`` are None when the run did not spend B on anyone."""

    budget: int
    success: float | None  # Kaplan-Meier estimate of P(broken within B) among attacked samples
    robust: float | None  # (attacked − broken within B) / n: an upper bound on robust accuracy at B
    broken: int  # samples broken within B


@dataclass(frozen=True)
class BudgetCurve:
    """Per (model, perturbation, ε): the points at ``BUDGETS`` and the query statistics behind them."""

    model: str
    perturbation: str
    level: float
    n: int  # samples evaluated
    attacked: int  # correctly classified before the attack
    broken: int  # broken at all (within the run's budget)
    censored: int  # attacked and never broken: censored at the queries they spent
    max_queries: int  # how far the run's answers reach: the largest success or censoring time
    mean_queries: float | None  # over successes
    median_queries: float | None  # over successes
    points: tuple[BudgetPoint, ...]


def kaplan_meier(events: Sequence[int], censored: Sequence[int], at: int) -> float:
    """1 − S(at): the estimated probability of an event by ``at``, events at ``events``, censoring at
    ``censored`` (a sample censored at t is at risk at t: the usual convention, censoring after events)."""
    survival = 1.0
    at_risk = len(events) + len(censored)
    times = sorted(set(events))
    ev = sorted(events)
    ce = sorted(censored)
    i = j = 0
    for t in times:
        if t > at:
            break
        while j < len(ce) and ce[j] < t:  # censored before t: no longer at risk
            at_risk -= 1
            j += 1
        d = 0
        while i < len(ev) and ev[i] == t:
            d += 1
            i += 1
        if at_risk > 0:
            survival *= 1.0 - d / at_risk
        at_risk -= d
    return 1.0 - survival


def _curve(key: tuple[str, str, float], rows: Sequence[Mapping[str, Any]],
           budgets: Sequence[int]) -> BudgetCurve:
    attacked = [r for r in rows if r["correct"] or r["queries_to_success"] is not None]
    events = [int(r["queries_to_success"]) for r in attacked if r["queries_to_success"] is not None]
    # an unbroken sample that spent c queries is known unbroken within c + 1: a success counts the query that
    # found it and its check, so it needs two more (the frame keeps the last query of a budget for the check)
    cens = [int(r["queries"]) + 1 for r in attacked if r["queries_to_success"] is None]
    top = max([*events, *cens], default=0)
    points = []
    for b in budgets:
        within = sum(1 for e in events if e <= b)
        if not attacked or (b > top and cens):  # unbroken samples stopped before b: the run did not reach it
            points.append(BudgetPoint(b, None, None, within))
            continue
        points.append(BudgetPoint(b, kaplan_meier(events, cens, b), (len(attacked) - within) / len(rows), within))
    return BudgetCurve(
        model=key[0], perturbation=key[1], level=key[2], n=len(rows), attacked=len(attacked), broken=len(events),
        censored=len(cens), max_queries=top,
        mean_queries=statistics.fmean(events) if events else None,
        median_queries=float(statistics.median(events)) if events else None, points=tuple(points))


def budget_curves(rows: Iterable[Mapping[str, Any]], perturbations: Collection[str] | None = None,
                  budgets: Sequence[int] = BUDGETS) -> list[BudgetCurve]:
    """Curves for every (model, perturbation, ε > 0) of ``perturbations`` (default: those with any
    ``queries_to_success``), sorted. Rows need model, perturbation, level, correct, queries, queries_to_success."""
    groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for r in rows:
        if float(r["level"]) <= 0:
            continue
        groups.setdefault((str(r["model"]), str(r["perturbation"]), float(r["level"])), []).append(r)
    if perturbations is None:
        perturbations = {k[1] for k, rs in groups.items() if any(r["queries_to_success"] is not None for r in rs)}
    return [_curve(k, rs, budgets) for k, rs in sorted(groups.items()) if k[1] in perturbations]


def as_dict(c: BudgetCurve) -> dict[str, Any]:
    """JSON-ready form (report/summary.json ``budget_curves``)."""
    return {"model": c.model, "perturbation": c.perturbation, "level": c.level, "n": c.n, "attacked": c.attacked,
            "broken": c.broken, "censored": c.censored, "max_queries": c.max_queries,
            "mean_queries": c.mean_queries, "median_queries": c.median_queries,
            "points": [{"budget": p.budget, "success": p.success, "robust_accuracy": p.robust, "broken": p.broken}
                       for p in c.points]}
