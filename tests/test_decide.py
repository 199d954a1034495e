"""The verdict rule (engine/claims/decide.py, docs/claims.md "The verdict"): every boundary of every rule.

Pure functions of an interval and of what the evaluation could not vouch for: no model, no attack.
"""

from __future__ import annotations

import pytest

from engine.claims.decide import (
    RULES,
    TOLERANCE,
    Blockers,
    Estimate,
    Rule,
    decide,
    estimate,
    samples_needed,
)
from engine.stats.aggregate import wilson_interval

RULE = Rule(resolution=0.10, tolerance=0.02)


def est(acc: float, lo: float, hi: float, n: int = 100) -> Estimate:
    return Estimate(acc, lo, hi, n, True)


def measured(k: int, n: int) -> Estimate:
    return estimate([1.0] * k + [0.0] * (n - k))


# -- rule interval_below_claim: REFUTED ----------------------------------------------------------------------------


def test_refuted_exactly_when_the_upper_bound_is_below_the_claim() -> None:
    e = est(0.50, 0.40, 0.60)
    d = decide(e, 0.6001, RULE)
    assert d.verdict == "REFUTED" and d.rule == "interval_below_claim"
    assert d.reason.startswith("rule interval_below_claim:") and d.samples_needed is None
    at_bound = decide(e, 0.60, RULE)  # the upper bound equal to the claim: not below it
    assert at_bound.verdict == "INCONCLUSIVE" and at_bound.rule == "leans_below_claim"


def test_refuted_wins_over_every_blocker() -> None:
    every = Blockers(uncleared=["zero_gradients_path"], not_converged="eot: still breaking", budget=0.1)
    d = decide(est(0.50, 0.40, 0.60), 0.70, RULE, every)
    assert d.verdict == "REFUTED" and d.rule == "interval_below_claim"  # verified examples, whatever else failed


# -- rule leans_below_claim: an upper bound below the claim never supports it --------------------------------------


def test_the_issue_example_is_not_consistent() -> None:
    e = measured(59, 100)  # 59.0 % [49.2 %, 68.1 %]: the claimed 67 % lies inside the interval
    assert e.ci_low < 0.67 < e.ci_high and e.half_width < 0.10
    d = decide(e, 0.67, RULE)
    assert d.verdict == "INCONCLUSIVE" and d.rule == "leans_below_claim"
    assert "8.0 pp below the claimed 67.0%" in d.reason and "upper bound" in d.reason
    need = d.samples_needed
    assert need is not None and need > 100
    assert wilson_interval(round(0.59 * need), need)[1] < 0.67  # that many would refute it, if 59 % held
    assert wilson_interval(round(0.59 * (need - 1)), need - 1)[1] >= 0.67 or need - 1 == 100
    assert f"about {need} samples would decide it" in d.reason


def test_the_tolerance_is_inclusive() -> None:
    e = est(0.50, 0.45, 0.55, 400)
    within = decide(e, 0.50 + TOLERANCE, RULE)
    assert within.verdict == "CONSISTENT" and within.rule == "supported" and "tolerance" in within.reason
    beyond = decide(e, 0.50 + TOLERANCE + 1e-6, RULE)
    assert beyond.verdict == "INCONCLUSIVE" and beyond.rule == "leans_below_claim"


def test_a_zero_tolerance_needs_the_claim_at_or_below_the_measurement() -> None:
    strict = Rule(0.10, tolerance=0.0)
    e = est(0.50, 0.45, 0.55, 400)
    assert decide(e, 0.50, strict).verdict == "CONSISTENT"
    assert decide(e, 0.501, strict).rule == "leans_below_claim"


def test_an_estimate_not_a_bound_is_judged_on_its_interval_alone() -> None:
    # clean and corruption accuracy are estimates, not upper bounds: a claim inside a decisive interval fits
    e = est(0.50, 0.45, 0.55, 400)
    assert decide(e, 0.54, Rule(0.10, 0.02, upper_bound=False)).verdict == "CONSISTENT"
    assert decide(e, 0.54, RULE).rule == "leans_below_claim"


# -- rule interval_too_wide and the claim below the interval -------------------------------------------------------


