"""The escalation ladder for the claims of one norm: run the cheapest step that can still change a verdict, climb a
family's rungs while its last round still breaks samples, skip (and record) what cannot change anything, stop
when the attacks stop finding breaks or the budget is spent.

Pure control flow: what a step is (engine.claims.escalate), which claimed ε are
still worth attacking and running a step (engine.claims.run) come in as
callables, so every branch is a unit test (tests/test_ladder.py). The rules
(docs/claims.md, "The escalation ladder"):

* A step runs only at the claimed ε still **live**: some claim there is not yet
  refuted (an attack can only lower a measured accuracy, so a refuted claim stays
  refuted) and some sample there is still robust. With no live ε, every pending
  step is skipped and the skip recorded.
* Of the pending steps (the next rung of every family chosen), the cheapest per
  sample runs first (ties: ``escalate.ORDER``).
* A round that broke more than ``CONVERGED_SHARE`` of the samples it attacked at
  some ε queues its family's next rung; at its strongest rung, the family stays
  **open** at that ε: the ladder did not converge there.
* A step whose cost (at most ``cost`` evaluations per sample × samples) would take
  the spent evaluations past the budget is skipped, with every pending step: the
  ladder stopped for the budget, and each family still pending stays open.

An ε where a family stays open cannot get a CONSISTENT verdict (engine.claims.decide).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.claims.escalate import ORDER, RUNGS, Escalation

CONVERGED_SHARE = 0.02  # a round that breaks at most this share of what it attacked (at every ε) has converged
LADDER_EVALS = 50_000  # default budget: model evaluations per sample of the claims, for the whole ladder


@dataclass
class RoundResult:
    """What one step did: per ε (``f"{eps:g}"``) robust before/after, samples it broke (at any ε), its cost."""

    changed: dict[str, dict[str, int]]
    broke: int
    cost: int  # model evaluations, read from the result rows (grad_evals + queries)
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Live:
    """The ε still worth attacking (each with its robust sample ids), and why each other claimed ε is not."""

    eps: dict[float, list[int]]
    dead: dict[float, str]  # "refuted" | "nothing_left"


@dataclass
class Ladder:
    """The ladder's record for one norm: every round run or skipped, the budget and why it stopped."""

    budget: int  # model evaluations for the whole ladder
    share: float = CONVERGED_SHARE
    spent: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""  # not_needed | converged | top_rung | budget | refuted | nothing_left
    open_at: dict[str, dict[float, str]] = field(default_factory=dict)  # family → ε → why it is still open

    def not_converged(self, eps: float) -> str:
        """Why the ladder did not converge at ``eps`` ("" when it did)."""
        why = [f"{k}: {w[eps]}" for k, w in self.open_at.items() if eps in w]
        if not why:
            return ""
        tail = f"; the ladder stopped at its budget ({self.spent:,} of {self.budget:,} model evaluations)" \
            if self.stopped == "budget" else ""
        return "; ".join(why) + tail

    def as_dict(self, eps: float | None = None) -> dict[str, Any]:
        """The record without its rounds (a verdict lists them as ``escalations``), with the convergence at ``eps``."""
        ran = sum(1 for r in self.rounds if r["status"] == "ran")
        out: dict[str, Any] = {"stopped": self.stopped, "budget_evals": self.budget, "spent_evals": self.spent,
                               "converged_share": self.share, "rounds_run": ran,
                               "rounds_skipped": len(self.rounds) - ran}
        if eps is not None:
            why = self.not_converged(eps)
            out |= {"converged": not why, "not_converged": why or None}
        return out


MakeStep = Callable[[str, int, list[float]], Escalation]
RunStep = Callable[[Escalation, list[int]], RoundResult]


