"""The escalation ladder (engine/claims/ladder.py): order, climbing, convergence, skips and the budget.

The ladder's control flow runs against a scripted world: each claimed ε has robust samples and claims, and each
(family, rung) breaks a scripted number of samples, so every branch is checked without an attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from engine.claims import escalate
from engine.claims.build import compose
from engine.claims.escalate import Escalation
from engine.claims.ladder import CONVERGED_SHARE, Ladder, Live, RoundResult, climb
from engine.errors import ConfigError
from engine.perturbations.base import BatchContext, worst_of
from engine.perturbations.suite import AttackSuite, MemberContext, MemberResult, SuiteMember
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
    assert escalate.estimate_cost({"attacks": [apgd]}, 10) == 101 * 2 * 20 + 1 + 1
    assert escalate.estimate_cost({"attacks": [targeted, square]}, 10) == 101 * 9 + 1 + 5_001 + 2 + 1
    assert escalate.estimate_cost({"attacks": [targeted]}, 4) == 101 * 3 + 1 + 1 + 1  # at most classes − 1 targets
    assert escalate.estimate_cost({"attacks": [wrapped], "rescore": 20, "eps": [0.1, 0.2]}, 10) == \
        2 * (101 * 2 * 20 + 20) + 20  # at each ε


# -- randomised models: every example re-scored (AutoAttack pull request #105) ---------------------------------------


class Coin(torch.nn.Module):
    """Two classes, true class 0: each draw calls an input class 1 with probability mean(x) (clipped to [0, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1).mean(1).clamp(0, 1)
        wrong = (torch.rand(len(x)) < p).float()
        return torch.stack([1 - wrong, wrong], 1) * 2 - 1 + 0.0 * x.flatten(1)[:, :1]


@dataclass(frozen=True)
class Push(SuiteMember):
    """Returns every input raised to ``level`` (within ε = 1), claiming nothing; records the rows it attacked."""

    level: float = 0.3
    seen: list[int] = field(default_factory=list, compare=False, hash=False)

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        self.seen.append(len(x))
        zero = torch.zeros(len(x), dtype=torch.int64)
        return MemberResult(torch.full_like(x, self.level), torch.zeros(len(x), dtype=torch.bool), zero, zero)


def _suite(rescore: int, *members: SuiteMember) -> AttackSuite:
    return AttackSuite(name="s", norm="linf", eps=(1.0,), attacks=members, tags=("white-box", "AML.T0043.000"),
                       rescore=rescore)


def _coin_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor, BatchContext]:
    return torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long), BatchContext(Coin(), 0, torch.arange(n))


def test_worst_of_keeps_the_worst_draw_and_counts_the_misclassifying_ones() -> None:
    torch.manual_seed(0)
    x = torch.full((200, 1, 2, 2), 0.3)
    logits, wrong = worst_of(Coin(), x, torch.zeros(200, dtype=torch.long), 20)
    assert 0.2 < wrong.float().mean() / 20 < 0.4  # each draw: 30 %
    assert ((logits.argmax(1) != 0) == (wrong > 0)).all()  # the kept draw misclassifies iff some draw does
    clean_logits, clean_wrong = worst_of(Coin(), torch.zeros(5, 1, 2, 2), torch.zeros(5, dtype=torch.long), 20)
    assert (clean_wrong == 0).all() and (clean_logits.argmax(1) == 0).all()


def test_a_rescored_suite_keeps_the_example_most_draws_misclassify() -> None:
    torch.manual_seed(0)
    x, y, ctx = _coin_batch()
    weak, strong = Push(name="weak", level=0.1), Push(name="strong", level=0.8)
    (out,) = list(_suite(20, weak, strong).run(x, y, ctx))
    assert out.broken_by == ("strong",) * 8 and torch.allclose(out.x, torch.full_like(x, 0.8))
    assert weak.seen == [8] and strong.seen == [8]  # 10 % per draw: nobody left the cascade after "weak"
    assert int(out.queries.min()) >= 20 * 3  # the clean input and both members' examples, 20 draws each


def test_a_sample_leaves_the_cascade_only_when_every_draw_misclassifies_it() -> None:
    torch.manual_seed(0)
    x, y, ctx = _coin_batch()
    full, after = Push(name="full", level=1.0), Push(name="after", level=0.5)
    (out,) = list(_suite(20, full, after).run(x, y, ctx))
    assert after.seen == [] and out.broken_by == ("full",) * 8  # misclassified by all 20 draws: done


