"""Intervals, McNemar, Holm, worst case, AUC and the paired comparison: against SciPy, by hand, by simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from engine.stats.aggregate import accuracy_area, accuracy_table, worst_case
from engine.stats.compare import paired_comparison, render_paired, sentence
from engine.stats.intervals import (
    PairedCounts,
    bonferroni_adjust,
    clopper_pearson_interval,
    holm_adjust,
    mcnemar_exact,
    mcnemar_score,
    newcombe_paired_interval,
    normal_quantile,
    tango_paired_interval,
    tango_score,
    trapezoid_area,
    wilson_interval,
)
from engine.store.parquet import SCHEMA

CASES = [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (45, 200), (199, 200), (4321, 5000), (9990, 10000)]


@pytest.mark.parametrize(("k", "n"), CASES)
def test_binomial_intervals_match_scipy(k: int, n: int) -> None:
    res = sps.binomtest(k, n)
    for ours, method in ((wilson_interval(k, n), "wilson"), (clopper_pearson_interval(k, n), "exact")):
        ref = res.proportion_ci(confidence_level=0.95, method=method)
        assert ours == pytest.approx((ref.low, ref.high), abs=1e-9), method


def _coverage(interval: object, n: int, p: float, sims: int, rng: np.random.Generator) -> float:
    table = [interval(k, n) for k in range(n + 1)]  # type: ignore[operator]
    hits = [lo <= p <= hi for lo, hi in table]
    return float(np.mean([hits[k] for k in rng.binomial(n, p, size=sims)]))


@pytest.mark.parametrize("p", [0.5, 0.8, 0.95])
def test_interval_coverage_by_simulation(p: float) -> None:
    rng = np.random.default_rng(0)
    wilson = _coverage(wilson_interval, 200, p, 20_000, rng)
    exact = _coverage(clopper_pearson_interval, 200, p, 20_000, rng)
    assert 0.93 <= wilson <= 0.97, wilson
    assert 0.945 <= exact <= 0.99, exact  # conservative by construction
    assert exact >= wilson - 0.005


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (3, 10), (12, 2), (25, 25), (100, 140), (600, 400), (0, 66)])
def test_mcnemar_exact_matches_scipy_binomtest(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else sps.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_hand_cases_and_level() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 2 · P(X = 0), X ~ Bin(5, 1/2)
    assert mcnemar_exact(1, 4) == pytest.approx(2 * 6 / 32)
    rng = np.random.default_rng(1)
    discordant = rng.binomial(40, 0.5, size=4000)  # H0 true: b ~ Bin(40, 1/2)
    rejections = np.mean([mcnemar_exact(int(b), 40 - int(b)) < 0.05 for b in discordant])
    assert rejections <= 0.05  # exact test: the level is never exceeded


def _newcombe_by_hand(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """Newcombe (1998) method 10 written out independently with SciPy's Wilson intervals."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    w1 = sps.binomtest(a + b, n).proportion_ci(method="wilson")
    w2 = sps.binomtest(a + c, n).proportion_ci(method="wilson")
    marg = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    corr = cross - n / 2 if cross > n / 2 else (0 if cross >= 0 else cross)
    phi = corr / math.sqrt(marg) if marg else 0.0
    low = (p1 - p2) - math.sqrt((p1 - w1.low) ** 2 - 2 * phi * (p1 - w1.low) * (w2.high - p2) + (w2.high - p2) ** 2)
    high = (p1 - p2) + math.sqrt((w1.high - p1) ** 2 - 2 * phi * (w1.high - p1) * (p2 - w2.low) + (p2 - w2.low) ** 2)
    return low, high


@pytest.mark.parametrize("cells", [(36, 12, 2, 0), (263, 15, 3, 19), (1, 1, 7, 12), (59, 6, 16, 80), (20, 0, 0, 80),
                                   (100, 66, 0, 34)])
def test_newcombe_interval_by_hand(cells: tuple[int, int, int, int]) -> None:
    t = PairedCounts(*cells)
    lo, hi = newcombe_paired_interval(t)
    assert (lo, hi) == pytest.approx(_newcombe_by_hand(*cells), abs=1e-9)
    assert lo <= t.difference <= hi and lo >= -1 and hi <= 1


@pytest.mark.parametrize("probs", [(0.6, 0.2, 0.1, 0.1), (0.85, 0.05, 0.02, 0.08), (0.3, 0.3, 0.05, 0.35)])
def test_paired_interval_coverage_by_simulation(probs: tuple[float, float, float, float]) -> None:
    rng = np.random.default_rng(2)
    true = probs[1] - probs[2]
    draws = rng.multinomial(200, probs, size=3000)
    hits = 0
    for cells in draws:
        lo, hi = newcombe_paired_interval(PairedCounts(*(int(x) for x in cells)))
        hits += lo <= true <= hi
    assert 0.93 <= hits / len(draws) <= 0.975, hits / len(draws)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 1), (3, 10), (12, 2), (25, 25), (100, 140), (0, 66)])