def climb(ladder: Ladder, kinds: dict[str, list[str]], make: MakeStep, live: Callable[[], Live],
          run: RunStep, fired_at: dict[str, list[float]] | None = None) -> None:
    """Run the ladder (module docstring) for the families ``kinds`` (kind → reasons), recording into ``ladder``."""
    pending = dict.fromkeys(kinds, 1)
    if not pending:
        ladder.stopped = "not_needed"
        return
    while pending:
        now = live()
        for opened in ladder.open_at.values():  # refuted or emptied since: nothing there to converge any more
            for e in [e for e in opened if e in now.dead]:
                opened.pop(e)
        if not now.eps:
            _skip_all(ladder, pending, kinds, make, now)
            return
        eps = sorted(now.eps)
        steps = {k: make(k, r, eps) for k, r in pending.items()}
        kind = min(steps, key=lambda k: (steps[k].cost, ORDER.index(k) if k in ORDER else len(ORDER)))
        step = steps[kind]
        ids = sorted(set().union(*(set(v) for v in now.eps.values())))
        if ladder.spent + step.cost * len(ids) > ladder.budget:
            _budget_stop(ladder, pending, kinds, steps, eps, len(ids))
            return
        result = run(step, ids)
        ladder.spent += result.cost
        breaking = _record_round(ladder, step, kinds[kind], eps, ids, result, fired_at or {})
        if breaking and step.rung < RUNGS.get(kind, 1):
            pending[kind] += 1
        else:
            pending.pop(kind)
    ladder.stopped = "top_rung" if any(ladder.open_at.values()) else "converged"


def _share(c: dict[str, int]) -> float:
    return c["broke"] / c["robust_before"] if c["robust_before"] else 0.0


def _record_round(ladder: Ladder, step: Escalation, reasons: list[str], eps: list[float], ids: list[int],
                  result: RoundResult, fired_at: dict[str, list[float]]) -> bool:
    """Append the round; update which ε its family is open at; True when it still broke more than the share."""
    breaking = []
    opened = ladder.open_at.setdefault(step.kind, {})
    for e in eps:
        c = result.changed.get(f"{e:g}")
        if c is not None and _share(c) > ladder.share:
            breaking.append(e)
            top = "" if step.rung < RUNGS.get(step.kind, 1) else " at its strongest rung"
            opened[e] = (f"rung {step.rung} still broke {c['broke']} of {c['robust_before']} robust samples "
                         f"({_share(c):.0%} > {ladder.share:.0%}){top}")
        else:
            opened.pop(e, None)
    ladder.rounds.append({
        "kind": step.kind, "rung": step.rung, "perturbation": step.perturbation, "status": "ran",
        "reasons": list(reasons), "fired_at": {r: [f"{x:g}" for x in fired_at[r]] for r in reasons if r in fired_at},
        "eps": eps, "samples": len(ids), "broke": result.broke, "changed": result.changed,
        "still_breaking_at": [f"{e:g}" for e in breaking], "cost_estimate": step.cost * len(ids),
        "cost": result.cost, "wall_s": round(result.wall_s, 1), **result.extra})
    return bool(breaking)


def _skip_all(ladder: Ladder, pending: dict[str, int], kinds: dict[str, list[str]], make: MakeStep,
              now: Live) -> None:
    """No live ε: every pending step is skipped, saying why (each claim refuted, or nothing left to break)."""
    refuted = [f"{e:g}" for e, why in sorted(now.dead.items()) if why == "refuted"]
    empty = [f"{e:g}" for e, why in sorted(now.dead.items()) if why != "refuted"]
    parts = []
    if refuted:
        parts.append(f"every claim at ε {', '.join(refuted)} is already refuted (an attack can only lower the "
                     "measured accuracy)")
    if empty:
        parts.append(f"no sample is left robust at ε {', '.join(empty)}")
    why = "; ".join(parts) or "no claimed ε left to attack"
    for kind, rung in pending.items():
        ladder.rounds.append({"kind": kind, "rung": rung, "perturbation": make(kind, rung, []).perturbation,
                              "status": "skipped", "reasons": list(kinds[kind]), "why": why,
                              "changed": f"skipped: {why}"})
    ladder.stopped = "refuted" if refuted else "nothing_left"


def _budget_stop(ladder: Ladder, pending: dict[str, int], kinds: dict[str, list[str]],
                 steps: dict[str, Escalation], eps: list[float], n: int) -> None:
    """The cheapest pending step would overrun the budget: skip every pending step; each family stays open."""
    left = ladder.budget - ladder.spent
    for kind, rung in pending.items():
        step = steps[kind]
        why = (f"would cost up to {step.cost * n:,} model evaluations ({step.cost:,} per sample × {n}); "
               f"{left:,} of the ladder budget's {ladder.budget:,} are left")
        ladder.rounds.append({"kind": kind, "rung": rung, "perturbation": step.perturbation, "status": "skipped",
                              "reasons": list(kinds[kind]), "why": why, "changed": f"skipped: {why}", "eps": eps})
        opened = ladder.open_at.setdefault(kind, {})
        for e in eps:
            opened.setdefault(e, f"rung {rung} was not run: the ladder budget was spent")
    ladder.stopped = "budget"
