"""Perturbation norms as objects: measure a per-sample norm and state the float tolerance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import ConfigError


@dataclass(frozen=True)
class Norm:
    """An L_p norm over all non-batch dimensions, with the slack allowed when checking ‖δ‖ ≤ ε.

    ``atol`` absorbs float32 rounding of ``clamp(x + δ)``; ``rtol`` the
    accumulated error of an L2 projection (a sum over ~10^5 squared terms).
    """

    name: str
    p: float
    atol: float
    rtol: float

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of ``delta`` (shape N×…) as a float64 tensor of length N."""
        flat = delta.detach().reshape(delta.shape[0], -1).double()
        if self.p == float("inf"):
            return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
        return flat.norm(p=self.p, dim=1)

    def bound(self, eps: float) -> float:
        """Largest measured norm accepted for budget ``eps``."""
        return eps * (1.0 + self.rtol) + self.atol


NORMS: dict[str, Norm] = {
    "linf": Norm("linf", float("inf"), atol=1e-6, rtol=0.0),
    "l2": Norm("l2", 2.0, atol=1e-5, rtol=1e-5),
    "l1": Norm("l1", 1.0, atol=1e-4, rtol=1e-5),
}


def get_norm(name: str) -> Norm:
    """Look up a norm by its config name, naming the valid ones on a miss."""
    try:
        return NORMS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown norm {name!r}; valid norms: {', '.join(NORMS)}") from None
