"""Sanity flags: each one fires on a deliberately flawed model and stays quiet on the healthy digits CNN."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from engine.data.digits import load_digits
from engine.evaluation.checks import verify_batch
from engine.evaluation.evaluate import _rows
from engine.perturbations.attacks import FGSM, PGD
from engine.perturbations.autoattack import APGD
from engine.perturbations.base import BatchContext, LevelOutput, Perturbation, zero_cost
from engine.perturbations.square import Square
from engine.perturbations.suite import AttackSuite
from engine.sanity.confirm import Confirmation, SweepConfirmer, confirm_white_box, strong_suite
from engine.sanity.flags import (
    MASKED,
    SETUP,
    WEAK,
    Flag,
    binomial_sf,
    clean_accuracy_flags,
    probe_model,
    result_flags,
)
from engine.store.parquet import SCHEMA


@pytest.fixture(scope="module")
def healthy(embedded_checkpoints: dict[str, str]) -> torch.nn.Module:
    from engine.models.loader import build_model
    from tests.conftest import compose_dict

    return build_model("digits_cnn", compose_dict()["model"]["digits_cnn"], torch.device("cpu"))


@pytest.fixture(scope="module")
def robust(embedded_checkpoints: dict[str, str]) -> torch.nn.Module:
    """The healthy, adversarially trained digits CNN."""
    from engine.models.loader import build_model
    from tests.conftest import compose_dict

    return build_model("digits_cnn_at", compose_dict()["model"]["digits_cnn_at"], torch.device("cpu"))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits(split="test")
    return d.images[:40], d.labels[:40], d.sample_ids[:40]


class Rounded(torch.nn.Module):
    """Quantises its input to 4 levels first: piecewise constant, so every input gradient is zero."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 3) / 3)  # type: ignore[no-any-return]


class NaNGrad(torch.nn.Module):
    """sqrt at 0 in the forward pass: finite logits, NaN input gradients."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + torch.sqrt(x - x.detach()))  # type: ignore[no-any-return]


class Softmaxed(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


class Noisy(torch.nn.Module):
    """A randomised defence: Gaussian noise on the input at every forward pass."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.05 * torch.randn_like(x))  # type: ignore[no-any-return]


