"""The verdict rule for one claim: interval, REFUTED / CONSISTENT / INCONCLUSIVE, the rule that decided, and the
samples that would decide.

Pure functions of the per-sample scores (1 = robust, 0 = broken; a fraction per
sample for corruption claims) and of what the evaluation could not vouch for
(uncleared indicators, a ladder that did not converge, a reduced budget), so every
boundary of the rule is a unit test (tests/test_decide.py). docs/claims.md states
the rule and its statistics; the rules, in the order they are tried:

1. ``interval_below_claim`` → REFUTED: the 95 % interval's upper bound is below the
   claim. It rests on verified adversarial examples, so nothing else matters.
2. ``leans_below_claim`` → INCONCLUSIVE (upper-bound claims: adversarial ones): the
   measured accuracy is more than ``tolerance`` below the claim. An attacked
   accuracy is an upper bound on robust accuracy, so evidence below the claim can
   never support it; more samples (``samples_needed``) would refute it if the
   measured accuracy held.
3. ``interval_too_wide`` → INCONCLUSIVE: the claim is not below the interval and the
   interval's half-width exceeds ``resolution``.
4. ``attack_failure`` → INCONCLUSIVE: an indicator of attack failure was not cleared.
5. ``not_converged`` → INCONCLUSIVE: the escalation ladder stopped while its last
   round was still breaking samples (budget spent, or its strongest rung reached).
6. ``reduced_budget`` → INCONCLUSIVE: the attacks ran below their full budget.
7. ``supported`` → CONSISTENT: none of the above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.stats.aggregate import wilson_interval

Z95 = 1.959963984540054
MAX_SAMPLES = 1_000_000
TOLERANCE = 0.02  # an upper-bound claim may sit this far above the measured accuracy and still be supported
EXACT = 1e-9  # comparisons of fractions are made with this slack, so 0.5 claimed of a measured 0.5 is "at"

RULES = ("interval_below_claim", "no_samples", "leans_below_claim", "interval_too_wide", "attack_failure",
         "not_converged", "reduced_budget", "supported")


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


@dataclass(frozen=True)
class Rule:
    """The rule's settings: ``resolution`` (largest half-width that decides), ``tolerance`` (how far an upper-bound
    claim may sit above the measured accuracy), ``upper_bound`` (adversarial claims: the measured accuracy can
    only overestimate; False for clean and corruption accuracy, which are estimates either way)."""

    resolution: float = 0.10
    tolerance: float = TOLERANCE
    upper_bound: bool = True

    def leans_below(self, accuracy: float, claim: float) -> bool:
        return self.upper_bound and claim > accuracy + self.tolerance + EXACT

    def decisive(self, lo: float, hi: float, claim: float) -> bool:
        return claim <= lo + EXACT or (hi - lo) / 2 <= self.resolution + EXACT


def samples_needed(est: Estimate, claim: float, rule: Rule, sd: float | None = None) -> int | None:
    """Smallest n at which, if the measured accuracy held, the claim would be decided: refuted (interval entirely
    below it) or supported (not leaning below it, and the interval decisive). None when no n up to a million
    does."""
    p = est.accuracy

    def decided(n: int) -> bool:
        lo, hi = _interval(p, n, sd)
        return hi < claim or (not rule.leans_below(p, claim) and rule.decisive(lo, hi, claim))

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
class Blockers:
    """What the evaluation itself could not vouch for; each blocks CONSISTENT, none blocks REFUTED."""

    uncleared: Sequence[str] = ()  # indicators of attack failure not cleared by escalation
    not_converged: str = ""  # why the ladder stopped before the attacks stopped finding breaks
    budget: float = 1.0  # ``budget=`` scale of the attacks' iterations and queries


@dataclass(frozen=True)
class Decision:
    verdict: str  # REFUTED | CONSISTENT | INCONCLUSIVE
    reason: str
    samples_needed: int | None = None
    rule: str = "supported"  # which rule decided (RULES, docs/claims.md)
    also: list[str] = field(default_factory=list)  # the other rules that would have blocked CONSISTENT


def _failing(est: Estimate, claim: float, rule: Rule, b: Blockers) -> list[tuple[str, str]]:
    """Every rule (2-6 of the module docstring) that blocks CONSISTENT, in order, with its sentence."""
    out = []
    if rule.leans_below(est.accuracy, claim):
        out.append(("leans_below_claim", f"the measured accuracy is {100 * (claim - est.accuracy):.1f} pp below the "
                    f"claimed {claim:.1%} (more than the ±{100 * rule.tolerance:g} pp tolerance): an attacked accuracy "
                    "is an upper bound, so this evidence cannot support the claim"))
    elif not rule.decisive(est.ci_low, est.ci_high, claim):
        out.append(("interval_too_wide", f"the interval (±{100 * est.half_width:.1f} pp) is wider than the resolution "
                    f"±{100 * rule.resolution:g} pp and contains the claimed {claim:.1%}"))
    if b.uncleared:
        out.append(("attack_failure", "these indicators of attack failure were not cleared by escalation: "
                    f"{', '.join(b.uncleared)}; the measured accuracy may be an overestimate"))
    if b.not_converged:
        out.append(("not_converged", f"the escalation ladder did not converge ({b.not_converged}); the measured "
                    "accuracy may be an overestimate"))
    if b.budget < 1:
        out.append(("reduced_budget", f"the attacks ran at {b.budget:g}× their iterations and queries "
                    f"(budget={b.budget:g}), so the measured accuracy may be an overestimate: re-run with the full "
                    "budget to confirm"))
    return out


def decide(est: Estimate, claim: float, rule: Rule, blockers: Blockers | None = None,
           sd: float | None = None) -> Decision:
    """The verdict on ``claim`` from ``est`` under ``rule`` (module docstring); the reason names the rule that
    decided, and the other rules that would also have blocked CONSISTENT."""
    b = blockers or Blockers()
    if est.n == 0:
        return Decision("INCONCLUSIVE", "rule no_samples: nothing was measured (no sample)", None, "no_samples")
    pct = f"measured {est.accuracy:.1%} [{est.ci_low:.1%}, {est.ci_high:.1%}] on {est.n} samples"
    if est.ci_high < claim:
        return Decision("REFUTED", f"rule interval_below_claim: {pct}: the interval's upper bound is below the "
                        f"claimed {claim:.1%}", None, "interval_below_claim")
    failing = _failing(est, claim, rule, b)
    if not failing:
        where = "at or below the measured accuracy" if claim <= est.accuracy + EXACT else \
            f"within the ±{100 * rule.tolerance:g} pp tolerance of the measured accuracy"
        decisive = "below the interval" if claim <= est.ci_low + EXACT else (
            f"the interval's half-width ±{100 * est.half_width:.1f} pp is within the resolution "
            f"±{100 * rule.resolution:g} pp")
        return Decision("CONSISTENT", f"rule supported: {pct}: the claimed {claim:.1%} is {where}, and {decisive}",
                        None, "supported")
    name, first = failing[0]
    need = samples_needed(est, claim, rule, sd) if name in ("leans_below_claim", "interval_too_wide") else None
    text = f"rule {name}: {pct}: {first}"
    if name in ("leans_below_claim", "interval_too_wide"):
        text += f"; about {need} samples would decide it" if need else "; no feasible sample count decides it"
    also = [n for n, _ in failing[1:]]
    if also:
        text += "; also: " + "; ".join(sentence for _, sentence in failing[1:])
    return Decision("INCONCLUSIVE", text, need, name, also)


def thin_margin(est: Estimate, claim: float, drop: float) -> bool:
    """True when the claim is not refuted but would be if a stronger attack lowered the accuracy by ``drop``."""
    if est.ci_high < claim or est.n == 0:
        return False
    shifted = max(0.0, est.accuracy - drop)
    _, hi = wilson_interval(round(shifted * est.n), est.n) if est.binary else (0.0, est.ci_high - drop)
    return hi < claim
