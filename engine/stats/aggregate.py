"""Pure functions over the per-sample table: accuracy per (model, perturbation, level) with intervals and counts,
per-sample worst case over a set of perturbations, and the area under accuracy-vs-ε curves (no I/O)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from engine.stats.intervals import binomial_interval, trapezoid_area, wilson_interval

__all__ = ["GROUP_KEYS", "AccuracyRow", "AreaRow", "WorstCaseRow", "accuracy_area", "accuracy_table",
           "wilson_interval", "worst_case"]

GROUP_KEYS = ("model", "perturbation", "family", "norm", "level")


@dataclass(frozen=True)
class AccuracyRow:
    model: str
    perturbation: str
    family: str
    norm: str | None
    level: float
    n: int
    n_correct: int
    ci_low: float
    ci_high: float

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n if self.n else float("nan")


def accuracy_table(table: pa.Table, method: str = "wilson") -> list[AccuracyRow]:
    """Accuracy per (model, perturbation, family, norm, level), sorted by perturbation, level, model.

    ``method`` names the 95 % interval: ``wilson`` (default) or ``clopper-pearson``.
    """
    if table.num_rows == 0:
        return []
    grouped = table.group_by(list(GROUP_KEYS), use_threads=False).aggregate(
        [("correct", "sum"), ("correct", "count")]
    )
    rows = []
    for rec in grouped.to_pylist():
        n, k = int(rec["correct_count"]), int(rec["correct_sum"])
        lo, hi = binomial_interval(k, n, method)
        rows.append(
            AccuracyRow(rec["model"], rec["perturbation"], rec["family"], rec["norm"],
                        float(rec["level"]), n, k, lo, hi)
        )
    return sorted(rows, key=lambda r: (r.perturbation, r.level, r.model))


@dataclass(frozen=True)
class WorstCaseRow:
    """Samples correct under *every* perturbation of ``perturbations`` at ``level``, per model.

    ``n`` counts the samples evaluated by all of them; ``excluded`` those that some but
    not all of them evaluated (left out rather than counted as robust).
    """

    model: str
    perturbations: tuple[str, ...]
    level: float
    n: int
    n_robust: int
    excluded: int
    ci_low: float
    ci_high: float

    @property
    def accuracy(self) -> float:
        return self.n_robust / self.n if self.n else float("nan")


def worst_case(table: pa.Table, perturbations: Iterable[str], level: float,
               method: str = "wilson") -> list[WorstCaseRow]:
    """Per model, the per-sample worst case over ``perturbations`` at ``level`` ("robust to everything tried")."""
    chosen = tuple(sorted(set(perturbations)))
    if not chosen or table.num_rows == 0:
        return []
    mask = pc.and_(pc.is_in(table["perturbation"], value_set=pa.array(chosen, pa.string())),
                   pc.equal(table["level"], float(level)))
    sub = table.filter(mask).select(["model", "dataset", "sample_id", "perturbation", "correct"]).to_pylist()
    seen: dict[str, dict[tuple[str, int], list[bool]]] = defaultdict(lambda: defaultdict(list))
    present: dict[str, dict[tuple[str, int], set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in sub:
        key = (r["dataset"], r["sample_id"])
        seen[r["model"]][key].append(bool(r["correct"]))
        present[r["model"]][key].add(r["perturbation"])
    out = []
    for model in sorted(seen):
        complete = [k for k, ps in present[model].items() if len(ps) == len(chosen)]
        robust = sum(1 for k in complete if all(seen[model][k]))
        lo, hi = binomial_interval(robust, len(complete), method)
        out.append(WorstCaseRow(model, chosen, float(level), len(complete), robust,
                                len(present[model]) - len(complete), lo, hi))
    return out


@dataclass(frozen=True)
class AreaRow:
    """Area under accuracy vs ε (trapezoids through the measured levels) for one model and attack.

    ``normalised`` divides by the ε range, so 1.0 means fully accurate at every ε;
    ``n_min`` is the smallest sample count among the levels.
    """

    model: str
    perturbation: str
    levels: tuple[float, ...]
    area: float
    normalised: float
    n_min: int


def accuracy_area(rows: Sequence[AccuracyRow]) -> list[AreaRow]:
    """One ``AreaRow`` per (model, attack) with at least two levels; corruptions and clean are skipped."""
    curves: dict[tuple[str, str], list[AccuracyRow]] = defaultdict(list)
    for r in rows:
        if r.family == "attack":
            curves[(r.model, r.perturbation)].append(r)
    out = []
    for (model, pert), rs in sorted(curves.items()):
        rs = sorted(rs, key=lambda r: r.level)
        if len(rs) < 2:
            continue
        xs, ys = [r.level for r in rs], [r.accuracy for r in rs]
        area = trapezoid_area(xs, ys)
        out.append(AreaRow(model, pert, tuple(xs), area, area / (xs[-1] - xs[0]), min(r.n for r in rs)))
    return out