class Banded(torch.nn.Module):
    """Wrong only while ‖x − x_clean‖∞ lies in (0.03, 0.12): large perturbations 'help', so accuracy rises with ε.

    x_clean is the nearest of the reference images (any batch, any order: the samples are far apart in L∞).
    """

    def __init__(self, net: torch.nn.Module, ref: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("ref", ref.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        d = (x[:, None] - self.ref[None]).flatten(2).abs().amax(2).amin(1)
        band = (d > 0.03) & (d < 0.12)
        return torch.where(band[:, None], logits.roll(1, dims=1), logits)


class Binarised(torch.nn.Module):
    """Another non-differentiable front end: pixels thresholded at 0.5 (bit-depth reduction to one bit).

    ``+ 0 * x`` keeps the input in the graph (as rounding does), so gradients exist and are zero.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x > 0.5).float() + 0 * x)  # type: ignore[no-any-return]


class Permuted(torch.nn.Module):
    """A wrong class order: the checkpoint's class k is the dataset's class k + 1."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).roll(1, dims=1)  # type: ignore[no-any-return]


class SkipsLevel(FGSM):
    """A weak evaluation: FGSM that silently returns the clean input at ε = 0.1."""

    def perturb_level(self, x: torch.Tensor, y: torch.Tensor, level: float, ctx: BatchContext) -> LevelOutput:
        if level == 0.1:
            return LevelOutput(level, x, zero_cost(len(x)), zero_cost(len(x)))
        return super().perturb_level(x, y, level, ctx)


def _table(model: torch.nn.Module, pert: Perturbation, data: tuple[torch.Tensor, ...], name: str = "m") -> pa.Table:
    """What a sweep would write for ``pert`` on ``model``: the engine's rows, under the Parquet schema."""
    x, y, ids = data
    chunks = []
    for out in pert.run(x, y, BatchContext(model, 0, ids)):
        sizes = verify_batch(pert, out.level, x, out.x)
        with torch.no_grad():
            logits = model(out.x)
        chunks.append(_rows(out, logits, y, ids, sizes, pert.name))
    cols = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    n = len(cols["sample_id"])
    extra = {"run_id": "r", "task_id": "t", "model": name, "dataset": "digits", "perturbation": pert.name,
             "family": pert.family, "norm": pert.norm, "seed": 0, "float_correct": None}
    arrays = [pa.array(cols[f.name], type=f.type) if f.name in cols else pa.array([extra[f.name]] * n, type=f.type)
              for f in SCHEMA]
    return pa.table(arrays, schema=SCHEMA)


def _checks(flags: list) -> set[str]:  # type: ignore[type-arg]
    return {f.check for f in flags}


# -- model probes --------------------------------------------------------------------------------------------


def test_healthy_model_raises_no_probe_flag(healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    x, y, _ = data
    assert probe_model(healthy, x, y, "digits_cnn", {"pgd_linf": 1}) == []


def test_zero_gradients_are_flagged(healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    x, y, _ = data
    flags = probe_model(Rounded(healthy), x, y, "rounded", {"pgd_linf": 1})
    assert _checks(flags) == {"gradients"} and flags[0].details["zero"] == len(x)


def test_nan_gradients_are_flagged(healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    x, y, _ = data
    flags = probe_model(NaNGrad(healthy), x, y, "nan", {"pgd_linf": 1})
    assert _checks(flags) == {"gradients"} and flags[0].details["nan"] == len(x)


def test_probabilities_instead_of_logits_are_flagged(healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    x, y, _ = data
    assert "probability_output" in _checks(probe_model(Softmaxed(healthy), x, y, "soft", {"pgd_linf": 1}))


def test_randomised_model_without_eot_is_flagged_and_with_eot_is_not(healthy: torch.nn.Module,
                                                                      data: tuple) -> None:  # type: ignore[type-arg]
    x, y, _ = data
    torch.manual_seed(0)
    flags = probe_model(Noisy(healthy), x, y, "noisy", {"pgd_linf": 1, "eot_pgd_linf": 10})
    assert _checks(flags) == {"randomised_without_eot"} and flags[0].details["perturbations"] == ["pgd_linf"]
    assert probe_model(Noisy(healthy), x, y, "noisy", {"eot_pgd_linf": 10}) == []


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_autoattack_rand_averages_20_passes_per_gradient_and_is_not_flagged(healthy: torch.nn.Module,
                                                                            data: tuple,  # type: ignore[type-arg]
                                                                            norm: str) -> None:
    from engine.evaluation.resources import build_perturbation
    from engine.perturbations.base import BatchContext
    from tests.conftest import compose_dict

    name = f"autoattack_rand_{norm}"
    cfg = compose_dict([f"perturbation=[{name}]"])["perturbation"][name]
    suite = build_perturbation(name, {**cfg, "eps": [0.05 if norm == "linf" else 0.5],
                                      "attacks": [{**a, "n_iter": 5} for a in cfg["attacks"]]})
    assert [(a.name, a.eot_iter) for a in suite.attacks] == [("apgd-ce", 20), ("apgd-dlr", 20)]
    x, y, _ = data
    torch.manual_seed(0)
    assert probe_model(Noisy(healthy), x, y, "noisy", {name: suite.eot_iter}) == []
    (out,) = list(suite.run(x[:4], y[:4], BatchContext(Noisy(healthy), 0, torch.arange(4))))
    grads = out.grad_evals[out.grad_evals > 0]
    assert grads.numel() > 0 and bool((grads % 20 == 0).all())  # every gradient is a mean over 20 passes


# -- result checks, confirmed before accusing -----------------------------------------------------------------

WB, BB = ("white-box",), ("black-box",)
# Masked models defeat a gradient attack of any strength: their tests confirm with a cheaper one (CPU time).
# Healthy models get the full strength the sweep uses (APGD-CE 100 it. × 5 restarts + APGD-T 100 it. × 9 targets).
CHEAP = {"n_iter": 20, "ce_restarts": 2, "n_target_classes": 3}


def _confirmer(model: torch.nn.Module, data: tuple, **strength: int) -> SweepConfirmer:  # type: ignore[type-arg]
    x, y, ids = data
    return SweepConfirmer(lambda name: model, x, y, ids, torch.device("cpu"), **strength)


def _one(flags: list[Flag], check: str) -> Flag:
    found = [f for f in flags if f.check == check]
    assert len(found) == 1, [f.check for f in flags]
    return found[0]


def _square(eps: float, queries: int) -> AttackSuite:
    return AttackSuite(name="square_linf", norm="linf", eps=(eps,), tags=BB,
                       attacks=(Square(name="square", n_queries=queries, tags=BB),))


def _masked_black_box_case(healthy: torch.nn.Module, data: tuple, front_end: type,  # type: ignore[type-arg]
                           **strength: int) -> dict[str, Any]:
    small = tuple(t[:8] for t in data)
    suite = AttackSuite(name="aa", norm="linf", eps=(0.3,), tags=("white-box", "black-box"), attacks=(
        APGD(name="apgd-ce", n_iter=20, tags=WB), Square(name="square", n_queries=300, tags=BB)))
    model = front_end(healthy)
    confirm = _confirmer(model, small, **strength)
    flag = _one(result_flags(_table(model, suite, small), {"aa": suite}, confirm), "black_box_beats_white_box")
    conf: dict[str, Any] = flag.details["confirmation"]
    assert flag.verdict == MASKED and "masked" in flag.message and "survive a strong white-box attack" in flag.message
    assert [c.sample_ids for c in confirm.calls] == [tuple(flag.details["only_black_box_ids"])]  # only those
    assert conf["attacked"] == flag.details["only_black_box"] and conf["survived"] > 1
    assert set(conf["survived_ids"]) <= set(flag.details["only_black_box_ids"]) and conf["grad_evals"] > 0
    return conf


@pytest.mark.parametrize("front_end", [Rounded, Binarised])
def test_black_box_beating_white_box_on_a_non_differentiable_front_end_is_confirmed_masking(
        healthy: torch.nn.Module, data: tuple, front_end: type) -> None:  # type: ignore[type-arg]
    conf = _masked_black_box_case(healthy, data, front_end, **CHEAP)
    assert conf["attack"] == "APGD-CE (20 it., 2 restarts) + APGD-T (20 it., 3 targets)"


@pytest.mark.slow
def test_masking_survives_the_full_strength_confirmation(healthy: torch.nn.Module,
                                                         data: tuple) -> None:  # type: ignore[type-arg]
    conf = _masked_black_box_case(healthy, data, Rounded)
    assert conf["attack"] == "APGD-CE (100 it., 5 restarts) + APGD-T (100 it., 9 targets)"
    # every survivor ran every restart and target: 5 × 100 (APGD-CE) + 9 × 100 (APGD-T) gradients
    assert conf["grad_evals"] >= 1400 * conf["survived"]


def test_healthy_model_in_a_weak_evaluation_is_told_its_attack_is_weak_not_masked(
        robust: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    small = tuple(t[:16] for t in data)
    pgd = PGD(name="pgd_linf", eps=(0.2,), steps=2, step_size_factor=0.5, random_start=False, tags=WB)
    square = _square(0.2, 300)
    table = pa.concat_tables([_table(robust, pgd, small), _table(robust, square, small)])
    confirm = _confirmer(robust, small)
    flags = result_flags(table, {"pgd_linf": pgd, "square_linf": square}, confirm)
    assert "black_box_beats_white_box" not in _checks(flags)
    weak = _one(flags, "white_box_too_weak")
    conf = weak.details["confirmation"]
    assert weak.verdict == WEAK and "pgd_linf (PGD-2) missed" in weak.message
    assert "accuracy is optimistic" in weak.message
    assert conf["attack"] == "APGD-CE (100 it., 5 restarts) + APGD-T (100 it., 9 targets)" and conf["broken"] >= 1
    assert set(conf["broken_ids"]) <= set(weak.details["only_black_box_ids"]) and conf["grad_evals"] > 0
    assert all(str(i) in weak.message for i in conf["broken_ids"][:10])


def test_a_sweep_without_a_black_box_attack_pays_nothing_for_confirmation(healthy: torch.nn.Module,
                                                                         data: tuple) -> None:  # type: ignore[type-arg]
    from engine.perturbations.members import CountingModel

    pgd = PGD(name="pgd_linf", eps=(0.0, 0.1, 0.2), steps=5, tags=WB)
    counted = CountingModel(healthy)
    confirm = _confirmer(counted, data)
    assert result_flags(_table(healthy, pgd, data), {"pgd_linf": pgd}, confirm) == []
    assert confirm.calls == [] and counted.grad_samples == counted.query_samples == 0


def test_confirmation_counts_only_verified_examples(healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    from engine.errors import ThreatModelViolation
    from engine.perturbations.suite import MemberContext, MemberResult, SuiteMember

    class Cheat(SuiteMember):
        def attack(self, x: torch.Tensor, y: torch.Tensor, ctx: MemberContext) -> MemberResult:
            n = len(x)
            return MemberResult((x + 3 * ctx.eps).clamp(0, 1), torch.ones(n, dtype=torch.bool),
                                zero_cost(n), zero_cost(n))

    x, y, ids = (t[:4] for t in data)
    cheat = AttackSuite(name="sanity_confirm", norm="linf", eps=(0.05,), attacks=(Cheat(name="cheat"),))
    with pytest.raises(ThreatModelViolation):
        confirm_white_box(healthy, x, y, ids.tolist(), norm="linf", eps=0.05, suite=cheat)
    honest = confirm_white_box(healthy, x, y, ids.tolist(), norm="linf", eps=0.05,
                               suite=strong_suite("linf", 0.05, **{"n_iter": 10, "ce_restarts": 1,
                                                                   "n_target_classes": 2}))
    assert isinstance(honest, Confirmation) and set(honest.broken) | set(honest.survived) == set(ids.tolist())


def test_confirmation_uses_eot_only_on_a_randomised_model(healthy: torch.nn.Module,
                                                         data: tuple) -> None:  # type: ignore[type-arg]
    small = tuple(t[:2] for t in data)
    ids = small[2].tolist()
    cheap = {"n_iter": 5, "ce_restarts": 1, "n_target_classes": 2}
    torch.manual_seed(0)
    noisy = SweepConfirmer(lambda name: Noisy(healthy), *small, torch.device("cpu"), eot=3, **cheap)("m", "linf",
                                                                                                   0.01, ids)
    plain = SweepConfirmer(lambda name: healthy, *small, torch.device("cpu"), eot=3, **cheap)("m", "linf", 0.01, ids)
    assert noisy is not None and plain is not None
    assert "EOT 3" in noisy.attack and "EOT" not in plain.attack


def test_a_model_without_any_input_gradient_survives_the_confirmation(healthy: torch.nn.Module,
                                                                      data: tuple) -> None:  # type: ignore[type-arg]
    class Detached(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return healthy(x.detach())  # type: ignore[no-any-return]

    small = tuple(t[:3] for t in data)
    c = SweepConfirmer(lambda name: Detached(), *small, torch.device("cpu"))("m", "linf", 0.1, small[2].tolist())
    assert c is not None and c.survived == tuple(small[2].tolist()) and "no input gradient" in c.error
    plain = SweepConfirmer(lambda name: healthy, *small, torch.device("cpu"))
    assert plain("m", "l1", 0.1, [0]) is None  # APGD has no L1: unconfirmed, not a crash
    assert plain("m", "linf", 0.1, [10**9]) is None and plain.calls == []  # a sample outside the swept data


def test_accuracy_rising_with_eps_from_a_weak_attack_is_not_called_masking(healthy: torch.nn.Module,
                                                                          data: tuple) -> None:  # type: ignore[type-arg]
    fgsm = [SkipsLevel(name="fgsm", eps=(e,), tags=WB) for e in (0.0, 0.05, 0.1)]
    table = pa.concat_tables([_table(healthy, p, data) for p in fgsm])
    flag = _one(result_flags(table, {"fgsm": fgsm[0]}, _confirmer(healthy, data)), "non_monotonic_attack_weak")
    assert flag.verdict == WEAK and "not the model" in flag.message
    assert flag.details["confirmation"]["broken"] >= 1 and flag.details["confirmation"]["survived"] <= 1
    assert "non_monotonic" not in _checks(result_flags(table, {"fgsm": fgsm[0]}, _confirmer(healthy, data)))


def test_accuracy_rising_with_eps_on_a_model_that_defeats_gradients_is_flagged(robust: torch.nn.Module,
                                                                              data: tuple) -> None:  # type: ignore[type-arg]
    small = tuple(t[:24] for t in data)
    # Each FGSM level on its own (the engine's reuse across ε would hide the symptom by construction).
    fgsm = [FGSM(name="fgsm", eps=(e,), tags=WB) for e in (0.0, 0.05, 0.1, 0.15, 0.2)]
    banded = Banded(robust, small[0])
    periodic = pa.concat_tables([_table(banded, p, small) for p in fgsm])
    flag = _one(result_flags(periodic, {"fgsm": fgsm[0]}, _confirmer(banded, small, **CHEAP)), "non_monotonic")
    assert flag.verdict == MASKED and flag.details["confirmation"]["survived"] > 1
    assert flag.details["confirmation"]["grad_evals"] > 0
    sane = pa.concat_tables([_table(robust, p, small) for p in fgsm])
    confirm = _confirmer(robust, small)
    assert not any(f.check.startswith("non_monotonic") for f in result_flags(sane, {"fgsm": fgsm[0]}, confirm))
    assert confirm.calls == []


def test_unbounded_eps_above_chance_is_confirmed_before_blaming_the_model(healthy: torch.nn.Module,
                                                                         data: tuple) -> None:  # type: ignore[type-arg]
    small = tuple(t[:16] for t in data)
    pgd = PGD(name="pgd_unbounded", eps=(0.5,), steps=10, tags=WB)
    masked = Rounded(healthy)
    flag = _one(result_flags(_table(masked, pgd, small), {pgd.name: pgd}, _confirmer(masked, small, **CHEAP)),
                "unbounded_eps_above_chance")
    assert flag.verdict == MASKED and flag.details["confirmation"]["survived"] > flag.details["chance"]
    weak_pgd = PGD(name="pgd_weak", eps=(0.5,), steps=1, step_size_factor=0.02, random_start=False, tags=WB)
    flags = result_flags(_table(healthy, weak_pgd, small), {weak_pgd.name: weak_pgd}, _confirmer(healthy, small))
    assert _checks(flags) == {"unbounded_eps_attack_weak"} and flags[0].verdict == WEAK
    assert result_flags(_table(healthy, pgd, small), {pgd.name: pgd}, _confirmer(healthy, small)) == []


def test_without_a_confirmation_attack_findings_are_unconfirmed_not_accusations(
        healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    small = tuple(t[:16] for t in data)
    pgd = PGD(name="pgd_unbounded", eps=(0.5,), steps=10, tags=WB)
    flags = result_flags(_table(Rounded(healthy), pgd, small), {pgd.name: pgd})
    assert _checks(flags) == {"unbounded_eps_above_chance_unconfirmed"}


# -- clean accuracy at chance -------------------------------------------------------------------------------


def test_binomial_tail_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n, p in [(0, 10, 0.1), (3, 10, 0.1), (12, 100, 0.1), (95, 100, 0.1), (510, 1000, 0.5), (5, 5, 0.5)]:
        assert binomial_sf(k, n, p) == pytest.approx(float(stats.binom.sf(k - 1, n, p)), rel=1e-9, abs=1e-300)


def test_clean_accuracy_at_chance_is_flagged_and_a_healthy_model_is_not(healthy: torch.nn.Module,
                                                                       data: tuple) -> None:  # type: ignore[type-arg]
    from engine.perturbations.clean import Clean

    clean = Clean(name="clean")
    assert clean_accuracy_flags(_table(healthy, clean, data), 10) == []
    flag = _one(clean_accuracy_flags(_table(Permuted(healthy), clean, data), 10), "clean_accuracy_at_chance")
    assert flag.verdict == SETUP and flag.message.startswith("CLEAN ACCURACY IS AT CHANCE")
    assert flag.details["p_value"] > 0.01 and flag.details["n"] == len(data[0])
    # without a clean perturbation, the attacks' ε = 0 rows are the clean accuracy
    pgd = PGD(name="pgd_linf", eps=(0.0, 0.1), steps=2, tags=WB)
    assert _checks(clean_accuracy_flags(_table(Permuted(healthy), pgd, data), 10)) == {"clean_accuracy_at_chance"}
    assert clean_accuracy_flags(_table(healthy, pgd, data), 10) == []


def test_sweep_writes_flags_json_next_to_results(tiny_checkpoint: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.sanity.confirm
    from engine.sweep import run_sweep
    from tests.conftest import compose_dict, tiny_overrides

    def no_confirmation(*args: object, **kwargs: object) -> None:
        raise AssertionError("a sweep without a black-box attack must not run a confirmation attack")

    monkeypatch.setattr(engine.sanity.confirm, "confirm_white_box", no_confirmation)
    outcome = run_sweep(compose_dict(tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean,fgsm_linf]")))
    doc = json.loads((tmp_path / "flags.json").read_text())
    assert doc["run_id"] == outcome.plan.run_id and isinstance(doc["flags"], list)
    assert [f.as_dict() for f in outcome.flags] == doc["flags"]
    # the tiny model is untrained: at chance, and that comes first and loudly
    assert doc["flags"][0]["check"] == "clean_accuracy_at_chance" and doc["flags"][0]["verdict"] == SETUP
    assert "CLEAN ACCURACY IS AT CHANCE" in outcome.summary
    assert "sanity flags" in outcome.summary and "sanity flags" in (tmp_path / "summary.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(
        f"{t.task_id}.parquet" for t in outcome.plan.tasks)


def test_sweep_with_a_black_box_attack_records_the_confirmation_in_flags_json(embedded_checkpoints: dict[str, str],
                                                                             tmp_path: Path) -> None:
    from engine.sweep import run_sweep
    from tests.conftest import compose_dict

    cfg = compose_dict(["model=[digits_cnn_at]", "perturbation=[pgd_linf,square_linf]",
                        "perturbation.pgd_linf.eps=[0.2]", "perturbation.square_linf.eps=[0.2]",
                        "perturbation.pgd_linf.steps=1", "perturbation.square_linf.attacks.0.n_queries=300",
                        "n_examples=20", "batch_size=20", f"out_dir={tmp_path}", "progress=false"])
    outcome = run_sweep(cfg)
    weak = _one(outcome.flags, "white_box_too_weak")
    conf = json.loads((tmp_path / "flags.json").read_text())["flags"][outcome.flags.index(weak)]["details"]
    assert weak.verdict == WEAK and conf["confirmation"]["grad_evals"] > 0 and conf["confirmation"]["broken"] >= 1
    assert "black_box_beats_white_box" not in _checks(outcome.flags)
    assert "white_box_too_weak" in outcome.summary


@pytest.mark.slow
def test_sweep_on_the_healthy_robust_model_raises_no_masking_flag(embedded_checkpoints: dict[str, str],
                                                                   tmp_path: Path) -> None:
    """The issue's command, smaller: fewer samples and Square queries, the real checkpoint and sweep path."""
    from engine.sweep import run_sweep
    from tests.conftest import compose_dict

    cfg = compose_dict(["model=[digits_cnn_at]", "perturbation=[clean,pgd_linf,square_linf]",
                        "perturbation.pgd_linf.eps=[0.1,0.2]", "perturbation.square_linf.eps=[0.1,0.2]",
                        "perturbation.pgd_linf.steps=5", "perturbation.square_linf.attacks.0.n_queries=300",
                        "n_examples=24", "batch_size=24", f"out_dir={tmp_path}", "progress=false"])
    run_sweep(cfg)
    flags = json.loads((tmp_path / "flags.json").read_text())["flags"]
    checks = [f["check"] for f in flags]
    assert "black_box_beats_white_box" not in checks and "white_box_too_weak" in checks
    for f in flags:
        assert f["verdict"] != MASKED
        if f["check"] == "white_box_too_weak":
            assert f["details"]["confirmation"]["grad_evals"] > 0 and f["details"]["confirmation"]["broken"] >= 1


def test_the_summary_gives_one_line_per_finding_and_leaves_the_paragraphs_to_flags_json() -> None:
    """Each flag's paragraph becomes one line (what was found, cut to the width); flags that say the same of several
    models share a line; the reasoning, ids and advice are in flags.json, not repeated on the terminal."""
    from engine.sanity.flags import MASKED, WEAK, Flag
    from engine.sinks.summary import FLAG_WIDTH, flag_headline, render_flags

    eot = ("two forward passes on the same inputs differ (max |Δlogit| = 0.3) and these attacks use no EOT: pgd; "
           "their accuracy is optimistic for a randomised model (the evaluation is weak for it). Use an EOT attack")
    grads = ("40 of 40 samples have an all-zero and 0 a NaN/inf input gradient (of the logit margin), measured on "
             "the model itself: its forward pass returns logits with no gradient path to the input at all")
    flags = [Flag("randomised_without_eot", "a", None, eot, {}, WEAK),
             Flag("randomised_without_eot", "b", None, eot, {}, WEAK),
             Flag("gradients", "a", None, grads, {"zero": 40}, MASKED),
             Flag("white_box_too_weak", "b", "pgd_linf", "x" * 500, {}, WEAK)]
    text = render_flags(flags)
    lines = text.strip("\n").splitlines()
    assert lines[0].startswith("sanity flags (4): ") and "flags.json" in lines[0]
    body = lines[1:]
    assert len(body) == 3 and all(line.startswith("  ! ") and len(line) <= FLAG_WIDTH for line in body)
    assert body[0] == ("  ! randomised_without_eot [a, b] weak evaluation: two forward passes on the same inputs "
                       "differ (max |Δlogit| = 0.3) an…")
    assert "Use an EOT attack" not in text and "no gradient path" not in text  # the advice stays in flags.json
    assert body[1].startswith("  ! gradients [a] model defeats the evaluation: 40 of 40 samples have an all-zero")
    assert body[1].endswith("…")
    assert body[2].startswith("  ! white_box_too_weak [b / pgd_linf] weak evaluation: xxx") and body[2].endswith("…")
    assert flag_headline("CLEAN ACCURACY IS AT CHANCE: 2/20 = 10.0% correct, chance is 1/10 = 10.0% (p = 0.6); "
                         "every number of this model is meaningless") == (
        "CLEAN ACCURACY IS AT CHANCE: 2/20 = 10.0% correct, chance is 1/10 = 10.0% (p = 0.6)")
    assert render_flags([]) == "\n\nsanity flags: none"