def test_without_rescoring_an_unclaimed_example_is_dropped() -> None:
    torch.manual_seed(0)
    x, y, ctx = _coin_batch()
    (out,) = list(_suite(1, Push(name="weak", level=0.3)).run(x, y, ctx))
    assert out.broken_by == ("",) * 8 and torch.equal(out.x, x)  # the plain cascade: only claimed successes count
    assert _suite(20, Push(name="p")).score_draws == 20 and _suite(1, Push(name="p")).score_draws == 1
    with pytest.raises(ConfigError, match="rescore must be an integer"):
        _suite(0, Push(name="p"))


def test_the_evaluator_scores_a_rescored_example_robust_only_if_every_draw_is_correct() -> None:
    from engine.data import SampleSet
    from engine.evaluation.evaluate import evaluate
    from engine.evaluation.tasks import Task

    torch.manual_seed(0)
    x, y, _ = _coin_batch(40)
    data = SampleSet("coin", x, y, torch.arange(40), 2)
    rows = {}
    for rescore in (1, 20):
        suite = _suite(rescore, Push(name="weak", level=0.3))
        res = SimpleNamespace(model=lambda *_: Coin(), dataset=lambda *_: data,
                              perturbation=lambda *_, s=suite: s, surrogates=lambda *_: {},
                              device=torch.device("cpu"))
        task = Task("t", "r", "coin", {}, "", "coin", {}, "s", {}, 0, 40, 0, 40)
        rows[rescore] = evaluate(task, res).columns  # type: ignore[arg-type]
    assert rows[1]["correct"].all()  # one draw, and the unclaimed example dropped: looks robust
    assert rows[20]["correct"].mean() < 0.05  # 0.7²⁰: hardly any survives 20 draws of the kept example
    broken = ~rows[20]["correct"]
    assert set(rows[20]["broken_by"][broken]) == {"weak"} and (rows[20]["margin"][broken] <= 0).all()


def test_apgd_under_eot_keeps_iterating_past_a_lucky_draw() -> None:
    from engine.perturbations.autoattack import APGD
    from engine.perturbations.norms import get_norm

    class Noise(torch.nn.Module):  # every input: class 1 with probability 30 %, whatever the attack does
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            wrong = (torch.rand(len(x)) < 0.3).float()
            return torch.stack([1 - wrong, wrong], 1) + 0.0 * x.flatten(1).sum(1, keepdim=True)

    x, y = torch.full((6, 1, 2, 2), 0.5), torch.zeros(6, dtype=torch.long)
    ctx = MemberContext(Noise(), get_norm("linf"), 0.1, 2, tuple(range(6)), 0, 6)
    torch.manual_seed(0)
    eot = APGD(name="a", n_iter=10, eot=8).attack(x, y, ctx)
    assert eot.success.all() and (eot.grad_evals == 8 * 10).all()  # no row left on a lucky draw: all 10 iterations
    torch.manual_seed(0)
    plain = APGD(name="a", n_iter=10).attack(x, y, ctx)
    assert plain.success.all() and (plain.grad_evals < 10).all()  # without EOT: a row leaves on its first hit


def test_a_reduced_budget_scales_every_rung_exactly_once() -> None:
    from engine.claims.build import scale_budget

    full = compose(["perturbation=[autoattack_standard_linf]"])["perturbation"]["autoattack_standard_linf"]
    base = scale_budget(full, 0.05)  # the base suite as verify composes it with budget=0.05

    def members(kind: str, rung: int = 1) -> list[dict[str, Any]]:
        cfg = escalate.build(kind, base, "linf", [0.1], "net", False, budget=0.05, rung=rung).config
        return [m.get("member", m) for m in cfg["attacks"]]

    assert [m["n_queries"] for m in members("square")] == [4 * 250]  # 4× the scaled base budget
    assert [m["n_queries"] for m in members("square", 2)] == [10 * 250]
    assert {m["n_iter"] for m in members("eot")} == {5} and {m["eot"] for m in members("eot", 3)} == {50}
    assert {m["n_iter"] for m in members("bpda")} == {5} and {m["n_iter"] for m in members("bpda", 2)} == {5}
    assert {m["n_iter"] for m in members("plus", 2)} == {50}
    assert all(m["n_iter"] == 5 for m in members("plus") if "n_iter" in m)
