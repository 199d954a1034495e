"""Pure functions over the per-sample table: accuracy per (model, perturbation, level) with Wilson intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa

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


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95 % by default); stays inside [0, 1]."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_table(table: pa.Table) -> list[AccuracyRow]:
    """Accuracy per (model, perturbation, family, norm, level), sorted by perturbation, level, model."""
    if table.num_rows == 0:
        return []
    grouped = table.group_by(list(GROUP_KEYS), use_threads=False).aggregate(
        [("correct", "sum"), ("correct", "count")]
    )
    rows = []
    for rec in grouped.to_pylist():
        n, k = int(rec["correct_count"]), int(rec["correct_sum"])
        lo, hi = wilson_interval(k, n)
        rows.append(
            AccuracyRow(rec["model"], rec["perturbation"], rec["family"], rec["norm"],
                        float(rec["level"]), n, k, lo, hi)
        )
    return sorted(rows, key=lambda r: (r.perturbation, r.level, r.model))
