"""Attack suites: fidelity to the original AutoAttack, cascade, ε reuse, verification of claims, determinism."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from engine.errors import ThreatModelViolation
from engine.perturbations.attacks import PGD
from engine.perturbations.autoattack import APGD, random_start
from engine.perturbations.base import BatchContext, LevelOutput
from engine.perturbations.fab import FAB, FABTargeted
from engine.perturbations.norms import get_norm
from engine.perturbations.square import Square
from engine.perturbations.suite import AttackSuite, MemberContext, MemberResult, SuiteMember

pyautoattack = pytest.importorskip("pyautoattack")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 64, 10)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _batch(model: torch.nn.Module, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model(x).argmax(1)  # labels = the model's predictions: every sample starts correct


def _ctx(model: torch.nn.Module, norm: str, eps: float, n: int) -> MemberContext:
    return MemberContext(model, get_norm(norm), eps, 10, tuple(range(n)), 0)


NORMS = [("linf", 0.012, "Linf"), ("l2", 0.06, "L2")]


@pytest.mark.parametrize("norm, eps, ref_norm", NORMS)
@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
def test_apgd_breaks_exactly_the_samples_the_original_breaks(norm: str, eps: float, ref_norm: str, loss: str) -> None:
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    model = _model()
    x, y = _batch(model)
    ctx = _ctx(model, norm, eps, len(x))
    start = random_start(x, eps, norm, ctx.generators())
    target = model(x).sort(dim=1)[1][:, -2] if loss == "dlr-targeted" else None
    hit, _, cost, _ = APGD(name="a", loss=loss, n_iter=40)._single_run(ctx, x, y, target, start)
    if target is None:
        ref = APGDAttack(model, n_iter=40, norm=ref_norm, eps=eps, loss=loss, seed=0, device="cpu")
    else:
        ref = APGDAttack_targeted(model, n_iter=40, norm=ref_norm, eps=eps, seed=0, device="cpu")
        ref.y_target = target
    ref.init_hyperparam(x)
    _, acc, _, _ = ref.attack_single_run(x, y, x_init=start.clamp(0, 1))
    assert 0 < int(hit.sum()) < len(x)  # a mix, or the comparison says nothing
    assert torch.equal(hit, ~acc.bool())
    assert int(cost.max()) == 40 and int(cost[hit].min()) < 40  # early exit saves work on broken samples


@pytest.mark.parametrize("norm, eps, ref_norm", NORMS)
def test_fab_t_finds_the_same_minimal_norms_as_the_original(norm: str, eps: float, ref_norm: str) -> None:
    from pyautoattack.fab_pt import FABAttack_PT

    model = _model()
    x, y = _batch(model)
    target = model(x).sort(dim=1)[1][:, -2]
    _, size, grads, _ = FABTargeted(name="f", n_iter=30)._single_run(_ctx(model, norm, 0.0, len(x)), x, y, target,
                                                                      x.clone())
    ref = FABAttack_PT(model, norm=ref_norm, n_iter=30, eps=eps, targeted=True, device="cpu")
    ref.target_class = 2
    adv = ref.attack_single_run(x, y, use_rand_start=False, is_targeted=True)
    ok = model(adv).argmax(1) != y
    res = get_norm(norm).measure(adv - x).float()
    assert torch.equal(torch.isfinite(size), ok)
    assert torch.allclose(size[ok], res[ok], atol=1e-6)
    assert int(grads.max()) == 30


@pytest.mark.parametrize("norm, eps, ref_norm", NORMS)
def test_untargeted_fab_finds_the_same_minimal_norms_as_the_original(norm: str, eps: float, ref_norm: str) -> None:
    from pyautoattack.fab_pt import FABAttack_PT

    model = _model()
    x, y = _batch(model)
    _, size, grads, _ = FAB(name="f", n_iter=30)._single_run(_ctx(model, norm, 0.0, len(x)), x, y, None, x.clone())
    ref = FABAttack_PT(model, norm=ref_norm, n_iter=30, eps=eps, targeted=False, device="cpu")
    adv = ref.attack_single_run(x, y, use_rand_start=False, is_targeted=False)
    ok = model(adv).argmax(1) != y
    res = get_norm(norm).measure(adv - x).float()
    assert bool(ok.any())
    assert torch.equal(torch.isfinite(size), ok)
    assert torch.allclose(size[ok], res[ok], atol=1e-6)
    assert int(grads.max()) == 30 * 10  # one gradient per class and step: the full Jacobian


def test_untargeted_fab_restarts_only_samples_still_robust_and_stay_in_the_ball() -> None:
    model = _model()
    x, y = _batch(model)
    eps = 0.012
    one = FAB(name="f", n_iter=20).attack(x, y, _ctx(model, "linf", eps, len(x)))
    five = FAB(name="f", n_iter=20, n_restarts=5).attack(x, y, _ctx(model, "linf", eps, len(x)))
    assert bool(one.success.any()) and bool((~five.success).any())
    assert bool((five.success | ~one.success).all())  # restarts add successes, never lose one
    assert bool((five.grad_evals[one.success] == one.grad_evals[one.success]).all())  # broken: no restart
    assert int(five.grad_evals[~five.success].min()) == 5 * 20 * 10
    assert float((five.x_adv - x)[five.success].abs().amax()) <= eps + 1e-6


@pytest.mark.parametrize("norm, eps", [("linf", 0.012), ("l2", 0.06)])
@pytest.mark.parametrize("member", ["apgd-t", "fab-t"])
def test_running_targets_together_changes_no_verdict(norm: str, eps: float, member: str) -> None:
    model = _model()
    x, y = _batch(model)
    ctx = _ctx(model, norm, eps, len(x))

    def run(target_batch: int) -> MemberResult:
        if member == "apgd-t":
            m: SuiteMember = APGD(name="t", loss="dlr-targeted", n_iter=30, n_target_classes=5,
                                  target_batch=target_batch)
        else:
            m = FABTargeted(name="f", n_iter=20, n_target_classes=5, target_batch=target_batch)
        return m.attack(x, y, ctx)

    one, together, pairs = run(1), run(5), run(2)
    assert 0 < int(one.success.sum()) < len(x)  # a mix, or the comparison says nothing
    for other in (together, pairs):
        assert torch.equal(one.success, other.success)
        assert get_norm(norm).measure((other.x_adv - x)[other.success]).max() <= eps + 1e-6
        with torch.no_grad():
            assert bool((model(other.x_adv[other.success]).argmax(1) != y[other.success]).all())
        # a sample that survives every target costs the same; the rest stop when any target breaks them
        robust = ~one.success
        assert torch.equal(one.grad_evals[robust], other.grad_evals[robust])
    if member == "fab-t":  # the minimal norms of surviving samples (reused across ε) are the same
        assert one.size is not None and together.size is not None
        assert torch.allclose(one.size[~one.success], together.size[~one.success])


def test_square_linf_stays_in_the_ball_and_counts_queries() -> None:
    model = _model()
    x, y = _batch(model, 16)
    res = Square(name="square", n_queries=200).attack(x, y, _ctx(model, "linf", 0.05, 16))
    assert float((res.x_adv - x).abs().max()) <= 0.05 + 1e-6
    assert bool(res.success.any()) and int(res.grad_evals.sum()) == 0
    assert int(res.queries.max()) <= 201 and int(res.queries[res.success].min()) >= 1
    with torch.no_grad():
        assert bool((model(res.x_adv[res.success]).argmax(1) != y[res.success]).all())


def test_targets_run_together_only_as_far_as_the_batch_allows() -> None:
    from engine.perturbations.autoattack import target_chunks

    ranks = list(range(2, 11))
    assert list(target_chunks(ranks, 9, 0, lambda: 50)) == [ranks]  # no cap
    assert list(target_chunks(ranks, 1, 100, lambda: 1)) == [[r] for r in ranks]  # one at a time
    left = iter([4, 4, 1])  # samples still unbroken before each group: 2 targets fit in 10 rows, then all
    assert list(target_chunks(ranks, 9, 10, lambda: next(left))) == [[2, 3], [4, 5], [6, 7, 8, 9, 10]]
    assert list(target_chunks(ranks, 4, 1000, lambda: 3)) == [[2, 3, 4, 5], [6, 7, 8, 9], [10]]


def test_square_linf_matches_the_original_draw_for_draw() -> None:
    """The original Square (L∞) fed the same random draws returns the same examples after the same queries."""
    from pyautoattack.square import SquareAttack

    model = _model()
    x, y = _batch(model, 16)
    eps, n_queries, seeds, shared_seed = 0.03, 300, tuple(range(100, 116)), 7
    ctx = MemberContext(model, get_norm("linf"), eps, 10, seeds, shared_seed)
    hit, x_best, queries = Square(name="s", n_queries=n_queries)._single_run(ctx, x, y, ctx.generators(),
                                                                             ctx.shared_generator())
    replica = ctx.shared_generator()

    def random_choice(shape: list[int]) -> torch.Tensor:
        if len(shape) == 4:  # the initial vertical stripes: one draw per sample, from its own generator
            return torch.stack([torch.sign(2 * torch.rand(shape[1:], generator=g) - 1) for g in ctx.generators()])
        return torch.sign(2 * torch.rand(shape, generator=replica) - 1)

    def random_int(low: int = 0, high: int = 1, shape: list[int] | None = None) -> torch.Tensor:
        return (low + (high - low) * torch.rand(shape or [1], generator=replica)).long()

    ref = SquareAttack(model, norm="Linf", eps=eps, n_queries=n_queries, p_init=0.8, loss="margin",
                       resc_schedule=False, device="cpu")
    ref.random_choice, ref.random_int = random_choice, random_int  # type: ignore[method-assign]
    ref.ndims = x.ndim - 1  # what its perturb() sets before calling attack_single_run
    ref_queries, ref_best = ref.attack_single_run(x, y)
    with torch.no_grad():
        ref_hit = model(ref_best).argmax(1) != y
    assert 0 < int(hit.sum()) < len(x)  # a mix, or the comparison says nothing
    assert torch.equal(hit, ref_hit)
    assert torch.equal(x_best, ref_best)
    assert torch.equal(queries, ref_queries.long())


def test_square_schedule_follows_the_original() -> None:
    from pyautoattack.square import SquareAttack

    ours = Square(name="s", n_queries=5000, p_init=0.8)
    ref = SquareAttack(lambda x: x, n_queries=5000, p_init=0.8, resc_schedule=False)
    for it in [0, 10, 11, 50, 51, 200, 201, 499, 501, 1000, 1500, 2001, 4000, 4001, 6001, 8001, 9999]:
        assert ours.p_selection(it) == ref.p_selection(it)


# -- the cascade, ε reuse and verification, with scripted members -------------------------------------------


class Log:
    calls: ClassVar[list[tuple[str, float, list[int]]]] = []


@dataclass(frozen=True)
class ShiftMember(SuiteMember):
    """Moves every pixel by +ε (clipped); breaks the rows whose sample id is in ``breaks``; records calls."""

    breaks: tuple[int, ...] = ()
    lie: bool = False  # claim success everywhere, whatever the model says
    overshoot: float = 1.0

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        ids = [int(s) for s in ctx.sample_seeds]
        Log.calls.append((self.name, ctx.eps, ids))
        n = len(x)
        x_adv = (x + self.overshoot * ctx.eps).clamp(0, 1)
        success = torch.ones(n, dtype=torch.bool) if self.lie else torch.tensor([i in self.breaks for i in ids])
        return MemberResult(x_adv, success, torch.full((n,), 7), torch.zeros(n, dtype=torch.int64))


@dataclass(frozen=True)
class MinNormMember(ShiftMember):
    minimal_norm: ClassVar[bool] = True

    def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
        ids = [int(s) for s in ctx.sample_seeds]
        Log.calls.append((self.name, ctx.eps, ids))
        size = torch.tensor([0.1 * (i + 1) for i in ids])  # sample i's minimal perturbation: 0.1·(i+1)
        x_adv = (x + size.view(-1, 1, 1, 1)).clamp(0, 1)
        success = size <= ctx.eps
        return MemberResult(x_adv, success, torch.full((len(x),), 5), torch.zeros(len(x), dtype=torch.int64),
                            size=size, exhaustive=~success)

    @property
    def eps_independent(self) -> bool:
        return True


class IdModel(torch.nn.Module):
    """Class 0 while the mean pixel is below 0.5, class 1 above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([0.5 - m, m - 0.5], dim=1)


