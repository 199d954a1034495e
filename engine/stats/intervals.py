"""Pure statistics for the results: binomial and paired intervals, McNemar, Holm, Bonferroni (no I/O, no SciPy).

Everything here takes counts and returns numbers, so it can be checked against
``scipy.stats`` in the tests and by simulation, and used by the report, the
comparison and the W&B sink alike. The choices are explained in docs/results.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def normal_quantile(q: float) -> float:
    """The standard normal's ``q`` quantile (0 < q < 1), by bisection on ``erfc``: exact to double precision.

    Used for the z of a (1 − α/m) interval, whose level no constant covers; pass the small tail
    (``-normal_quantile(α / 2m)``) for full precision far out, where ``1 − q`` rounds.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q > 0.5:  # the lower tail, where erfc keeps its relative precision
        return -normal_quantile(1.0 - q)
    lo, hi = -40.0, 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (95 % by default); inside [0, 1]."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes §6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse of ``betainc`` in x by bisection (monotone; 200 halvings reach double precision)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def clopper_pearson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval: beta quantiles; conservative, coverage ≥ 1 − alpha."""
    if n == 0:
        return (float("nan"), float("nan"))
    lo = 0.0 if k == 0 else _beta_ppf(alpha / 2, k, n - k + 1)
    hi = 1.0 if k == n else _beta_ppf(1 - alpha / 2, k + 1, n - k)
    return (lo, hi)


def binomial_interval(k: int, n: int, method: str = "wilson") -> tuple[float, float]:
    """95 % interval by name: ``wilson`` (default) or ``clopper-pearson``."""
    if method == "wilson":
        return wilson_interval(k, n)
    if method in ("clopper-pearson", "clopper_pearson", "exact"):
        return clopper_pearson_interval(k, n)
    raise ValueError(f"unknown interval method {method!r}; use wilson or clopper-pearson")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``b`` vs ``c`` discordant pairs at 1/2.

    ``p = min(1, 2 · P(X ≤ min(b, c)))`` with ``X ~ Bin(b + c, 1/2)``, computed in exact
    integers (no overflow or rounding before the final division).
    """
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    term, tail = 1, 1  # C(n, 0)
    for i in range(1, k + 1):
        term = term * (n - i + 1) // i
        tail += term
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class PairedCounts:
    """A 2×2 table of paired outcomes on the same samples: both right, only A, only B, both wrong."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def difference(self) -> float:
        """Accuracy of A minus accuracy of B (a fraction)."""
        return (self.only_a - self.only_b) / self.n if self.n else float("nan")


def newcombe_paired_interval(t: PairedCounts, z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) for the difference of paired proportions.

    Combines the Wilson intervals of both accuracies with the phi correlation of the
    2×2 table (continuity-corrected as Newcombe does: ``ad − bc`` above ``n/2`` is reduced
    by ``n/2``, values in ``[0, n/2]`` count as 0); stays inside [-1, 1] and keeps close to
    nominal coverage with few discordant pairs, where the Wald interval does not.
    """
    n = t.n
    if n == 0:
        return (float("nan"), float("nan"))
    p1, p2 = (t.both + t.only_a) / n, (t.both + t.only_b) / n
    l1, u1 = wilson_interval(t.both + t.only_a, n, z)
    l2, u2 = wilson_interval(t.both + t.only_b, n, z)
    r1, r2 = t.both + t.only_a, t.only_b + t.neither  # A right / A wrong
    c1, c2 = t.both + t.only_b, t.only_a + t.neither  # B right / B wrong
    denom = r1 * r2 * c1 * c2
    cross = t.both * t.neither - t.only_a * t.only_b
    # Newcombe's continuity-corrected phi: shrink a positive correlation by n/2, zero in between
    cross_cc = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = 0.0 if denom == 0 else cross_cc / math.sqrt(denom)
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return (max(-1.0, low), min(1.0, high))


def mcnemar_score(b: int, c: int) -> float:
    """Two-sided McNemar score test (asymptotic, no continuity correction): ``z = (b − c) / √(b + c)``.

    It is the score test of "A and B equally accurate" that Tango's interval inverts, so the two
    always agree; Fagerland, Lydersen & Laake (2013) found its size close to nominal even for small
    samples, where the exact conditional test is conservative. 1 when there is no discordant pair.
    """
    if b + c == 0:
        return 1.0
    return math.erfc(abs(b - c) / math.sqrt(2.0 * (b + c)))


def tango_score(t: PairedCounts, delta: float) -> float:
    """Tango's (1998) score statistic for H0: accuracy A − accuracy B = ``delta``, decreasing in ``delta``.

    The variance uses the maximum-likelihood estimate of P(B right, A wrong) under H0, the
    larger root of ``2n·x² + (−b − c + (2n − b + c)·δ)·x − c·δ(1 − δ) = 0``; at δ = 0 it is
    McNemar's z.
    """
    n, b, c = t.n, t.only_a, t.only_b
    quad_b = -b - c + (2 * n - b + c) * delta
    quad_c = -c * delta * (1 - delta)
    p21 = (-quad_b + math.sqrt(max(0.0, quad_b * quad_b - 8 * n * quad_c))) / (4 * n)
    var = n * (2 * p21 + delta * (1 - delta))
    num = b - c - n * delta
    if var <= 0 or num == 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_paired_interval(t: PairedCounts, z: float = Z95) -> tuple[float, float]:
    """Tango's score interval for accuracy A − accuracy B on paired samples: {δ : |score(δ)| ≤ z}.

    The inversion of McNemar's score test (``mcnemar_score``): the interval excludes 0 exactly
    when that test rejects at the matching level. Bisection on the monotone statistic; inside [−1, 1].
    """
    n = t.n
    if n == 0:
        return (float("nan"), float("nan"))
    d = t.difference

    def root(lo: float, hi: float, target: float) -> float:
        """δ in [lo, hi] where the decreasing score crosses ``target`` (an end when it never does)."""
        if tango_score(t, lo) <= target:
            return lo
        if tango_score(t, hi) >= target:
            return hi
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if tango_score(t, mid) > target else (lo, mid)
            if hi - lo < 1e-13:
                break
        return 0.5 * (lo + hi)

    return (root(-1.0, d, z), root(d, 1.0, -z))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over the rows given), input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def bonferroni_adjust(pvalues: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values ``min(1, m·p)``: the test that matches (1 − α/m) simultaneous intervals."""
    m = len(pvalues)
    return [min(1.0, m * p) for p in pvalues]


def trapezoid_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Area under the piecewise-linear curve through (xs, ys); xs ascending."""
    return float(sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)))


def format_p(p: float) -> str:
    """``p < 1e-6`` below a millionth, else three significant digits."""
    if p < 1e-6:
        return "p < 1e-6"
    return f"p = {p:.3g}"
