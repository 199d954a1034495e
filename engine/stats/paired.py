"""One paired test on matched samples: McNemar's score test and Tango's interval that inverts it, Bonferroni level.

Shared by ``gauntlet compare`` (``stats/compare.py``) and the leaderboard's neighbour tests
(``stats/leaderboard.py``), so both quote the same numbers for the same 2×2 table. In a family of
``m`` tests the interval has level 1 − 0.05/m and the p-value is ``min(1, m·p)``: the interval
excludes 0 exactly when the adjusted p is below 0.05 (docs/results.md, "Statistics").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.stats.intervals import Z95, PairedCounts, mcnemar_score, normal_quantile, tango_paired_interval

ALPHA = 0.05
Sample = tuple[str, int]  # (dataset, sample_id)


def paired_counts(a: Mapping[Sample, bool], b: Mapping[Sample, bool]) -> tuple[PairedCounts, int, int]:
    """The 2×2 table over the samples both have, and the samples only A / only B has (left out)."""
    common = a.keys() & b.keys()
    cells = [0, 0, 0, 0]  # both, only A, only B, neither
    for s in common:
        cells[(0 if a[s] else 2) + (0 if b[s] else 1)] += 1
    return PairedCounts(*cells), len(a.keys() - common), len(b.keys() - common)


@dataclass(frozen=True)
class ScoreTest:
    """Tango's interval for A − B at ``ci_level``, McNemar's p, and ``min(1, m·p)`` for a family of ``m``."""

    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float
    p_adjusted: float
    m: int


def bonferroni_z(m: int) -> float:
    """The z of a two-sided (1 − 0.05/m) interval (1.96 for one test)."""
    return -normal_quantile(ALPHA / (2 * m)) if m > 1 else Z95


def score_test(table: PairedCounts, m: int = 1) -> ScoreTest:
    """The test of "A and B equally accurate" in a Bonferroni family of ``m`` (1: no adjustment)."""
    lo, hi = tango_paired_interval(table, bonferroni_z(m))
    p = mcnemar_score(table.only_a, table.only_b)
    return ScoreTest(lo, hi, 1 - ALPHA / m, p, min(1.0, m * p), m)
