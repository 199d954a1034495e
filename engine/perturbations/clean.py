"""The identity perturbation: the clean accuracy row every curve starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from engine.perturbations.base import BatchContext, Family, LevelOutput, Perturbation, zero_cost


@dataclass(frozen=True)
class Clean(Perturbation):
    """Pass the batch through unchanged at the single level 0."""

    family: ClassVar[Family] = "clean"

    @property
    def levels(self) -> tuple[float, ...]:
        return (0.0,)

    def perturb_level(
        self, x: torch.Tensor, y: torch.Tensor, level: float, ctx: BatchContext
    ) -> LevelOutput:
        n = x.shape[0]
        return LevelOutput(level, x, zero_cost(n), zero_cost(n))