def _suite(*members: SuiteMember, eps: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)) -> AttackSuite:
    return AttackSuite(name="s", norm="linf", eps=eps, attacks=members)


def _run_ids(suite: AttackSuite, n: int = 4) -> list:  # type: ignore[type-arg]
    """Run on n grey (0.45) samples, class 0 for IdModel, sample ids 0..n-1; member seeds are the sample ids."""
    x = torch.full((n, 1, 4, 4), 0.45)
    y = torch.zeros(n, dtype=torch.long)
    Log.calls.clear()
    import engine.perturbations.suite as suite_mod

    real = suite_mod.derive_seed
    suite_mod.derive_seed = lambda seed, *parts: int(parts[0]) if len(parts) == 4 else 0  # type: ignore[assignment]
    try:
        return list(suite.run(x, y, BatchContext(IdModel(), 0, torch.arange(n))))
    finally:
        suite_mod.derive_seed = real


def test_cascade_each_member_sees_only_samples_still_correct() -> None:
    outs = _run_ids(_suite(ShiftMember(name="a", breaks=(0, 1)), ShiftMember(name="b", breaks=(2,)), eps=(0.2,)))
    assert Log.calls == [("a", 0.2, [0, 1, 2, 3]), ("b", 0.2, [2, 3])]
    assert outs[0].broken_by == ("a", "a", "b", "")
    assert outs[0].grad_evals.tolist() == [7, 7, 14, 14]


