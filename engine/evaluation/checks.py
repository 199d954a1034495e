"""The engine's own threat-model check: every perturbed batch is verified before it is scored."""

from __future__ import annotations

import torch

from engine.errors import ModelOutputError, ThreatModelViolation
from engine.perturbations.base import Perturbation
from engine.perturbations.norms import NORMS

RANGE_ATOL = 1e-6  # pixels may overshoot [0, 1] by float rounding, no more


def verify_batch(pert: Perturbation, level: float, x: torch.Tensor, x_pert: torch.Tensor,
                 ball: bool = True) -> torch.Tensor:
    """Raise ``ThreatModelViolation`` unless ``x_pert`` is a valid perturbation of ``x`` at ``level``.

    Checks shape, dtype, finiteness, the [0, 1] box and, for attacks, ‖x_pert − x‖ ≤ ε
    (plus the norm's stated tolerance; ``ball=False`` leaves that to a second call on other pixels,
    e.g. the ones a remote target receives). Returns the per-sample perturbation size
    in the perturbation's norm (L∞ for norm-free corruptions) as float64 on CPU.
    """
    where = f"perturbation {pert.name!r} at level {level:g}"
    if pert.family == "attack" and pert.norm_obj is None:
        raise ThreatModelViolation(f"{where}: an attack must declare its norm; without one it cannot be verified")
    if level not in pert.levels:
        raise ThreatModelViolation(f"{where}: {level:g} is not one of its configured levels {list(pert.levels)}")
    if x_pert.shape != x.shape:
        raise ThreatModelViolation(f"{where} returned shape {tuple(x_pert.shape)}, expected {tuple(x.shape)}")
    if x_pert.dtype != x.dtype or x_pert.device != x.device:
        raise ThreatModelViolation(
            f"{where} returned {x_pert.dtype} on {x_pert.device}, expected {x.dtype} on {x.device}"
        )
    finite = torch.isfinite(x_pert).flatten(1).all(dim=1)
    if not bool(finite.all()):
        raise ThreatModelViolation(f"{where} produced NaN/inf pixels in {int((~finite).sum())} sample(s)")
    lo, hi = float(x_pert.min()), float(x_pert.max())
    if lo < -RANGE_ATOL or hi > 1 + RANGE_ATOL:
        raise ThreatModelViolation(f"{where} left the [0, 1] pixel box (min {lo:.6g}, max {hi:.6g})")
    norm = pert.norm_obj
    size_norm = norm if norm is not None else NORMS["linf"]
    sizes = size_norm.measure(x_pert - x).cpu()
    if pert.family == "attack" and norm is not None and ball:
        bound = norm.bound(level)
        over = sizes > bound
        if bool(over.any()):
            raise ThreatModelViolation(
                f"{where}: {int(over.sum())} of {len(sizes)} sample(s) are outside the {norm.name} ball "
                f"(largest ‖δ‖ = {float(sizes.max()):.6g} > ε = {level:g} + tolerance). "
                "The attack is broken; its results are not counted."
            )
    if pert.family == "clean" and bool((sizes > 0).any()):
        raise ThreatModelViolation(f"{where}: the clean perturbation changed its input")
    return sizes


def check_logits(logits: torch.Tensor, n: int, num_classes: int, model_name: str, where: str) -> None:
    """Logits must be an N×K finite matrix; anything else makes accuracy meaningless."""
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ModelOutputError(
            f"model {model_name!r} returned shape {tuple(logits.shape)} for {n} inputs ({where}); expected N×K logits"
        )
    if logits.shape[1] < num_classes:
        raise ModelOutputError(
            f"model {model_name!r} returned {logits.shape[1]} logits but the dataset has {num_classes} classes"
        )
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        raise ModelOutputError(
            f"model {model_name!r} returned NaN/inf logits for {int(bad.sum())} of {n} inputs ({where}). "
            "Check the checkpoint and the input normalisation (model.<name>.mean/std)."
        )
