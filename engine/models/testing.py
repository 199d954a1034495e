"""Deliberately flawed defences for tests and demos: input quantisation (masks gradients), quantisation followed by a
median filter, input noise (randomised), an input ripple (rugged, noisy gradients), logit scaling (saturates the
softmax, so cross-entropy gradients vanish), and front ends that break the autograd graph (JPEG through PIL,
bit-depth reduction under ``torch.no_grad()``), the commonest ways published defences masked gradients.

Each wraps any architecture (``net``) and loads that architecture's checkpoint
unchanged (``load_state_dict`` is delegated), so a claim file can put one in
front of ``digits_cnn``'s weights with an inline model block::

    model:
      name: digits_cnn_quantised
      arch:
        _target_: engine.models.testing.InputQuantised
        levels: 16
        mean: [0.3051]
        std: [0.3237]
        net: {_target_: engine.models.cnn.SmallCNN, in_channels: 1, num_classes: 10, width: 16}
      ...

The wrapper receives the normalised input (Gauntlet normalises outside the
architecture), undoes the normalisation, applies its pixel-space pre-processing,
and normalises again for ``net``. These are the classic broken defences of
Athalye et al. (2018): they are not robust, they make gradient attacks fail.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _PixelFrontEnd(nn.Module):
    """Base: a pixel-space pre-processing in front of ``net``; the checkpoint is ``net``'s."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1), persistent=False)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.pre(z * self.std + self.mean)
        out: torch.Tensor = self.net((x - self.mean) / self.std)
        return out


class InputQuantised(_PixelFrontEnd):
    """Rounds every pixel to ``levels`` grey levels first: piecewise constant, so every input gradient is zero."""

    def __init__(self, net: nn.Module, levels: int = 16, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,)) -> None:
        super().__init__(net, mean, std)
        if levels < 2:
            raise ValueError(f"levels must be ≥ 2, got {levels}")
        self.levels = int(levels)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        k = self.levels - 1
        return torch.round(x.clamp(0.0, 1.0) * k) / k


class QuantisedMedian(InputQuantised):
    """Quantisation to ``levels`` grey levels, then a ``kernel`` × ``kernel`` median filter (Xu et al.'s feature
    squeezing, as a single model): piecewise constant, every input gradient is zero."""

    def __init__(self, net: nn.Module, levels: int = 16, kernel: int = 3, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,)) -> None:
        super().__init__(net, levels, mean, std)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd size ≥ 1, got {kernel}")
        self.kernel = int(kernel)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        q = super().pre(x)
        k, pad = self.kernel, self.kernel // 2
        n, c, h, w = q.shape
        windows = F.unfold(F.pad(q, (pad, pad, pad, pad), mode="reflect"), k)  # N × (C·k·k) × (H·W)
        return windows.view(n, c, k * k, h * w).median(dim=2).values.view(n, c, h, w)


class LogitScaled(nn.Module):
    """``net``'s logits times ``scale``: the same predictions, but the softmax saturates, so the cross-entropy
    loss and its gradient are exactly zero in float32 on confidently classified inputs (Carlini & Wagner's
    defensive-distillation finding). Margin-based losses (DLR, FAB, Square) are unaffected."""

    def __init__(self, net: nn.Module, scale: float = 1000.0) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.net, self.scale = net, float(scale)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(z) * self.scale
        return out


class InputNoise(_PixelFrontEnd):
    """Adds Gaussian noise (std ``sigma``, pixel units) at every forward pass: a randomised defence."""

    def __init__(self, net: nn.Module, sigma: float = 0.1, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,)) -> None:
        super().__init__(net, mean, std)
        self.sigma = float(sigma)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x)


class InputRipple(_PixelFrontEnd):
    """Adds ``amplitude · sin(frequency · x)`` per pixel: differentiable but rugged, so gradients are noisy and a
    gradient attack's loss keeps wandering (deterministic, unlike :class:`InputNoise`)."""

    def __init__(self, net: nn.Module, amplitude: float = 0.05, frequency: float = 300.0,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)) -> None:
        super().__init__(net, mean, std)
        self.amplitude, self.frequency = float(amplitude), float(frequency)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.amplitude * torch.sin(self.frequency * x)


class NoGradBitDepth(_PixelFrontEnd):
    """Reduces every pixel to ``bits`` bits under ``torch.no_grad()``: the logits have no gradient path to the
    input at all (no ``grad_fn``), as in a defence that computes its pre-processing outside autograd."""

    def __init__(self, net: nn.Module, bits: int = 3, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,)) -> None:
        super().__init__(net, mean, std)
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1…8, got {bits}")
        self.bits = int(bits)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        k = 2 ** self.bits - 1
        with torch.no_grad():
            return torch.round(x.clamp(0.0, 1.0) * k) / k


class PilJpeg(_PixelFrontEnd):
    """JPEG-compresses and decodes every image through PIL (``quality``), in numpy: the graph breaks there, so
    the logits carry no gradient to the input. Deterministic (libjpeg), shape-preserving: BPDA at ``net`` works."""

    def __init__(self, net: nn.Module, quality: int = 75, mean: Sequence[float] = (0.0,),
                 std: Sequence[float] = (1.0,)) -> None:
        super().__init__(net, mean, std)
        if not 1 <= quality <= 95:
            raise ValueError(f"quality must be in 1…95, got {quality}")
        self.quality = int(quality)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        pixels = (x.detach().clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        decoded = []
        for img in pixels:
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=self.quality)
            out = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
            decoded.append(out[..., None] if out.ndim == 2 else out)
        return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)