def test_sample_broken_at_small_eps_is_not_attacked_again_and_keeps_its_example() -> None:
    outs = _run_ids(_suite(ShiftMember(name="a", breaks=(0,))))
    assert [c[1:] for c in Log.calls] == [(0.1, [0, 1, 2, 3]), (0.2, [1, 2, 3]), (0.3, [1, 2, 3])]
    assert [o.level for o in outs] == [0.0, 0.1, 0.2, 0.3]
    for o in outs[1:]:
        assert o.broken_by is not None and o.broken_by[0] == "a"
        assert torch.allclose(o.x[0], torch.full((1, 4, 4), 0.55))  # the ε = 0.1 example, at every larger ε
    assert [int(o.grad_evals[0]) for o in outs] == [0, 7, 0, 0]  # cost only where it was spent


def test_minimal_norm_member_runs_once_and_serves_every_eps() -> None:
    # sample i's minimal example (shift 0.1·(i + 1)) is adversarial; it counts from ε ≥ its size
    outs = _run_ids(_suite(MinNormMember(name="fab"), eps=(0.15, 0.25, 0.35, 0.45)))
    assert Log.calls == [("fab", 0.15, [0, 1, 2, 3])]  # one search for the whole curve
    assert [sum(b == "fab" for b in (o.broken_by or ())) for o in outs] == [1, 2, 3, 4]
    assert outs[0].grad_evals.tolist() == [5, 5, 5, 5] and all(int(o.grad_evals.sum()) == 0 for o in outs[1:])


