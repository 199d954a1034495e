"""Perturbations: validation of ε / severities, torchattacks parity, per-sample seeding, corruption maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks
from scipy.ndimage import gaussian_filter

from engine.errors import ConfigError
from engine.evaluation.resources import build_perturbation
from engine.perturbations.attacks import FGSM, PGD
from engine.perturbations.base import BatchContext
from engine.perturbations.corruptions import Contrast, GaussianBlur, GaussianNoise

PARAMS = (0.04, 0.06, 0.08, 0.09, 0.10)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("eps", [[-0.1], ["abc"], [float("nan")], [True]])
def test_bad_eps_is_rejected_naming_the_perturbation(eps: list) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match="pgd_linf"):
        build_perturbation("pgd_linf", {"_target_": "engine.perturbations.attacks.PGD", "eps": eps})


@pytest.mark.parametrize("sev", [0, 6, 2.5])
def test_severity_outside_1_to_5_is_rejected(sev: float) -> None:
    cfg = {"_target_": "engine.perturbations.corruptions.Contrast", "severities": [sev], "params": list(PARAMS)}
    with pytest.raises(ConfigError, match="severity"):
        build_perturbation("contrast", cfg)


def test_unknown_perturbation_key_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\].*steps"):
        build_perturbation("pgd_linf", {"_target_": "engine.perturbations.attacks.PGD", "eps": [0.1], "stepz": 3})


def test_eps_list_is_sorted_and_zero_is_the_clean_input() -> None:
    pert = PGD(name="p", eps=(0.2, 0.0, 0.1), steps=2)
    assert pert.levels == (0.0, 0.1, 0.2)
    x, y = _batch()
    outs = list(pert.run(x, y, BatchContext(_model(), 0, torch.arange(len(x)))))
    assert [o.level for o in outs] == [0.0, 0.1, 0.2]
    assert torch.equal(outs[0].x, x) and int(outs[0].grad_evals.sum()) == 0
    assert bool((outs[1].grad_evals == 2).all())  # every sample is attacked at the first ε > 0


def test_fgsm_matches_torchattacks_exactly() -> None:
    model, (x, y) = _model(), _batch()
    ours = FGSM(name="fgsm", eps=(0.1,)).perturb_level(x, y, 0.1, BatchContext(model, 0, torch.arange(6))).x
    assert torch.equal(ours, torchattacks.FGSM(model, eps=0.1)(x, y))


@pytest.mark.parametrize("norm, backend", [("linf", torchattacks.PGD), ("l2", torchattacks.PGDL2)])
def test_pgd_matches_torchattacks_given_the_same_seed(norm: str, backend: type) -> None:
    model, (x, y) = _model(), _batch()
    eps = 0.1 if norm == "linf" else 0.5
    pert = PGD(name=f"pgd_{norm}", norm=norm, eps=(eps,), steps=5)
    ctx = BatchContext(model, 7, torch.arange(6))
    ours = pert.perturb_level(x, y, eps, ctx).x
    torch.manual_seed(ctx.batch_seed(pert.name, eps))
    theirs = backend(model, eps=eps, alpha=2.5 * eps / 5, steps=5, random_start=True)(x, y)
    assert torch.equal(ours, theirs)


def test_pgd_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    model, (x, y) = _model(), _batch()
    pert = PGD(name="p", eps=(0.1,), steps=3)
    ctx = BatchContext(model, 3, torch.arange(6))
    torch.manual_seed(123)
    a = pert.perturb_level(x, y, 0.1, ctx).x
    after = torch.rand(1)
    torch.manual_seed(123)
    b = pert.perturb_level(x, y, 0.1, ctx).x
    assert torch.equal(a, b) and torch.equal(after, torch.rand(1))
    other = pert.perturb_level(x, y, 0.1, BatchContext(model, 4, torch.arange(6))).x
    assert not torch.equal(a, other)


def test_gaussian_noise_per_sample_does_not_depend_on_the_batch() -> None:
    pert = GaussianNoise(name="gaussian_noise", params=PARAMS)
    x, y = _batch(6)
    ids = torch.arange(100, 106)
    whole = pert.perturb_level(x, y, 3, BatchContext(_model(), 0, ids)).x
    halves = torch.cat([
        pert.perturb_level(x[:2], y[:2], 3, BatchContext(_model(), 0, ids[:2])).x,
        pert.perturb_level(x[2:], y[2:], 3, BatchContext(_model(), 0, ids[2:])).x,
    ])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, pert.perturb_level(x, y, 3, BatchContext(_model(), 1, ids)).x)
    noise = (whole - x)[(x > 0.2) & (x < 0.8)]  # away from clipping
    assert abs(float(noise.std()) - 0.08) < 0.01


def test_gaussian_blur_matches_scipy_nearest_mode() -> None:
    pert = GaussianBlur(name="gaussian_blur", params=(0.4, 0.6, 0.7, 0.8, 1.0))
    x, y = _batch(2)
    out = pert.perturb_level(x, y, 5, BatchContext(_model(), 0, torch.arange(2))).x
    ref = np.stack([gaussian_filter(x[i, 0].numpy().astype(np.float64), 1.0, mode="nearest") for i in range(2)])
    assert np.abs(out[:, 0].numpy() - ref).max() < 1e-5


def test_contrast_scales_deviation_from_the_image_mean() -> None:
    pert = Contrast(name="contrast", params=(0.75, 0.5, 0.4, 0.3, 0.15))
    x, y = _batch(2)
    out = pert.perturb_level(x, y, 2, BatchContext(_model(), 0, torch.arange(2))).x
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out, (x - mean) * 0.5 + mean, atol=1e-6)


def test_eps_curve_reuses_broken_examples_and_never_increases() -> None:
    model, (x, y) = _model(), _batch(32)
    with torch.no_grad():
        y = model(x).argmax(1)  # start from a correctly classified batch
    pert = PGD(name="pgd_linf", eps=(0.0, 0.02, 0.05, 0.1, 0.3), steps=4)
    outs = list(pert.run(x, y, BatchContext(model, 0, torch.arange(32))))
    with torch.no_grad():
        wrong = [model(o.x).argmax(1) != y for o in outs]
    counts = [int(w.sum()) for w in wrong]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] > counts[1]
    for lo, hi, out_hi in zip(wrong, wrong[1:], outs[1:], strict=False):
        assert bool((hi | ~lo).all())  # broken stays broken
        assert int(out_hi.grad_evals[lo].sum()) == 0  # and is not attacked again
    assert torch.equal(outs[-1].x[wrong[1]], outs[1].x[wrong[1]])  # with the very same example
    assert int(outs[1].grad_evals[~wrong[0]].min()) == 4
