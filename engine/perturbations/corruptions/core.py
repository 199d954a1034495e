"""The ``Corruption`` perturbation: a severity table, per-sample seeded draws, one batched kernel call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from engine.errors import ConfigError
from engine.perturbations.base import (
    BatchContext,
    Family,
    LevelOutput,
    Perturbation,
    check_severities,
    zero_cost,
)
from engine.perturbations.corruptions.ops import OPS, Draws, SampleRNG, map_threads, to_luma
from engine.perturbations.corruptions.presets import GROUPS, PRESETS
from engine.seeding import derive_seed

BACKENDS = ("auto", "numba", "torch")


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(e) for e in v)
    return v


def _finite(name: str, v: Any) -> None:
    for e in v if isinstance(v, tuple) else (v,):
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
            raise ConfigError(f"perturbation {name!r}: parameter {e!r} is not a finite number")


def stack_draws(per_sample: Sequence[Draws]) -> Draws:
    """Stack per-sample draw dicts along a new first axis (all samples share keys and shapes)."""
    if not per_sample:
        return {}
    return {k: np.stack([np.asarray(d[k]) for d in per_sample]) for k in per_sample[0]}


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: the numba kernels for CPU tensors, the torch twins for anything else (CUDA)."""
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    return backend


@dataclass(frozen=True)
class Corruption(Perturbation):
    """An ImageNet-C-style corruption at integer severities 1-5.

    ``preset`` picks the severity table (``imagenet_c`` or ``cifar10_c``, see
    ``presets.py``); ``params`` (five entries) overrides it. A sample's random draws
    come from ``derive_seed(seed, sample_id, name, severity)``
    and nothing else, so batch layout, worker and device do not change them
    (``ops.SampleRNG``: NumPy's PCG64 plus a torch CPU generator for normals).
    ``backend``: ``auto`` (numba on CPU, torch on CUDA), ``numba`` or ``torch``.
    Inputs with one channel pass through channel-wise corruptions as they are;
    colour corruptions (snow, frost, spatter, saturate, JPEG) see the grey image
    replicated to RGB and return its ITU-R 601 luma.
    """

    family: ClassVar[Family] = "corruption"
    kind: ClassVar[str] = ""

    severities: Sequence[float] = (1, 2, 3, 4, 5)
    preset: str = "imagenet_c"
    params: Sequence[Any] | None = None
    backend: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_severities(self.name, list(self.severities))
        object.__setattr__(self, "severities", tuple(sorted(float(s) for s in self.severities)))
        if self.kind not in OPS:
            raise ConfigError(f"perturbation {self.name!r}: {type(self).__name__} names no corruption kernel")
        if self.preset not in PRESETS:
            raise ConfigError(
                f"perturbation {self.name!r}: preset {self.preset!r} is not one of "
                f"{', '.join(sorted(PRESETS))}"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"perturbation {self.name!r}: backend {self.backend!r} is not one of {', '.join(BACKENDS)}"
            )
        table, preset_opts = PRESETS[self.preset][self.kind]
        if self.params is not None:
            table = list(self.params)
            if len(table) != 5:
                raise ConfigError(
                    f"perturbation {self.name!r}: params needs 5 entries (one per severity), got {len(table)}"
                )
        frozen = tuple(_freeze(p) for p in table)
        for p in frozen:
            _finite(self.name, p)
        object.__setattr__(self, "params", frozen)
        object.__setattr__(self, "options", {**preset_opts, **dict(self.options)})
        super().__post_init__()

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.severities)

    @property
    def group(self) -> str:
        """noise, blur, weather or digital (Hendrycks & Dietterich's families)."""
        return next(g for g, members in GROUPS.items() if self.kind in members)

    def param(self, severity: int) -> Any:
        assert self.params is not None
        return self.params[severity - 1]

    def draws(self, x: torch.Tensor, sample_ids: Sequence[int], seed: int, severity: int) -> Draws:
        """Each sample's draws from its own generator, stacked; ``x`` is the batch the kernel will see."""
        op = OPS[self.kind]
        if op.draw is None:
            return {}
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        host = x.detach().cpu().numpy() if self.kind == "shot_noise" else None
        draw, param = op.draw, self.param(severity)

        def one(i: int) -> Draws:
            rng = SampleRNG(derive_seed(seed, int(sample_ids[i]), self.name, severity))
            return draw(rng, shape, param, self.options, None if host is None else host[i])

        # NumPy's generators release the GIL while they fill arrays: draw samples on threads.
        return stack_draws(map_threads(one, list(range(len(sample_ids))), shape[1] * shape[2]))

    def corrupt(
        self, x: torch.Tensor, severity: int, *, draws: Draws | None = None, seed: int = 0,
        sample_ids: Sequence[int] | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Corrupt a float NCHW batch in [0, 1]; ``draws`` (stacked) replace the seeded ones when given."""
        op = OPS[self.kind]
        n, c = int(x.shape[0]), int(x.shape[1])
        if c not in (1, 3):
            raise ConfigError(f"perturbation {self.name!r}: images need 1 or 3 channels, got {c}")
        xin = x.to(torch.float32)
        if op.colour and c == 1:
            xin = xin.expand(-1, 3, -1, -1)
        xin = xin.contiguous()
        if draws is None:
            ids = list(range(n)) if sample_ids is None else [int(s) for s in sample_ids]
            draws = self.draws(xin, ids, seed, severity)
        out = op.apply(
            xin, draws, self.param(severity), self.options, resolve_backend(self.backend, x.device)
        )
        if op.colour and c == 1:
            out = to_luma(out.clamp_(0.0, 1.0))
        return out.clamp_(0.0, 1.0).to(x.dtype)

    def perturb_level(self, x: torch.Tensor, y: torch.Tensor, level: float, ctx: BatchContext) -> LevelOutput:
        out = self.corrupt(x, int(level), seed=ctx.seed, sample_ids=ctx.sample_ids.tolist())
        n = x.shape[0]
        return LevelOutput(level, out, zero_cost(n), zero_cost(n))


@dataclass(frozen=True)
class GaussianNoise(Corruption):
    """Additive Gaussian noise: x + σ·z."""

    kind: ClassVar[str] = "gaussian_noise"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class ShotNoise(Corruption):
    """Poisson (photon) noise: Poisson(x·λ)/λ."""

    kind: ClassVar[str] = "shot_noise"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class ImpulseNoise(Corruption):
    """Salt-and-pepper noise on a fraction of the values (skimage ``s&p``)."""

    kind: ClassVar[str] = "impulse_noise"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class SpeckleNoise(Corruption):
    """Multiplicative Gaussian noise: x + x·σ·z (held out)."""

    kind: ClassVar[str] = "speckle_noise"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class GaussianBlur(Corruption):
    """Gaussian blur, edge-replicated (held out)."""

    kind: ClassVar[str] = "gaussian_blur"
    stochastic: ClassVar[bool] = False


@dataclass(frozen=True)
class GlassBlur(Corruption):
    """Blur, local pixel shuffle (the reference's sequential copy), blur."""

    kind: ClassVar[str] = "glass_blur"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class DefocusBlur(Corruption):
    """Convolution with an anti-aliased disk."""

    kind: ClassVar[str] = "defocus_blur"
    stochastic: ClassVar[bool] = False


@dataclass(frozen=True)
class MotionBlur(Corruption):
    """Shift-and-add motion blur along a random angle in [-45°, 45°]."""

    kind: ClassVar[str] = "motion_blur"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class ZoomBlur(Corruption):
    """Average of the image and centre crops zoomed by a range of factors."""

    kind: ClassVar[str] = "zoom_blur"
    stochastic: ClassVar[bool] = False


@dataclass(frozen=True)
class Snow(Corruption):
    """Zoomed, thresholded, motion-blurred noise flakes over a brightened image."""

    kind: ClassVar[str] = "snow"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class Frost(Corruption):
    """Blend with a random crop of one of the reference's frost textures."""

    kind: ClassVar[str] = "frost"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class Fog(Corruption):
    """Diamond-square plasma added, then the range rescaled."""

    kind: ClassVar[str] = "fog"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class Spatter(Corruption):
    """Water (severities 1-3) or mud (4-5) splashes from thresholded blurred noise (held out)."""

    kind: ClassVar[str] = "spatter"
    stochastic: ClassVar[bool] = True


@dataclass(frozen=True)
class Brightness(Corruption):
    """HSV value + c."""

    kind: ClassVar[str] = "brightness"
    stochastic: ClassVar[bool] = False


@dataclass(frozen=True)
class Contrast(Corruption):
    """Pull each channel towards its mean: (x − μ)·c + μ."""

    kind: ClassVar[str] = "contrast"
    stochastic: ClassVar[bool] = False


@dataclass(frozen=True)
class Saturate(Corruption):
    """HSV saturation · a + b (held out)."""

    kind: ClassVar[str] = "saturate"
    stochastic: ClassVar[bool] = False


@dataclass(frozen=True)
class JpegCompression(Corruption):
    """JPEG encode/decode at quality q (Pillow)."""

    kind: ClassVar[str] = "jpeg_compression"
    stochastic: ClassVar[bool] = False


@dataclass(frozen=True)
class Pixelate(Corruption):
    """Box downsampling by a factor, then nearest (ImageNet-C) or box (CIFAR-10-C) upsampling."""

    kind: ClassVar[str] = "pixelate"
    stochastic: ClassVar[bool] = False


@dataclass(frozen=True)
class ElasticTransform(Corruption):
    """Smoothed random displacement field (CIFAR-10-C: after a random affine)."""

    kind: ClassVar[str] = "elastic_transform"
    stochastic: ClassVar[bool] = True


CORRUPTIONS: dict[str, type[Corruption]] = {c.kind: c for c in Corruption.__subclasses__()}