def test_a_member_claiming_success_on_a_correct_example_is_not_counted() -> None:
    # 'liar' shifts by 0.02 (still class 0) but claims success; 'b' must still get every sample
    outs = _run_ids(_suite(ShiftMember(name="liar", lie=True, overshoot=0.1), ShiftMember(name="b", breaks=(3,)),
                           eps=(0.2,)))
    assert Log.calls == [("liar", 0.2, [0, 1, 2, 3]), ("b", 0.2, [0, 1, 2, 3])]
    assert outs[0].broken_by == ("", "", "", "b")


def test_a_member_returning_examples_outside_the_ball_is_an_error() -> None:
    with pytest.raises(ThreatModelViolation, match=r"member 'wide'.*outside the linf ball"):
        _run_ids(_suite(ShiftMember(name="wide", breaks=(0,), overshoot=2.0), eps=(0.2,)))


def _aa_small(norm: str = "linf", eps: tuple[float, ...] = (0.05, 0.1)) -> AttackSuite:
    return AttackSuite(name="aa", norm=norm, eps=eps, attacks=(
        APGD(name="apgd-ce", n_iter=10), APGD(name="apgd-t", loss="dlr-targeted", n_iter=10, n_target_classes=3),
        FABTargeted(name="fab-t", n_iter=10, n_target_classes=3),
        Square(name="square", n_queries=20, tags=("black-box",)),
    ))


