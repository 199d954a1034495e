"""The engine's threat-model check catches broken attacks, whatever library produced them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from engine.errors import ModelOutputError, ThreatModelViolation
from engine.evaluation.checks import check_logits, verify_batch
from engine.perturbations.attacks import FGSM
from engine.perturbations.base import BatchContext, LevelOutput, zero_cost
from engine.perturbations.clean import Clean
from engine.perturbations.corruptions import Contrast


@dataclass(frozen=True)
class OvershootingAttack(FGSM):
    """A deliberately broken L∞ attack: steps 2ε instead of ε and forgets to project."""

    def perturb_level(self, x: torch.Tensor, y: torch.Tensor, level: float, ctx: BatchContext) -> LevelOutput:
        sign = torch.where(torch.arange(x.numel()).view_as(x) % 2 == 0, 1.0, -1.0)
        x_adv = (x + 2 * level * sign).clamp(0, 1)
        return LevelOutput(level, x_adv, zero_cost(len(x)), zero_cost(len(x)))


def _x(n: int = 4) -> torch.Tensor:
    return torch.full((n, 1, 8, 8), 0.5)


def test_overshooting_attack_is_caught_and_named() -> None:
    pert = OvershootingAttack(name="broken_fgsm", eps=(0.1,))
    x = _x()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    out = next(pert.run(x, torch.zeros(4, dtype=torch.long), BatchContext(model, 0, torch.arange(4))))
    with pytest.raises(ThreatModelViolation, match=r"broken_fgsm.*outside the linf ball"):
        verify_batch(pert, out.level, x, out.x)


def test_valid_attack_at_the_boundary_passes_and_reports_sizes() -> None:
    pert = FGSM(name="fgsm", eps=(0.1,))
    x = _x()
    x_adv = x + 0.1
    sizes = verify_batch(pert, 0.1, x, x_adv)
    assert torch.allclose(sizes, torch.full((4,), 0.1, dtype=torch.float64), atol=1e-6)


def test_l2_ball_is_checked_in_l2() -> None:
    from engine.perturbations.attacks import PGD

    pert = PGD(name="pgd_l2", norm="l2", eps=(1.0,))
    x = _x(2)
    delta = torch.zeros_like(x)
    delta[0, 0, :7, 0] = 0.4  # 7 entries of 0.4: L2 = 1.058 > 1 while L∞ = 0.4
    with pytest.raises(ThreatModelViolation, match="l2 ball"):
        verify_batch(pert, 1.0, x, x + delta)
    verify_batch(pert, 1.0, x, x + delta * 0.9)  # L2 = 0.952


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda x: x.clone().fill_(float("nan")), "NaN/inf"),
        (lambda x: x + 0.6, r"\[0, 1\] pixel box"),
        (lambda x: x[:, :, :4], "shape"),
        (lambda x: x.double(), "float64"),
    ],
)
def test_every_perturbation_family_gets_box_finite_shape_checks(make, message) -> None:  # type: ignore[no-untyped-def]
    pert = Contrast(name="contrast", params=(0.75, 0.5, 0.4, 0.3, 0.15))
    x = _x()
    with pytest.raises(ThreatModelViolation, match=message):
        verify_batch(pert, 1.0, x, make(x))


def test_clean_must_not_change_its_input() -> None:
    x = _x()
    with pytest.raises(ThreatModelViolation, match="clean"):
        verify_batch(Clean(name="clean"), 0.0, x, x + 1e-3)


def test_nan_logits_are_a_clear_error() -> None:
    logits = torch.zeros(3, 10)
    logits[1, 2] = float("nan")
    with pytest.raises(ModelOutputError, match=r"NaN/inf logits for 1 of 3"):
        check_logits(logits, 3, 10, "m", "clean")
    with pytest.raises(ModelOutputError, match="shape"):
        check_logits(torch.zeros(3), 3, 10, "m", "clean")


def test_broken_attack_fails_the_whole_sweep_without_writing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from engine.sweep import run_sweep
    from tests.conftest import compose_dict, tiny_overrides

    cfg = compose_dict(tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[fgsm_linf]"))
    cfg["perturbation"]["fgsm_linf"]["_target_"] = f"{__name__}.OvershootingAttack"
    cfg["target_packages"] = ["tests"]
    with pytest.raises(ThreatModelViolation, match="fgsm_linf"):
        run_sweep(cfg)
    assert sorted((tmp_path / "results").glob("*")) == []
