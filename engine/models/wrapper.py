"""Normalisation inside the model: every perturbation sees pixel space [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NormalizedModel(nn.Module):
    """``net((x − mean) / std)``; the wrapper is what attacks differentiate through."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        channels = len(mean)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