@pytest.mark.parametrize("norm, eps", [("linf", (0.005, 0.01, 0.02)), ("l2", (0.02, 0.05, 0.1))])
def test_suite_rows_do_not_depend_on_the_batch_and_repeat_exactly(norm: str, eps: tuple[float, ...]) -> None:
    model = _model(3)
    x, y = _batch(model, 12)
    suite = _aa_small(norm, eps)
    ids = torch.arange(100, 112)
    # Verdicts and seeds do not depend on the batch; pixels may differ by the float rounding of the
    # model's batched kernels (L2 steps carry it along), hence allclose across batch layouts.
    whole = list(suite.run(x, y, BatchContext(model, 0, ids)))
    again = list(suite.run(x, y, BatchContext(model, 0, ids)))
    halves = [list(suite.run(x[s], y[s], BatchContext(model, 0, ids[s]))) for s in (slice(0, 5), slice(5, 12))]
    for k, out in enumerate(whole):
        assert torch.equal(out.x, again[k].x) and out.broken_by == again[k].broken_by
        assert torch.allclose(out.x, torch.cat([halves[0][k].x, halves[1][k].x]), atol=1e-6, rtol=0)
        assert out.broken_by == halves[0][k].broken_by + halves[1][k].broken_by  # type: ignore[operator]
    breakers = {b for o in whole for b in (o.broken_by or ())}
    assert len(breakers - {""}) >= 2  # the test exercises several members
    other_seed = list(suite.run(x, y, BatchContext(model, 1, ids)))
    assert any(not torch.equal(a.x, b.x) for a, b in zip(whole, other_seed, strict=True))


def test_suite_curve_is_non_increasing_and_cheaper_than_from_scratch() -> None:
    model = _model(3)
    x, y = _batch(model, 16)
    levels = (0.004, 0.008, 0.012, 0.016, 0.02, 0.03)
    curve = list(_aa_small("linf", levels).run(x, y, BatchContext(model, 0, torch.arange(16))))
    correct = [int((model(o.x).argmax(1) == y).sum()) for o in curve]
    assert correct == sorted(correct, reverse=True) and correct[-1] < correct[0]
    scratch = sum(int(next(iter(_aa_small("linf", (e,)).run(x, y, BatchContext(model, 0, torch.arange(16)))))
                      .grad_evals.sum()) for e in levels)
    assert sum(int(o.grad_evals.sum()) for o in curve) < 0.75 * scratch


def test_pgd_restarts_add_work_only_on_samples_still_correct() -> None:
    model = _model(3)
    x, y = _batch(model, 16)
    ctx = BatchContext(model, 0, torch.arange(16))
    one = PGD(name="p", eps=(0.01,), steps=3).perturb_level(x, y, 0.01, ctx)
    three = PGD(name="p", eps=(0.01,), steps=3, restarts=3).perturb_level(x, y, 0.01, ctx)
    with torch.no_grad():
        broken1 = model(one.x).argmax(1) != y
        broken3 = model(three.x).argmax(1) != y
    assert torch.equal(one.x[broken1], three.x[broken1])  # restart 0 is the plain torchattacks run
    assert bool((broken3 | ~broken1).all()) and int(broken3.sum()) >= int(broken1.sum())
    assert int(three.grad_evals[broken1].max()) == 3 and int(three.grad_evals.max()) <= 9


