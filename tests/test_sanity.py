"""Sanity flags: each one fires on a deliberately flawed model and stays quiet on the healthy digits CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from engine.data.digits import load_digits
from engine.evaluate import _rows
from engine.perturbations.attacks import FGSM, PGD
from engine.perturbations.autoattack import APGD
from engine.perturbations.base import BatchContext, Perturbation
from engine.perturbations.square import Square
from engine.perturbations.suite import AttackSuite
from engine.sanity import probe_model, result_flags
from engine.sinks.parquet import SCHEMA
from engine.verify import verify_batch


@pytest.fixture(scope="module")
def healthy(embedded_checkpoints: dict[str, str]) -> torch.nn.Module:
    from engine.models.loader import build_model
    from tests.conftest import compose_dict

    return build_model("digits_cnn", compose_dict()["model"]["digits_cnn"], torch.device("cpu"))


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
    """Wrong only while ‖x − x_clean‖∞ lies in (0.03, 0.12): large perturbations 'help', so accuracy rises with ε."""

    def __init__(self, net: torch.nn.Module, ref: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("ref", ref.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if x.shape != self.ref.shape:
            return logits  # type: ignore[no-any-return]
        d = (x - self.ref).flatten(1).abs().amax(1)
        band = (d > 0.03) & (d < 0.12)
        return torch.where(band[:, None], logits.roll(1, dims=1), logits)


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
             "family": pert.family, "norm": pert.norm, "seed": 0}
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
    from engine.perturbations.base import BatchContext
    from engine.resources import build_perturbation
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


# -- result checks -------------------------------------------------------------------------------------------


def test_accuracy_rising_with_eps_is_flagged(healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    x = data[0]
    # Each FGSM level on its own (the engine's reuse across ε would hide the symptom by construction).
    fgsm = [FGSM(name="fgsm", eps=(e,)) for e in (0.0, 0.05, 0.1, 0.15, 0.2)]
    periodic = pa.concat_tables([_table(Banded(healthy, x), p, data) for p in fgsm])
    assert "non_monotonic" in _checks(result_flags(periodic, {"fgsm": fgsm[0]}))
    sane = pa.concat_tables([_table(healthy, p, data) for p in fgsm])
    assert "non_monotonic" not in _checks(result_flags(sane, {"fgsm": fgsm[0]}))


def test_unbounded_eps_above_chance_is_flagged(healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    pgd = PGD(name="pgd_unbounded", eps=(0.5,), steps=10)
    flags = result_flags(_table(Rounded(healthy), pgd, data), {pgd.name: pgd})
    assert "unbounded_eps_above_chance" in _checks(flags)
    assert result_flags(_table(healthy, pgd, data), {pgd.name: pgd}) == []


def test_black_box_beating_white_box_is_flagged(healthy: torch.nn.Module, data: tuple) -> None:  # type: ignore[type-arg]
    suite = AttackSuite(name="aa", norm="linf", eps=(0.3,), tags=("white-box", "black-box"), attacks=(
        APGD(name="apgd-ce", n_iter=20, tags=("white-box",)),
        Square(name="square", n_queries=300, tags=("black-box",)),
    ))
    masked = _table(Rounded(healthy), suite, data)
    flags = result_flags(masked, {"aa": suite})
    assert "black_box_beats_white_box" in _checks(flags)
    assert result_flags(_table(healthy, suite, data), {"aa": suite}) == []


def test_sweep_writes_flags_json_next_to_results(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from engine.sweep import run_sweep
    from tests.conftest import compose_dict, tiny_overrides

    outcome = run_sweep(compose_dict(tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean,fgsm_linf]")))
    doc = json.loads((tmp_path / "flags.json").read_text())
    assert doc["run_id"] == outcome.plan.run_id and isinstance(doc["flags"], list)
    assert [f.as_dict() for f in outcome.flags] == doc["flags"]
    assert "sanity flags" in outcome.summary and "sanity flags" in (tmp_path / "summary.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(
        f"{t.task_id}.parquet" for t in outcome.plan.tasks)