def test_mcnemar_score_matches_scipy_chi2(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else sps.chi2.sf((b - c) ** 2 / (b + c), 1)
    assert mcnemar_score(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_normal_quantile_and_bonferroni() -> None:
    for q in (1e-9, 1e-6, 0.025, 0.5, 0.975, 1 - 0.05 / 14):
        assert normal_quantile(q) == pytest.approx(sps.norm.ppf(q), abs=1e-9)
    assert bonferroni_adjust([0.01, 0.3, 0.02]) == pytest.approx([0.03, 0.9, 0.06])
    with pytest.raises(ValueError):
        normal_quantile(1.0)


def _tango_by_hand(cells: tuple[int, int, int, int], z: float) -> tuple[float, float]:
    """Tango's interval written out independently: the constrained MLE by numerical maximisation of the
    profile likelihood, the bounds by Brent's method on the score statistic."""
    from scipy.optimize import brentq, minimize_scalar

    a, b, c, d = cells
    n = a + b + c + d

    def score(delta: float) -> float:
        lo, hi = max(0.0, -delta) + 1e-13, (1 - delta) / 2 - 1e-13
        def nll(x: float) -> float:
            return -((a + d) * math.log(1 - delta - 2 * x) + (b * math.log(x + delta) if b else 0.0)
                     + (c * math.log(x) if c else 0.0))
        p21 = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
        return (b - c - n * delta) / math.sqrt(n * (2 * p21 + delta * (1 - delta)))

    est = (b - c) / n
    return (brentq(lambda x: score(x) - z, -0.999999, est), brentq(lambda x: score(x) + z, est, 0.999999))


@pytest.mark.parametrize("cells", [(36, 12, 2, 0), (263, 15, 3, 19), (1, 1, 7, 12), (59, 6, 16, 80),
                                   (100, 30, 1, 34)])
def test_tango_interval_by_hand(cells: tuple[int, int, int, int]) -> None:
    t = PairedCounts(*cells)
    for z in (sps.norm.ppf(0.975), sps.norm.ppf(1 - 0.05 / 12)):
        assert tango_paired_interval(t, z) == pytest.approx(_tango_by_hand(cells, z), abs=1e-6)


def test_tango_interval_is_the_inversion_of_mcnemars_score_test() -> None:
    """On every table of a grid and at 95 % and Bonferroni levels: the interval excludes 0 exactly when the
    test rejects, contains the estimate, stays in [−1, 1], and the statistic decreases in δ."""
    rng = np.random.default_rng(3)
    for _ in range(600):
        t = PairedCounts(*(int(x) for x in rng.integers(0, 30, 4)))
        if t.n == 0:
            continue
        scores = [tango_score(t, x) for x in np.linspace(-1, 1, 41)]
        assert all(s1 >= s2 - 1e-9 for s1, s2 in itertools.pairwise(scores))
        for alpha in (0.05, 0.05 / 6, 0.05 / 28):
            lo, hi = tango_paired_interval(t, normal_quantile(1 - alpha / 2))
            assert -1 <= lo <= t.difference <= hi <= 1
            assert (lo > 0 or hi < 0) == (mcnemar_score(t.only_a, t.only_b) < alpha), (t, alpha)


@pytest.mark.parametrize("probs", [(0.6, 0.2, 0.1, 0.1), (0.85, 0.05, 0.02, 0.08), (0.3, 0.3, 0.05, 0.35)])
def test_tango_interval_coverage_by_simulation(probs: tuple[float, float, float, float]) -> None:
    rng = np.random.default_rng(4)
    true = probs[1] - probs[2]
    draws = rng.multinomial(200, probs, size=2000)
    hits = sum(lo <= true <= hi for lo, hi in (tango_paired_interval(PairedCounts(*(int(x) for x in cells)))
                                               for cells in draws))
    assert 0.93 <= hits / len(draws) <= 0.975, hits / len(draws)


def test_holm_by_hand() -> None:
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []


def test_trapezoid_area() -> None:
    assert trapezoid_area([0.0, 0.1, 0.3], [1.0, 0.5, 0.0]) == pytest.approx(0.075 + 0.05)


def _rows(records: list[tuple[str, str, str, float, int, bool]]) -> pa.Table:
    """(model, perturbation, family, level, sample_id, correct) → a table under the results schema."""
    cols: dict[str, list[object]] = {f.name: [] for f in SCHEMA}
    for model, pert, fam, level, sid, ok in records:
        for k, v in (("run_id", "r"), ("task_id", f"{model}-{pert}"), ("model", model), ("dataset", "digits"),
                     ("sample_id", sid), ("label", 0), ("perturbation", pert), ("family", fam),
                     ("norm", None if fam != "attack" else "linf"), ("level", level), ("pred", 0 if ok else 1),
                     ("correct", ok), ("margin", 1.0 if ok else -1.0), ("perturbation_size", level),
                     ("broken_by", "" if ok else pert), ("grad_evals", 0), ("queries", 0), ("seed", 0),
                     ("queries_to_success", None), ("float_correct", None)):
            cols[k].append(v)
    return pa.table(cols, schema=SCHEMA)


def test_worst_case_counts_only_samples_every_attack_saw() -> None:
    recs = [("m", "fgsm", "attack", 0.1, i, i % 2 == 0) for i in range(10)]
    recs += [("m", "pgd", "attack", 0.1, i, i % 4 == 0) for i in range(8)]  # samples 8, 9 unseen by pgd
    recs += [("m", "pgd", "attack", 0.2, i, False) for i in range(8)]
    (w,) = worst_case(_rows(recs), ["fgsm", "pgd"], 0.1)
    assert (w.n, w.n_robust, w.excluded) == (8, 2, 2)  # robust under both: samples 0 and 4
    assert w.ci_low < 0.25 < w.ci_high


def test_area_under_accuracy_vs_eps() -> None:
    recs = [("m", "pgd", "attack", lv, i, i < k) for lv, k in ((0.0, 10), (0.1, 5), (0.3, 0)) for i in range(10)]
    (a,) = accuracy_area(accuracy_table(_rows(recs)))
    assert a.area == pytest.approx(0.125) and a.normalised == pytest.approx(0.125 / 0.3) and a.n_min == 10


def test_paired_comparison_counts_exclusions_and_words() -> None:
    recs = [("a", "pgd", "attack", 0.1, i, True) for i in range(60)]
    recs += [("b", "pgd", "attack", 0.1, i, i < 10) for i in range(55)]  # b lacks samples 55-59
    recs += [("b", "pgd", "attack", 0.1, 100, True)]  # a lacks sample 100
    recs += [("a", "clean", "clean", 0.0, i, True) for i in range(20)] + [
        ("b", "clean", "clean", 0.0, i, i != 3) for i in range(20)]
    rows = paired_comparison(_rows(recs), [("a", "b")])
    by = {r.perturbation: r for r in rows}
    pgd = by["pgd"]
    assert (pgd.n, pgd.counts.only_a, pgd.counts.only_b, pgd.only_in_a, pgd.only_in_b) == (55, 45, 0, 5, 1)
    assert pgd.p_value == pytest.approx(sps.chi2.sf(45.0, 1))  # McNemar's score test: (b − c)² / (b + c)
    assert pgd.p_adjusted == pytest.approx(min(1.0, 2 * pgd.p_value))  # Bonferroni over the 2 rows
    assert pgd.ci_level == pytest.approx(0.975) and pgd.decision == "a"
    assert sentence(pgd).startswith("a is more robust than b under pgd at ε = 0.1: a − b = +81.8 pp [")
    assert sentence(pgd).endswith("(97.5 % CI), p < 1e-6 (Bonferroni over 2 primary rows)")
    assert sentence(by["clean"]).startswith("no significant difference between a and b on clean inputs: a − b = "
                                            "+5.0 pp")
    table = render_paired(rows)
    assert "5+1" in table and "2 primary rows: Bonferroni" in table


def test_statistics_and_comparison_import_neither_matplotlib_nor_wandb() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys, engine.stats.intervals, engine.stats.aggregate, engine.stats.compare, engine.store.rundir, "
            "engine.sinks.summary_doc, "
            "engine.sinks.wandb_sink; bad = [m for m in ('matplotlib', 'wandb', 'ray') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_disjoint_samples_give_an_empty_row_that_says_so() -> None:
    import json

    from engine.stats.compare import json_safe

    recs = [("a", "pgd", "attack", 0.1, i, True) for i in range(5)] + [
        ("b", "pgd", "attack", 0.1, i, False) for i in range(5, 9)]
    (row,) = paired_comparison(_rows(recs), [("a", "b")])
    assert (row.n, row.only_in_a, row.only_in_b, row.p_value) == (0, 5, 4, 1.0)
    assert sentence(row) == "a vs b under pgd at ε = 0.1: no sample evaluated for both"
    doc = json.loads(json.dumps(json_safe(row.as_dict()), allow_nan=False))
    assert doc["difference"] is None and doc["ci_low"] is None
