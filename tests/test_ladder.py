"""The escalation ladder (engine/claims/ladder.py): order, climbing, convergence, skips and the budget.

The ladder's control flow runs against a scripted world: each claimed ε has robust samples and claims, and each
(family, rung) breaks a scripted number of samples, so every branch is checked without an attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.claims import escalate
from engine.claims.build import compose
from engine.claims.escalate import Escalation
from engine.claims.ladder import CONVERGED_SHARE, Ladder, Live, RoundResult, climb
from engine.stats.aggregate import wilson_interval

COST = {"eot": 4_000, "bpda": 1_000, "transfer": 1_100, "plus": 2_000, "square": 20_000}


@dataclass
class World:
    """Robust samples per ε, the claims per ε, and what each (kind, rung) breaks per ε."""

    robust: dict[float, set[int]]
    claims: dict[float, list[float]]
    breaks: dict[tuple[str, int], int] = field(default_factory=dict)
    n: int = 100
    made: list[tuple[str, int, list[float]]] = field(default_factory=list)
    ran: list[tuple[str, int, list[float], int]] = field(default_factory=list)

    def make(self, kind: str, rung: int, eps: list[float]) -> Escalation:
        self.made.append((kind, rung, eps))
        return Escalation(kind, escalate.perturbation_name(kind, "linf", rung), {"eps": eps}, rung=rung,
                          cost=COST[kind] * rung)

    def live(self) -> Live:
        live, dead = {}, {}
        for e, ids in self.robust.items():
            hi = wilson_interval(len(ids), self.n)[1]
            if not ids:
                dead[e] = "nothing_left"
            elif all(hi < c for c in self.claims[e]):
                dead[e] = "refuted"
            else:
                live[e] = sorted(ids)
        return Live(live, dead)

    def run(self, step: Escalation, ids: list[int]) -> RoundResult:
        eps = list(step.config["eps"])
        self.ran.append((step.kind, step.rung, eps, len(ids)))
        changed, broke = {}, set()
        for e in eps:
            before = len(self.robust[e])
            gone = sorted(self.robust[e])[: self.breaks.get((step.kind, step.rung), 0)]
            self.robust[e] -= set(gone)
            broke |= set(gone)
            changed[f"{e:g}"] = {"robust_before": before, "robust_after": len(self.robust[e]), "n": self.n,
                                 "broke": len(gone)}
        return RoundResult(changed, len(broke), step.cost * len(ids) // 2, 0.1)


def world(robust: int = 50, claim: float = 0.45, **breaks: int) -> World:
    parsed = {(k.rstrip("0123456789"), int(k[len(k.rstrip("0123456789")):])): v for k, v in breaks.items()}
    return World({0.2: set(range(robust))}, {0.2: [claim]}, parsed)


def climbed(w: World, kinds: dict[str, list[str]], budget: int = 10**9) -> Ladder:
    lad = Ladder(budget)
    climb(lad, kinds, w.make, w.live, w.run)
    return lad


def test_no_reason_no_ladder() -> None:
    lad = climbed(world(), {})
    assert lad.stopped == "not_needed" and lad.rounds == [] and lad.not_converged(0.2) == ""


def test_the_cheapest_pending_step_runs_first() -> None:
    w = world()
    lad = climbed(w, {"eot": ["randomised"], "bpda": ["gradients"], "square": ["gradients"]})
    assert [r[0] for r in w.ran] == ["bpda", "eot", "square"]  # costs 1,000 < 4,000 < 20,000 per sample
    assert lad.stopped == "converged" and all(r["status"] == "ran" for r in lad.rounds)


def test_a_family_climbs_while_its_rounds_still_break_samples() -> None:
    w = world(claim=0.3, eot1=10, eot2=5, eot3=0)
    lad = climbed(w, {"eot": ["randomised"]})
    assert [(r[0], r[1]) for r in w.ran] == [("eot", 1), ("eot", 2), ("eot", 3)]
    assert lad.stopped == "converged" and lad.not_converged(0.2) == ""
    first = lad.rounds[0]
    assert first["broke"] == 10 and first["changed"]["0.2"] == {"robust_before": 50, "robust_after": 40, "n": 100,
                                                              "broke": 10}
    assert first["still_breaking_at"] == ["0.2"] and lad.rounds[-1]["still_breaking_at"] == []
    assert lad.spent == sum(r["cost"] for r in lad.rounds) and all(r["cost_estimate"] >= r["cost"]
                                                                   for r in lad.rounds)


def test_breaking_exactly_the_converged_share_is_convergence() -> None:
    w = world(robust=50, eot1=round(CONVERGED_SHARE * 50))  # 1 of 50 = 2 %: not more than the share
    lad = climbed(w, {"eot": ["randomised"]})
    assert [r[1] for r in w.ran] == [1] and lad.stopped == "converged"
    w = world(robust=50, eot1=2)  # 4 %: climb
    climbed(w, {"eot": ["randomised"]})
    assert [r[1] for r in w.ran] == [1, 2]


def test_a_strongest_rung_still_breaking_leaves_the_ladder_unconverged() -> None:
    w = world(robust=60, claim=0.3, square1=5, square2=5)
    lad = climbed(w, {"square": ["gradients"]})
    assert [r[1] for r in w.ran] == [1, 2] and lad.stopped == "top_rung"
    why = lad.not_converged(0.2)
    assert "square" in why and "strongest rung" in why and "5 of 55" in why
    assert lad.as_dict(0.2)["converged"] is False and lad.as_dict(0.2)["not_converged"] == why


def test_steps_are_skipped_once_every_claim_is_refuted() -> None:
    w = world(robust=50, claim=0.55, bpda1=10)  # 40 % [30.9, 49.9] after BPDA: refutes 55 %
    lad = climbed(w, {"bpda": ["gradients"], "transfer": ["gradients"], "square": ["gradients"]})
    assert [r[0] for r in w.ran] == ["bpda"]
    skipped = [r for r in lad.rounds if r["status"] == "skipped"]
    assert [(r["kind"], r["rung"]) for r in skipped] == [("bpda", 2), ("transfer", 1), ("square", 1)]
    assert all("already refuted" in r["why"] and "can only lower" in r["why"] for r in skipped)
    assert lad.stopped == "refuted" and lad.not_converged(0.2) == ""  # nothing there left to converge


def test_a_claim_refuted_before_the_ladder_skips_every_step() -> None:
    w = world(robust=30, claim=0.9)
    lad = climbed(w, {"plus": ["thin_margin"], "square": ["black_box_beats_white_box"]})
    assert w.ran == [] and lad.stopped == "refuted" and lad.spent == 0
    assert {r["kind"] for r in lad.rounds} == {"plus", "square"} and all(r["status"] == "skipped" for r in lad.rounds)


def test_nothing_left_to_break_skips_every_step() -> None:
    w = world(robust=0, claim=0.0)
    lad = climbed(w, {"eot": ["randomised"]})
    assert w.ran == [] and lad.stopped == "nothing_left" and "no sample is left robust" in lad.rounds[0]["why"]


def test_steps_run_only_at_the_claimed_eps_still_live() -> None:
    w = World({0.1: set(range(80)), 0.3: set(range(10))}, {0.1: [0.75], 0.3: [0.5]}, {("plus", 1): 1})
    lad = climbed(w, {"plus": ["thin_margin"]})
    assert w.ran[0][2] == [0.1]  # ε 0.3 is refuted (10 % of 100 against 50 %): nothing to change there
    assert list(lad.rounds[0]["changed"]) == ["0.1"]


def test_the_budget_stops_the_ladder_before_a_step_would_overrun_it() -> None:
    w = world(robust=50, eot1=10)
    lad = climbed(w, {"eot": ["randomised"]}, budget=4_000 * 50 + 1)  # rung 1 fits, rung 2 (8,000 × 40) does not
    assert [r[1] for r in w.ran] == [1] and lad.stopped == "budget"
    skip = lad.rounds[-1]
    assert skip["status"] == "skipped" and skip["rung"] == 2 and "ladder budget" in skip["why"]
    why = lad.not_converged(0.2)
    assert "rung 2 was not run" not in why and "still broke 10 of 50" in why and "budget" in why
    assert lad.spent <= lad.budget


def test_a_family_never_run_for_the_budget_stays_open() -> None:
    w = world(robust=50)
    lad = climbed(w, {"bpda": ["gradients"], "square": ["gradients"]}, budget=1_000 * 50)
    assert [r[0] for r in w.ran] == ["bpda"] and lad.stopped == "budget"
    assert "square: rung 1 was not run: the ladder budget was spent" in lad.not_converged(0.2)


def test_a_zero_budget_runs_nothing_and_converges_nowhere() -> None:
    w = world(robust=50)
    lad = climbed(w, {"eot": ["randomised"]}, budget=1)
    assert w.ran == [] and lad.stopped == "budget" and lad.not_converged(0.2)


def test_an_open_family_closes_when_its_claim_is_refuted_later() -> None:
    w = world(robust=50, claim=0.44, plus1=3, plus2=3, square1=20)
    lad = climbed(w, {"plus": ["thin_margin"], "square": ["gradients"]})
    # plus 1 and 2 still broke 3 of 47 / 44 (top rung: open); then Square refuted the claim: closed, skipped nothing
    assert [(r[0], r[1]) for r in w.ran] == [("plus", 1), ("plus", 2), ("square", 1)]
    assert lad.not_converged(0.2) == "" and lad.stopped == "refuted"


@pytest.mark.parametrize("kind", sorted(escalate.RUNGS))
def test_every_rung_builds_and_costs_more_than_the_one_below(kind: str) -> None:
    base = compose(["perturbation=[autoattack_standard_linf]"])["perturbation"]["autoattack_standard_linf"]
    at = "net" if kind in ("bpda", "transfer") else None
    steps = [escalate.build(kind, base, "linf", [0.1], at, False, rung=r) for r in range(1, escalate.RUNGS[kind] + 1)]
    assert steps[0].perturbation == f"escalation_{kind}_linf"
    assert all(s.perturbation == f"escalation_{kind}{s.rung}_linf" for s in steps[1:])
    assert all(s.config["eps"] == [0.1] and s.cost > 0 for s in steps)
    assert [s.cost for s in steps] == sorted(s.cost for s in steps) and len({s.cost for s in steps}) == len(steps)
    randomised = escalate.build(kind, base, "linf", [0.1], at, True)
    assert randomised.config["rescore"] == escalate.RESCORE and "rescore" not in steps[0].config
    with pytest.raises(ValueError, match="no rung"):
        escalate.build(kind, base, "linf", [0.1], at, False, rung=escalate.RUNGS[kind] + 1)


def test_costs_count_every_iteration_restart_draw_and_target() -> None:
    apgd = {"_target_": escalate.APGD_TARGET, "loss": "ce", "n_iter": 100, "n_restarts": 2, "eot": 20}
    targeted = {"_target_": escalate.APGD_TARGET, "loss": "dlr-targeted", "n_iter": 100, "n_target_classes": 9}
    square = {"_target_": "engine.perturbations.square.Square", "n_queries": 5000}
    wrapped: dict[str, Any] = {"_target_": "engine.perturbations.adaptive.Adaptive", "member": apgd}
    assert escalate.estimate_cost({"attacks": [apgd]}, 10) == 4_000 + 1 + 1
    assert escalate.estimate_cost({"attacks": [targeted, square]}, 10) == 900 + 5_000 + 2 + 1
    assert escalate.estimate_cost({"attacks": [targeted]}, 4) == 300 + 2  # capped at classes − 1 targets
    assert escalate.estimate_cost({"attacks": [wrapped], "rescore": 20}, 10) == 4_000 + 20 + 20
