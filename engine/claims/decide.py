"""The verdict rule for one claim: interval, REFUTED / CONSISTENT / INCONCLUSIVE, and the samples that would decide.

Pure functions of the per-sample scores (1 = robust, 0 = broken; a fraction per
sample for corruption claims), so the rule is tested without running an attack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine.stats.aggregate import wilson_interval

Z95 = 1.959963984540054
MAX_SAMPLES = 1_000_000


@dataclass(frozen=True)
class Estimate:
    """Measured accuracy over ``n`` samples with its 95 % interval."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    binary: bool  # Wilson interval on 0/1 scores; else a normal interval on per-sample means

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def estimate(scores: Sequence[float]) -> Estimate:
    """Mean of ``scores`` with a 95 % interval: Wilson for 0/1 scores, normal (clipped) for fractions."""
    n = len(scores)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, True)
    mean = sum(scores) / n
    if all(s in (0, 1) for s in scores):
        lo, hi = wilson_interval(round(sum(scores)), n)
        return Estimate(mean, lo, hi, n, True)
    var = sum((s - mean) ** 2 for s in scores) / max(n - 1, 1)
    half = Z95 * math.sqrt(var / n)
    return Estimate(mean, max(0.0, mean - half), min(1.0, mean + half), n, False)


def _interval(p: float, n: int, sd: float | None) -> tuple[float, float]:
    if sd is None:
        return wilson_interval(round(p * n), n)
    half = Z95 * sd / math.sqrt(n)
    return max(0.0, p - half), min(1.0, p + half)


def samples_needed(est: Estimate, claim: float, resolution: float, sd: float | None = None) -> int | None:
    """Smallest n at which, if the measured accuracy held, the claim would be decided: refuted (interval
    entirely below it), clearly met (entirely above), or the interval narrower than ± ``resolution``.
    None when no n up to a million does."""
    p = est.accuracy

    def decided(n: int) -> bool:
        lo, hi = _interval(p, n, sd)
        return hi < claim or lo >= claim or (hi - lo) / 2 <= resolution

    if decided(est.n):
        return est.n
    lo_n, hi_n = est.n, est.n
    while not decided(hi_n):
        if hi_n >= MAX_SAMPLES:
            return None
        lo_n, hi_n = hi_n, min(hi_n * 2, MAX_SAMPLES)
    while hi_n - lo_n > 1:  # the decided condition is monotone in n (for a fixed accuracy)
        mid = (lo_n + hi_n) // 2
        lo_n, hi_n = (lo_n, mid) if decided(mid) else (mid, hi_n)
    return hi_n


@dataclass(frozen=True)
class Decision:
    verdict: str  # REFUTED | CONSISTENT | INCONCLUSIVE
    reason: str
    samples_needed: int | None = None


def decide(est: Estimate, claim: float, resolution: float, uncleared: Sequence[str],
           sd: float | None = None) -> Decision:
    """REFUTED when the interval's upper bound is below the claim; CONSISTENT when the claim is within or
    below the interval, the interval is decisive (claim below it, or half-width ≤ ``resolution``) and no
    indicator is left uncleared; otherwise INCONCLUSIVE, saying why (and how many samples would decide)."""
    pct = f"{est.accuracy:.1%} [{est.ci_low:.1%}, {est.ci_high:.1%}] on {est.n} samples"
    if est.ci_high < claim:
        return Decision("REFUTED", f"measured {pct}: the interval's upper bound is below the claimed {claim:.1%}")
    if uncleared:
        return Decision("INCONCLUSIVE", f"measured {pct}, but these indicators of attack failure were not cleared "
                        f"by escalation: {', '.join(uncleared)}; the measured accuracy may be an overestimate")
    if claim <= est.ci_low or est.half_width <= resolution:
        return Decision("CONSISTENT", f"measured {pct}: the claimed {claim:.1%} lies "
                        f"{'below' if claim < est.ci_low else 'within'} the interval")
    need = samples_needed(est, claim, resolution, sd)
    more = f"about {need} samples would decide it" if need else "no feasible sample count decides it"
    return Decision("INCONCLUSIVE", f"measured {pct}: the interval (±{100 * est.half_width:.1f} pp) is wider "
                    f"than the resolution ±{100 * resolution:g} pp and contains the claimed {claim:.1%}; {more}", need)


def thin_margin(est: Estimate, claim: float, drop: float) -> bool:
    """True when the claim is not refuted but would be if a stronger attack lowered the accuracy by ``drop``."""
    if est.ci_high < claim or est.n == 0:
        return False
    shifted = max(0.0, est.accuracy - drop)
    _, hi = wilson_interval(round(shifted * est.n), est.n) if est.binary else (0.0, est.ci_high - drop)
    return hi < claim