def test_engine_reclassifies_what_a_suite_returns(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A suite whose LevelOutput claims every sample broken but returns the clean input is scored as robust."""
    import pyarrow.dataset as ds

    from engine.sweep import run_sweep
    from tests.conftest import compose_dict, tiny_overrides

    cfg = compose_dict(tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[apgd_ce_linf]"))
    pcfg = cfg["perturbation"]["apgd_ce_linf"]
    pcfg["_target_"] = f"{__name__}.ClaimingSuite"
    cfg["target_packages"] = ["tests"]  # a test-only perturbation: an explicitly allowed package
    pcfg["eps"] = [0.1]
    run_sweep(cfg)
    rows = ds.dataset(tmp_path / "results", format="parquet").to_table().to_pylist()
    assert len(rows) == 20 and all(r["broken_by"] == "" and r["perturbation_size"] == 0 for r in rows)
    assert all(r["correct"] == (r["pred"] == r["label"]) for r in rows)


@dataclass(frozen=True)
class ClaimingSuite(AttackSuite):
    """Claims every sample broken by 'apgd-ce' at every ε but returns the clean input."""

    def run(self, x: torch.Tensor, y: torch.Tensor, ctx: BatchContext):  # type: ignore[no-untyped-def]
        for level in self.levels:
            n = len(x)
            yield LevelOutput(level, x.clone(), torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
                              ("apgd-ce",) * n)


# -- the suite configs against the original's own version settings ------------------------------------------


@pytest.mark.parametrize("version", ["standard", "plus", "rand"])
@pytest.mark.parametrize("norm, ref_norm", [("linf", "Linf"), ("l2", "L2")])
def test_suite_configs_reproduce_the_original_versions(version: str, norm: str, ref_norm: str) -> None:
    """Member order and every parameter of autoattack_<version>_<norm> equal what the original sets."""
    from pyautoattack import AutoAttack

    from engine.evaluation.resources import build_perturbation
    from tests.conftest import compose_dict

    name = f"autoattack_{version}_{norm}"
    suite = build_perturbation(name, compose_dict([f"perturbation=[{name}]"])["perturbation"][name])
    assert suite.norm == norm
    aa = AutoAttack(_model(), norm=ref_norm, eps=0.1, version=version, device="cpu")
    assert [m.name for m in suite.attacks] == aa.attacks_to_run
    for m in suite.attacks:
        if m.name in ("apgd-ce", "apgd-dlr"):
            assert isinstance(m, APGD) and m.loss == m.name.removeprefix("apgd-")
            assert (m.n_iter, m.n_restarts, m.eot, m.rho) == (aa.apgd.n_iter, aa.apgd.n_restarts, aa.apgd.eot_iter,
                                                             aa.apgd.thr_decr)
        elif m.name == "apgd-t":
            ref = aa.apgd_targeted
            assert isinstance(m, APGD) and m.loss == "dlr-targeted"
            assert (m.n_iter, m.n_restarts, m.n_target_classes, m.eot, m.rho) == (
                ref.n_iter, ref.n_restarts, ref.n_target_classes, ref.eot_iter, ref.thr_decr)
        elif m.name in ("fab", "fab-t"):
            assert isinstance(m, FABTargeted if m.name == "fab-t" else FAB)
            restarts = 1 if m.name == "fab-t" else aa.fab.n_restarts  # the original forces 1 for fab-t at run time
            assert (m.n_iter, m.n_restarts, m.alpha_max, m.eta, m.beta) == (
                aa.fab.n_iter, restarts, aa.fab.alpha_max, aa.fab.eta, aa.fab.beta)
            if isinstance(m, FABTargeted):
                assert m.n_target_classes == aa.fab.n_target_classes
        else:
            assert m.name == "square" and isinstance(m, Square)
            assert (m.n_queries, m.p_init, m.n_restarts, m.resc_schedule) == (
                aa.square.n_queries, aa.square.p_init, aa.square.n_restarts, aa.square.rescale_schedule)


@pytest.mark.parametrize("norm, eps", [("l2", 0.5), ("linf", 0.03)])
def test_pgd_takes_a_permuted_three_channel_batch_like_a_contiguous_one(norm: str, eps: float) -> None:
    """An HWC array read as CHW (a permuted, non-contiguous batch) once crashed torchattacks' PGDL2 (`.view`);
    the attack sees the same numbers either way and gives the same examples."""
    from engine.models.cnn import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, image_size=8, width=4).eval()
    hwc = torch.rand(6, 8, 8, 3)
    permuted, y = hwc.permute(0, 3, 1, 2), torch.arange(6) % 10
    assert not permuted.is_contiguous()
    attack = PGD(name=f"pgd_{norm}", norm=norm, eps=[0.0, eps], steps=3, random_start=True)
    ctx = BatchContext(model=model, seed=0, sample_ids=torch.arange(6))
    a = attack.perturb_level(permuted, y, eps, ctx)
    b = attack.perturb_level(permuted.contiguous(), y, eps, ctx)
    assert torch.equal(a.x, b.x) and get_norm(norm).measure(a.x - permuted).max() <= eps + 1e-5