def test_a_claim_at_the_measurement_needs_a_decisive_interval() -> None:
    assert decide(est(0.50, 0.40, 0.60), 0.50, RULE).verdict == "CONSISTENT"  # half-width exactly the resolution
    wide = decide(est(0.50, 0.38, 0.62, 60), 0.50, RULE)
    assert wide.verdict == "INCONCLUSIVE" and wide.rule == "interval_too_wide"
    assert wide.samples_needed is not None and wide.samples_needed > 60


def test_a_claim_at_or_below_the_lower_bound_is_decided_whatever_the_width() -> None:
    wide = est(0.50, 0.30, 0.70, 20)
    below = decide(wide, 0.30, RULE)  # exactly the lower bound
    assert below.verdict == "CONSISTENT" and "below the interval" in below.reason
    assert decide(wide, 0.10, RULE).verdict == "CONSISTENT"
    assert decide(wide, 0.3001, RULE).rule == "interval_too_wide"


def test_samples_needed_is_the_smallest_deciding_count() -> None:
    e = measured(10, 20)
    n = samples_needed(e, 0.50, RULE)
    assert n is not None

    def decided(k: int) -> bool:
        return decide(measured(round(k * 0.5), k), 0.50, RULE).verdict != "INCONCLUSIVE"

    assert decided(n) and not decided(n - 2)


def test_samples_needed_is_n_when_decided_and_none_when_no_count_up_to_a_million_decides() -> None:
    assert samples_needed(est(0.5, 0.4, 0.6), 0.5, RULE) == 100  # already decided at n
    hair = decide(measured(50, 100), 0.50001, Rule(0.10, tolerance=0.0))  # 0.001 pp above: refuting needs ~10¹⁰
    assert hair.rule == "leans_below_claim" and hair.samples_needed is None
    assert "no feasible sample count decides it" in hair.reason


# -- blockers: attack_failure, not_converged, reduced_budget -------------------------------------------------------


@pytest.mark.parametrize(("blockers", "rule", "needle"), [
    (Blockers(uncleared=["zero_gradients_path"]), "attack_failure", "zero_gradients_path"),
    (Blockers(not_converged="eot: rung 3 still broke 4 of 40"), "not_converged", "did not converge"),
    (Blockers(budget=0.5), "reduced_budget", "budget=0.5"),
])
def test_each_blocker_alone_turns_support_into_inconclusive(blockers: Blockers, rule: str, needle: str) -> None:
    e = est(0.50, 0.40, 0.60)
    assert decide(e, 0.45, RULE).verdict == "CONSISTENT"
    d = decide(e, 0.45, RULE, blockers)
    assert d.verdict == "INCONCLUSIVE" and d.rule == rule and needle in d.reason
    assert d.reason.startswith(f"rule {rule}:") and d.samples_needed is None


def test_the_first_failing_rule_decides_and_the_others_are_named() -> None:
    every = Blockers(uncleared=["silent_success"], not_converged="square: budget", budget=0.2)
    d = decide(est(0.50, 0.40, 0.60), 0.55, RULE, every)
    assert d.rule == "leans_below_claim" and d.also == ["attack_failure", "not_converged", "reduced_budget"]
    assert "silent_success" in d.reason and "did not converge" in d.reason and "budget=0.2" in d.reason
    d = decide(est(0.50, 0.40, 0.60), 0.45, RULE, every)
    assert d.rule == "attack_failure" and d.also == ["not_converged", "reduced_budget"]


def test_nothing_measured_is_inconclusive() -> None:
    d = decide(estimate([]), 0.5, RULE)
    assert d.verdict == "INCONCLUSIVE" and d.rule == "no_samples"


def test_every_rule_has_a_name_in_the_list() -> None:
    seen = {decide(est(0.5, 0.4, 0.6), 0.7, RULE).rule, decide(est(0.5, 0.4, 0.6), 0.55, RULE).rule,
            decide(est(0.5, 0.38, 0.62, 60), 0.5, RULE).rule, decide(estimate([]), 0.5, RULE).rule,
            decide(est(0.5, 0.4, 0.6), 0.5, RULE).rule,
            decide(est(0.5, 0.4, 0.6), 0.5, RULE, Blockers(uncleared=["x"])).rule,
            decide(est(0.5, 0.4, 0.6), 0.5, RULE, Blockers(not_converged="x")).rule,
            decide(est(0.5, 0.4, 0.6), 0.5, RULE, Blockers(budget=0.5)).rule}
    assert seen == set(RULES)
