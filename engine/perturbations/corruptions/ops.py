"""The 19 corruptions as batched functions: per-sample random draws, then one batched application.

Every corruption is an :class:`Op`: ``draw(rng, (C, H, W), param, opts, x)``
returns one sample's random draws as NumPy arrays (in the layout the reference
consumes them, e.g. H×W×C noise); ``apply(x, draws, param, opts, backend)`` takes
a float32 NCHW batch in [0, 1] and the draws stacked along a new first axis, and
returns the corrupted batch (not yet clipped). ``backend`` is ``"numba"`` (CPU
kernels in :mod:`kernels.corruptions_cpu`) or ``"torch"`` (the batched twins in
:mod:`kernels.corruptions_torch`, for CUDA). Simple element-wise corruptions have
one torch implementation that serves both. The reference's semantics are kept
where they are quirky; docs/corruptions.md lists each choice.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.perturbations.corruptions import textures
from kernels import corruptions_cpu as kcpu
from kernels import corruptions_torch as ktorch

Draws = dict[str, np.ndarray]
Shape = tuple[int, int, int]
DrawFn = Callable[["SampleRNG", Shape, Any, dict[str, Any], "np.ndarray | None"], Draws]
ApplyFn = Callable[[torch.Tensor, dict[str, np.ndarray], Any, dict[str, Any], str], torch.Tensor]

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as cv2.COLOR_RGB2GRAY and PIL's convert("L")


class SampleRNG:
    """One sample's random source, fixed by one derived seed and created on first use.

    Uniforms, integers and Poisson draws come from NumPy's PCG64 (``numpy``); normals
    from a torch CPU generator (``normal``), whose vectorised Box-Muller is ~3× faster
    than NumPy's ziggurat. Draws are always made on the CPU, so a sample's noise does
    not depend on the device that applies it.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._numpy: np.random.Generator | None = None
        self._torch: torch.Generator | None = None

    @property
    def numpy(self) -> np.random.Generator:
        if self._numpy is None:
            self._numpy = np.random.Generator(np.random.PCG64(self.seed))
        return self._numpy

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normal float32 values of ``shape``."""
        if self._torch is None:
            self._torch = torch.Generator()
            self._torch.manual_seed(self.seed)
        return torch.randn(shape, generator=self._torch, dtype=torch.float32).numpy()


@dataclass(frozen=True)
class Op:
    """One corruption: how to draw a sample's randomness and how to apply a batch."""

    apply: ApplyFn
    draw: DrawFn | None = None
    colour: bool = False  # needs RGB: a 1-channel input is replicated, corrupted, and reduced to luma


# ---------------------------------------------------------------------------------------------- helpers


def gaussian_kernel1d(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage's Gaussian taps (radius ``int(truncate·σ + 0.5)``); σ = 0 is the identity."""
    if sigma <= 1e-15:
        return np.ones(1)
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * t**2)
    return phi / phi.sum()


def blur_planes(
    planes: torch.Tensor,
    sigma: float | tuple[float, float],
    mode: int,
    truncate: float,
    backend: str,
) -> torch.Tensor:
    """Gaussian-filter every (H, W) plane of ``planes`` (..., H, W) like ``skimage.filters.gaussian``."""
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    wy, wx = gaussian_kernel1d(sy, truncate), gaussian_kernel1d(sx, truncate)
    if backend == "torch":
        return ktorch.separable_filter(planes, wy, wx, mode)
    shape = planes.shape
    arr = _np(planes).reshape(-1, shape[-2], shape[-1])
    out = kcpu.separable_filter(arr, wy.astype(arr.dtype), wx.astype(arr.dtype), mode)
    return torch.from_numpy(out.reshape(shape)).to(planes.device)


# Below this many pixels per item, a thread pool costs more than it saves (GIL hand-offs and
# per-call Python work dominate): measured 2.4× slower for gaussian noise draws at 32×32 on 2 threads.
THREAD_MIN_PIXELS = 64 * 64


def map_threads(fn: Callable[[Any], Any], items: list[Any], pixels_per_item: int = THREAD_MIN_PIXELS) -> list[Any]:
    """``[fn(i) for i in items]`` on as many threads as numba may use (the callees release the GIL).

    Runs serially when each item is smaller than ``THREAD_MIN_PIXELS``.
    """
    import numba

    workers = max(1, min(len(items), numba.get_num_threads()))
    if workers == 1 or pixels_per_item < THREAD_MIN_PIXELS:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _t(
    draws: dict[str, np.ndarray], key: str, like: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(draws[key])).to(like.device, dtype or like.dtype)


def _hwc(t: torch.Tensor) -> torch.Tensor:
    """Draws stored H×W×C per sample (the reference's layout) → N×C×H×W."""
    return t.permute(0, 3, 1, 2)


def to_luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------- noise


def _draw_normal_hwc(rng: SampleRNG, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    c, h, w = shape
    return {"z": rng.normal((h, w, c))}


def _pointwise(x: torch.Tensor, a: np.ndarray, b: np.ndarray | None, p: float, mode: int) -> torch.Tensor:
    """CPU path of the noises: one fused numba pass (draws H×W×C → output NCHW)."""
    a = np.ascontiguousarray(a)
    b = a if b is None else np.ascontiguousarray(b)
    return torch.from_numpy(kcpu.pointwise_hwc(_np(x), a, b, p, mode)).to(x.device)


def _apply_gaussian_noise(
    x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    if backend != "torch":
        return _pointwise(x, d["z"], None, float(c), 0)
    return x + _hwc(_t(d, "z", x)) * float(c)


def _apply_speckle_noise(
    x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    if backend != "torch":
        return _pointwise(x, d["z"], None, float(c), 1)
    return x + x * (_hwc(_t(d, "z", x)) * float(c))


@functools.lru_cache(maxsize=16)
def poisson_levels(c: float) -> tuple[np.ndarray, np.ndarray]:
    """Alias tables of Poisson(v/255 · c) for the 256 levels v of an 8-bit image."""
    lams = np.arange(256) / 255.0 * c
    length = int(c + 10 * math.sqrt(c) + 20)
    prob, alias = kcpu.poisson_alias_tables(lams, length)
    prob.setflags(write=False)
    alias.setflags(write=False)
    return prob, alias


def _draw_shot(rng: SampleRNG, shape: Shape, c: Any, opts: dict[str, Any], x: np.ndarray | None) -> Draws:
    """Poisson(x·c) counts, H×W×C.

    Images on the 8-bit grid (all real data) draw each count from per-level alias
    tables with one uniform: exact Poisson up to a dropped tail of mass < 1e-20, and
    ~10× faster than NumPy's sampler. Other inputs use ``Generator.poisson``.
    """
    assert x is not None, "shot noise draws Poisson counts of the image itself"
    hwc = np.transpose(x, (1, 2, 0))
    scaled = hwc * np.float32(255.0)
    levels = np.rint(scaled)
    if np.abs(scaled - levels).max(initial=0.0) < 1e-3 and levels.min(initial=0.0) >= 0:
        prob, alias = poisson_levels(float(c))
        u = rng.numpy.random(hwc.shape)
        return {"counts": kcpu.poisson_alias_sample(levels.astype(np.uint8), u, prob, alias)}
    return {"counts": rng.numpy.poisson(hwc.astype(np.float64) * float(c)).astype(np.float32)}


def _apply_shot_noise(x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    if backend != "torch":
        return _pointwise(x, d["counts"], None, float(c), 2)
    return _hwc(_t(d, "counts", x)) / float(c)


def _draw_impulse(rng: SampleRNG, shape: Shape, p: Any, opts: dict[str, Any], x: Any) -> Draws:
    """skimage's ``random_noise(mode='s&p')``: a value flips where U1 ≤ amount, to 1 ("salt")
    with probability ½, else 0. Stored as uint8 masks, H×W×C: ``flip`` and ``salt``."""
    c, h, w = shape
    gen = rng.numpy
    flip = (gen.random((h, w, c), dtype=np.float32) <= np.float32(p)).view(np.uint8)
    salt = np.frombuffer(gen.bytes(h * w * c), dtype=np.uint8).reshape(h, w, c) >> 7
    return {"flip": flip, "salt": salt}


def _apply_impulse_noise(
    x: torch.Tensor, d: Draws, p: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    if backend != "torch":
        return _pointwise(x, d["flip"], d["salt"], float(p), 3)
    flip = _hwc(torch.from_numpy(np.ascontiguousarray(d["flip"]) != 0).to(x.device))
    salt = _hwc(torch.from_numpy(np.ascontiguousarray(d["salt"])).to(x.device, x.dtype))
    return torch.where(flip, salt, x)


# ---------------------------------------------------------------------------------------------- blur


def _apply_gaussian_blur(
    x: torch.Tensor, d: Draws, sigma: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    return blur_planes(x, float(sigma), kcpu.NEAREST, 4.0, backend)


def _draw_glass(rng: SampleRNG, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    _, h, w = shape
    _, delta, iters = param
    delta = int(delta)
    size = (int(iters), h - 2 * delta, w - 2 * delta, 2)
    return {"shifts": rng.numpy.integers(-delta, delta, size=size, dtype=np.int8)}


def _apply_glass_blur(
    x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    sigma, delta = float(param[0]), int(param[1])
    # First blur in float64 so the truncation to uint8 (np.uint8(...·255)) lands where the reference's does.
    blurred = blur_planes(x.to(torch.float64), sigma, kcpu.NEAREST, 4.0, backend)
    shifts = np.ascontiguousarray(d["shifts"])
    if backend != "torch":
        img = kcpu.glass_shuffle(kcpu.truncate_u8(_np(blurred)), shifts, delta)
        shuffled = torch.from_numpy(kcpu.dequantize_u8(img, False)).to(x.device)
        return blur_planes(shuffled, sigma, kcpu.NEAREST, 4.0, backend)
    img = torch.floor((blurred * 255).clamp_(0, 255)).to(torch.uint8)
    img = ktorch.glass_shuffle(img, torch.from_numpy(shifts), delta)
    return blur_planes(img.to(x.dtype) / 255.0, sigma, kcpu.NEAREST, 4.0, backend)


@functools.lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk, with its all-zero border trimmed (same result, fewer taps)."""
    import cv2

    if radius <= 8:
        span, ksize = np.arange(-8.0, 8 + 1), (3, 3)
    else:
        span, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(span, span)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= np.sum(disk)
    k = cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)
    nz = np.nonzero(np.abs(k).sum(axis=0) + np.abs(k).sum(axis=1))[0]
    r = (k.shape[0] - 1) // 2
    keep = max(abs(int(nz.min()) - r), abs(int(nz.max()) - r)) if nz.size else 0
    out = np.ascontiguousarray(k[r - keep : r + keep + 1, r - keep : r + keep + 1])
    out.setflags(write=False)
    return out


def _apply_defocus_blur(
    x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    kernel = disk_kernel(float(param[0]), float(param[1]))
    n, c, h, w = x.shape
    if backend == "torch":
        r = (kernel.shape[0] - 1) // 2
        planes = x.reshape(n * c, 1, h, w)
        rows = ktorch.border_index(torch.arange(-r, h + r, device=x.device), h, ktorch.MIRROR)
        cols = ktorch.border_index(torch.arange(-r, w + r, device=x.device), w, ktorch.MIRROR)
        padded = planes.index_select(2, rows).index_select(3, cols)
        k = torch.from_numpy(kernel.copy()).to(x.device, x.dtype).view(1, 1, *kernel.shape)
        return torch.nn.functional.conv2d(padded, k).reshape(n, c, h, w)
    # cv2.filter2D (BORDER_REFLECT_101) is the reference's own call; it switches to a DFT for big kernels.
    import cv2

    arr = _np(x).reshape(n * c, h, w)
    out = np.empty_like(arr)
    for i in range(n * c):
        out[i] = cv2.filter2D(arr[i], -1, kernel)
    return torch.from_numpy(out.reshape(n, c, h, w)).to(x.device)


def motion_taps(
    angles: np.ndarray, radius: int, sigma: float, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the reference's ``_motion_blur`` shifts (dx, dy), weights and tap count.

    The reference stops at the first tap whose shift leaves the image; ``counts``
    holds how many taps come before that.
    """
    width = radius * 2 + 1
    t = np.arange(width)
    k = np.exp(-(t**2) / (2 * (sigma**2))) / (np.sqrt(2 * np.pi) * sigma)
    k = k / np.sum(k)
    rad = np.deg2rad(angles.astype(np.float64))
    p0, p1 = width * np.sin(rad), width * np.cos(rad)
    hyp = np.hypot(p0, p1)
    dy = -np.ceil((t[None, :] * p0[:, None]) / hyp[:, None] - 0.5).astype(np.int64)
    dx = -np.ceil((t[None, :] * p1[:, None]) / hyp[:, None] - 0.5).astype(np.int64)
    outside = (np.abs(dy) >= h) | (np.abs(dx) >= w)
    counts = np.where(outside.any(axis=1), outside.argmax(axis=1), width).astype(np.int64)
    weights = np.repeat(k[None, :], dy.shape[0], axis=0)
    return dx, dy, weights, counts


def motion_blur_planes(
    planes: torch.Tensor, angles: np.ndarray, radius: int, sigma: float, backend: str
) -> torch.Tensor:
    """The reference's shift-and-add motion blur of (N, C, H, W) planes, one angle per image; float64."""
    _, _, h, w = planes.shape
    dx, dy, weights, counts = motion_taps(angles, int(radius), float(sigma), h, w)
    if backend == "torch":
        return ktorch.shift_blend(planes, *(torch.from_numpy(a) for a in (dx, dy, weights, counts)))
    return torch.from_numpy(kcpu.shift_blend(_np(planes), dx, dy, weights, counts)).to(planes.device)


def _draw_uniform_scalar(rng: SampleRNG, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    return {"u": np.asarray(rng.numpy.random())}


def _apply_motion_blur(
    x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    angles = -45 + (45 - (-45)) * np.asarray(d["u"], dtype=np.float64)  # np.random.uniform(-45, 45)
    return motion_blur_planes(x, angles, int(param[0]), float(param[1]), backend).to(x.dtype)


@functools.lru_cache(maxsize=64)
def zoom_plan(
    h: int,
    w: int,
    factors: tuple[float, ...],
    center_trim: bool,
    out_h: int | None = None,
    out_w: int | None = None,
) -> tuple[np.ndarray, ...]:
    """Stacked row/column tables of ``kcpu.zoom_tables`` for several zoom factors."""
    rows = [kcpu.zoom_tables(h, f, out_h or h, center_trim) for f in factors]
    cols = [kcpu.zoom_tables(w, f, out_w or w, center_trim) for f in factors]
    plan = (
        np.stack([r[0] for r in rows]),
        np.stack([r[1] for r in rows]),
        np.stack([c[0] for c in cols]),
        np.stack([c[1] for c in cols]),
        np.array([r[2] for r in rows], dtype=np.int64),
        np.array([c[2] for c in cols], dtype=np.int64),
    )
    for a in plan:
        a.setflags(write=False)
    return plan


def zoom_planes(planes: torch.Tensor, plan: tuple[np.ndarray, ...], backend: str) -> torch.Tensor:
    """Sum of the zoomed layers of each (H, W) plane of ``planes`` (..., H, W); ``plan`` fixes the size."""
    shape = planes.shape
    flat = planes.reshape(-1, shape[-2], shape[-1])
    if backend == "torch":
        out = ktorch.zoom_sum(flat, *plan)
    else:
        out = torch.from_numpy(kcpu.zoom_sum(_np(flat), *plan)).to(planes.device)
    return out.reshape(*shape[:-2], plan[0].shape[1], plan[2].shape[1])


def zoom_factors(param: Any) -> tuple[float, ...]:
    start, stop, step = param
    return tuple(float(f) for f in np.arange(start, stop, step))


def _apply_zoom_blur(
    x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    factors = zoom_factors(param)
    h, w = x.shape[-2:]
    plan = zoom_plan(h, w, factors, bool(opts.get("center_trim", False)))
    return (x + zoom_planes(x, plan, backend)) / (len(factors) + 1)


# ---------------------------------------------------------------------------------------------- weather


def _draw_snow(rng: SampleRNG, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    _, h, w = shape
    return {"z": rng.normal((h, w)), "u": np.asarray(rng.numpy.random())}


def _apply_snow(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    loc, scale, zoom, threshold, radius, sigma, blend = param
    h, w = x.shape[-2:]
    layer = float(loc) + float(scale) * _t(d, "z", x, torch.float64)  # np.random.normal(loc, scale)
    # clipped_zoom keeps the whole zoomed crop here (no trim), and the blur sees that size
    zh = round(math.ceil(h / float(zoom)) * float(zoom))
    zw = round(math.ceil(w / float(zoom)) * float(zoom))
    layer = zoom_planes(layer, zoom_plan(h, w, (float(zoom),), False, zh, zw), backend)
    angles = -135 + (-45 - (-135)) * np.asarray(d["u"], dtype=np.float64)
    if backend != "torch":
        layer = torch.from_numpy(kcpu.snow_threshold(_np(layer), float(threshold)))
        layer = motion_blur_planes(layer.unsqueeze(1), angles, int(radius), float(sigma), backend)
        return torch.from_numpy(kcpu.snow_compose(_np(x), _np(layer), float(blend))).to(x.device)
    layer = torch.where(layer < float(threshold), torch.zeros_like(layer), layer).clamp_(0, 1)
    layer = motion_blur_planes(layer.unsqueeze(1), angles, int(radius), float(sigma), backend)
    layer = (torch.round(layer * 255) / 255.0)[..., :h, :w]
    gray = to_luma(x)
    base = float(blend) * x + (1 - float(blend)) * torch.maximum(x, gray * 1.5 + 0.5)
    return (base.to(torch.float64) + layer + torch.flip(layer, dims=(-2, -1))).to(x.dtype)


def _frost_scale(opts: dict[str, Any]) -> float | None:
    s = opts.get("texture_scale")
    return None if s is None else float(s)


def _draw_frost(rng: SampleRNG, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    _, h, w = shape
    idx = int(rng.numpy.integers(textures.N_USED))
    tex = textures.rescaled_texture(idx, h, w, _frost_scale(opts))
    top = int(rng.numpy.integers(0, tex.shape[0] - h))
    left = int(rng.numpy.integers(0, tex.shape[1] - w))
    return {"idx": np.asarray(idx), "top": np.asarray(top), "left": np.asarray(left)}


def _apply_frost(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    n, _, h, w = x.shape
    crops = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        tex = textures.rescaled_texture(int(d["idx"][i]), h, w, _frost_scale(opts))
        top, left = int(d["top"][i]), int(d["left"][i])
        crops[i] = tex[top : top + h, left : left + w]
    frost = torch.from_numpy(crops).to(x.device).permute(0, 3, 1, 2).to(x.dtype)
    return float(param[0]) * x + float(param[1]) / 255.0 * frost


def _plasma_size(h: int, w: int) -> int:
    side = max(h, w)
    return 1 if side == 0 else 2 ** (side - 1).bit_length()


def _draw_fog(rng: SampleRNG, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    size = _plasma_size(shape[1], shape[2])
    return {"u": rng.numpy.random(size * size - 1)}


def _apply_fog(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    strength, decay = float(param[0]), float(param[1])
    h, w = x.shape[-2:]
    size = _plasma_size(h, w)
    u = np.ascontiguousarray(d["u"], dtype=np.float64)
    if backend != "torch":
        plasma_np = kcpu.plasma_fractal(u, size, decay)
        return torch.from_numpy(kcpu.fog_compose(_np(x), plasma_np, strength)).to(x.device)
    plasma = ktorch.plasma_fractal(torch.from_numpy(u).to(x.device), size, decay)
    xd = x.to(torch.float64)
    max_val = xd.amax(dim=(1, 2, 3), keepdim=True)
    out = (xd + strength * plasma[:, None, :h, :w]) * max_val / (max_val + strength)
    return out.to(x.dtype)


def _draw_spatter(rng: SampleRNG, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    return {"z": rng.normal((shape[1], shape[2]))}


def spatter_layers(z: np.ndarray, param: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the reference's liquid mask as (multiplier (N,1,H,W), addend (N,3,H,W)), float64.

    Both branches run OpenCV's Canny / distance transform / histogram steps on the
    CPU, whatever the backend: they are the reference's own calls.
    """
    import cv2

    loc, scale, sigma, threshold, intensity, mud = param
    n, h, w = z.shape
    liquid = float(loc) + float(scale) * z
    liquid = kcpu.separable_filter(
        liquid, gaussian_kernel1d(float(sigma), 4.0), gaussian_kernel1d(float(sigma), 4.0), kcpu.NEAREST
    )
    liquid[liquid < threshold] = 0
    mult = np.ones((n, 1, h, w))
    add = np.zeros((n, 3, h, w))
    if int(mud) == 0:
        colour = np.array([175, 238, 238], dtype=np.float64) / 255.0  # pale turquoise
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        for i in range(n):
            layer = (liquid[i] * 255).astype(np.uint8)
            dist = 255 - cv2.Canny(layer, 50, 150)
            dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
            dist = cv2.equalizeHist(dist)
            dist = cv2.filter2D(dist, cv2.CV_8U, ker)
            dist = cv2.blur(dist, (3, 3)).astype(np.float32)
            m = layer * dist
            peak = float(m.max())
            m = m / peak * float(intensity) if peak > 0 else np.zeros_like(m)
            add[i] = m[None] * colour[:, None, None]
    else:
        colour = np.array([63, 42, 20], dtype=np.float64) / 255.0  # mud brown
        mask = np.where(liquid > threshold, 1, 0).astype(np.float32)
        k = gaussian_kernel1d(float(intensity), 4.0).astype(np.float32)
        m = kcpu.separable_filter(mask, k, k, kcpu.NEAREST)
        m[m < 0.8] = 0
        mult[:, 0] = 1 - m
        add = m[:, None].astype(np.float64) * colour[None, :, None, None]
    return mult, add


def _apply_spatter(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    mult, add = spatter_layers(np.ascontiguousarray(d["z"], dtype=np.float64), param)
    mult_t = torch.from_numpy(mult).to(x.device, x.dtype)
    add_t = torch.from_numpy(add).to(x.device, x.dtype)
    return x * mult_t + add_t


# ---------------------------------------------------------------------------------------------- digital


def _apply_brightness(x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    # rgb2hsv → V += c → hsv2rgb scales every channel by V'/V (black pixels become grey V').
    # With one channel that is clip(x + c), the reference's greyscale branch.
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + float(c)).clamp(0, 1)
    scaled = x * (v_new / torch.where(v > 0, v, torch.ones_like(v)))
    return torch.where(v > 0, scaled, v_new.expand_as(x))


def _apply_contrast(x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)  # per channel, as np.mean(x, axis=(0, 1))
    return (x - means) * float(c) + means


def _apply_saturate(
    x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str
) -> torch.Tensor:
    # rgb2hsv → S' = clip(S·a + b) → hsv2rgb in closed form: every channel keeps its
    # distance ratio to the max, ch' = V − (V − ch)·S'/S. Grey pixels (S = 0, hue 0)
    # come back as (V, V(1−S'), V(1−S')), the reference's red tint.
    a, b = float(param[0]), float(param[1])
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    grey = delta <= 0
    s = torch.where(grey, torch.zeros_like(v), delta / torch.where(v > 0, v, torch.ones_like(v)))
    s_new = (s * a + b).clamp(0, 1)
    ratio = s_new / torch.where(grey, torch.ones_like(s), s)
    coloured = v - (v - x) * ratio
    tint = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(grey, tint, coloured)


def _jpeg_one(bgr: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of one uint8 H×W×3 BGR image.

    libjpeg-turbo through OpenCV with Pillow's settings (standard tables scaled by
    quality, 4:2:0, islow DCT): the decoded pixels equal Pillow's save/open round trip,
    the reference's (checked by the tests), at less per-image overhead.
    """
    import cv2

    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    assert out is not None, "OpenCV failed to encode/decode a JPEG"
    return np.asarray(out)


def _jpeg_planes(rgb: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of uint8 RGB planes (3, H, W) → (3, H, W); OpenCV's SIMD merge/split reorder."""
    import cv2

    b, g, r = cv2.split(_jpeg_one(cv2.merge((rgb[2], rgb[1], rgb[0])), quality))
    return np.stack((r, g, b))


def _apply_jpeg(x: torch.Tensor, d: Draws, quality: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    # libjpeg has no GPU twin that encodes bit-identically: both backends encode on the CPU,
    # threads over the batch (OpenCV releases the GIL).
    planes = kcpu.quantize_u8(_np(x))
    pixels = int(planes.shape[-2]) * int(planes.shape[-1])
    out = np.stack(map_threads(lambda im: _jpeg_planes(im, int(quality)), list(planes), pixels))
    return torch.from_numpy(kcpu.dequantize_u8(out, False)).to(x.device, x.dtype)


PIL_PRECISION_BITS = 22  # Pillow's 8-bit resampling: 32 - 8 - 2


@functools.lru_cache(maxsize=128)
def pil_coeffs(in_size: int, out_size: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's resampling taps along one axis: (first input, tap count, 22-bit fixed-point weights).

    ``box`` follows Pillow's ``precompute_coeffs`` with its box filter (support ½,
    widened by the scale when shrinking; taps ``[xmin, xmax)``, normalised, then
    ``int(0.5 + k·2²²)``). ``nearest`` copies input ⌊(o + ½)·in/out⌋.
    """
    one = 1 << PIL_PRECISION_BITS
    if kind == "nearest":
        src = np.floor((np.arange(out_size) + 0.5) * (in_size / out_size)).astype(np.int64)
        lo = np.minimum(src, in_size - 1)
        return lo, np.ones(out_size, dtype=np.int64), np.full((out_size, 1), one, dtype=np.int64)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    ksize = math.ceil(support) * 2 + 1
    lo = np.zeros(out_size, dtype=np.int64)
    count = np.zeros(out_size, dtype=np.int64)
    kk = np.zeros((out_size, ksize), dtype=np.int64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = [(x + xmin - center + 0.5) * (1.0 / filterscale) for x in range(xmax)]
        k = np.array([1.0 if -0.5 < t <= 0.5 else 0.0 for t in taps])
        total = k.sum()
        if total != 0.0:
            k = k / total
        lo[o], count[o] = xmin, xmax
        kk[o, :xmax] = (0.5 + k * one).astype(np.int64)
    for a in (lo, count, kk):
        a.setflags(write=False)
    return lo, count, kk


@functools.lru_cache(maxsize=128)
def pil_taps(in_size: int, out_size: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pil_coeffs` as (source index, weight) arrays padded to one tap count, int32 (numba kernel)."""
    lo, count, kk = pil_coeffs(in_size, out_size, kind)
    k = np.arange(kk.shape[1])
    idx = np.minimum(lo[:, None] + k[None, :], in_size - 1).astype(np.int32)
    w = np.where(k[None, :] < count[:, None], kk, 0).astype(np.int32)
    idx.setflags(write=False)
    w.setflags(write=False)
    return idx, w


def pil_matrix(in_size: int, out_size: int, kind: str) -> np.ndarray:
    """The fixed-point taps of :func:`pil_coeffs` as a dense float64 matrix (out × in), exact in float64."""
    lo, count, kk = pil_coeffs(in_size, out_size, kind)
    m = np.zeros((out_size, in_size))
    for o in range(out_size):
        m[o, lo[o] : lo[o] + count[o]] = kk[o, : count[o]] / float(1 << PIL_PRECISION_BITS)
    return m


def _round_u8(v: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8`` on a pass's sum (0-255 scale): add half, floor, clip."""
    return torch.floor(v + 0.5).clamp(0, 255)


def _apply_pixelate(x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    # Pillow shrinks with BOX, then enlarges with NEAREST (ImageNet-C) or BOX (CIFAR-10-C),
    # each resize horizontal-then-vertical with uint8 rounding after every pass. Both
    # backends replay that integer arithmetic, so the output is Pillow's, bit for bit.
    n, ch, h, w = x.shape
    c = float(c)
    sh, sw = int(h * c), int(w * c)
    up = "box" if opts.get("upsample") == "box" else "nearest"
    steps = ((w, sw, "box", h, sh, "box"), (sw, w, up, sh, h, up))
    if backend != "torch":
        img = kcpu.quantize_u8(_np(x).reshape(n * ch, h, w))
        for in_w, out_w, kind_w, in_h, out_h, kind_h in steps:
            if kind_w == kind_h == "nearest":  # one tap of weight 1: a gather
                rows, cols = pil_coeffs(in_h, out_h, "nearest")[0], pil_coeffs(in_w, out_w, "nearest")[0]
                img = kcpu.gather_u8(img, rows, cols)
            else:
                img = kcpu.pil_resample_u8(
                    img, *pil_taps(in_w, out_w, kind_w), *pil_taps(in_h, out_h, kind_h)
                )
        return torch.from_numpy(kcpu.dequantize_u8(img.reshape(n, ch, h, w), False)).to(x.device, x.dtype)
    out = torch.floor(x.to(torch.float64).clamp(0, 1) * 255 + 0.5)
    for in_w, out_w, kind_w, in_h, out_h, kind_h in steps:
        mw = torch.tensor(pil_matrix(in_w, out_w, kind_w), device=x.device)
        mh = torch.tensor(pil_matrix(in_h, out_h, kind_h), device=x.device)
        out = _round_u8(mh @ _round_u8(out @ mw.T))
    return (out / 255).to(x.dtype)


def _draw_elastic(rng: SampleRNG, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    _, h, w = shape
    out: Draws = {}
    if opts.get("variant") == "affine":
        out["affine"] = rng.numpy.random((3, 2))
    out["ux"] = rng.numpy.random((h, w))
    out["uy"] = rng.numpy.random((h, w))
    return out


def _affine_matrices(u: np.ndarray, h: int, w: int, jitter: float) -> np.ndarray:
    """Hendrycks' random affine: three points around the centre, each moved by U(−jitter, jitter)."""
    import cv2

    center = np.array((h, w), dtype=np.float32) // 2
    square = min(h, w) // 3
    pts1 = np.array(
        [center + square, [center[0] + square, center[1] - square], center - square], dtype=np.float32
    )
    mats = []
    for i in range(u.shape[0]):
        moved = pts1 + (-jitter + (jitter - (-jitter)) * u[i]).astype(np.float32)
        mats.append(cv2.getAffineTransform(pts1, moved))
    return np.stack(mats)


def _warp_affine(x: torch.Tensor, mats: np.ndarray, backend: str) -> torch.Tensor:
    import cv2

    n, c, h, w = x.shape
    if backend != "torch":
        arr = _np(x)
        out = np.empty_like(arr)
        for i in range(n):
            for ch in range(c):
                out[i, ch] = cv2.warpAffine(arr[i, ch], mats[i], (w, h), borderMode=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out).to(x.device)
    # Exact bilinear sampling at the inverse-mapped point (OpenCV rounds it to 1/32 pixel).
    inv = np.stack([cv2.invertAffineTransform(m) for m in mats])
    inv_t = torch.from_numpy(inv).to(x.device, torch.float64)
    ys = torch.arange(h, device=x.device, dtype=torch.float64).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=torch.float64).view(1, 1, w)
    sx = inv_t[:, 0, 0].view(n, 1, 1) * xs + inv_t[:, 0, 1].view(n, 1, 1) * ys + inv_t[:, 0, 2].view(n, 1, 1)
    sy = inv_t[:, 1, 0].view(n, 1, 1) * xs + inv_t[:, 1, 1].view(n, 1, 1) * ys + inv_t[:, 1, 2].view(n, 1, 1)
    fy, fx = torch.floor(sy), torch.floor(sx)
    ty, tx = (sy - fy).unsqueeze(1), (sx - fx).unsqueeze(1)
    fy_i, fx_i = fy.to(torch.int64), fx.to(torch.int64)
    flat = x.to(torch.float64).reshape(n, c, h * w)

    def at(dy: int, dx: int) -> torch.Tensor:
        yi = ktorch.border_index(fy_i + dy, h, ktorch.MIRROR)
        xi = ktorch.border_index(fx_i + dx, w, ktorch.MIRROR)
        idx = (yi * w + xi).reshape(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, idx).reshape(n, c, h, w)

    top = at(0, 0) * (1 - tx) + at(0, 1) * tx
    bot = at(1, 0) * (1 - tx) + at(1, 1) * tx
    return (top * (1 - ty) + bot * ty).to(x.dtype)


def _apply_elastic(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    ux = torch.from_numpy(np.ascontiguousarray(d["ux"], dtype=np.float64))
    uy = torch.from_numpy(np.ascontiguousarray(d["uy"], dtype=np.float64))
    if opts.get("variant") == "affine":
        side = min(h, w)
        alpha, sigma, jitter = (float(p) * side for p in param)
        x = _warp_affine(
            x, _affine_matrices(np.asarray(d["affine"], dtype=np.float64), h, w, jitter), backend
        )
        max_d, sig = 1.0, (sigma, sigma)
    else:
        alpha = float(param)
        max_d, sig = h * 0.005, (h * 0.01, w * 0.01)
    fields = torch.stack([-max_d + (max_d - (-max_d)) * ux, -max_d + (max_d - (-max_d)) * uy], dim=1)
    fields = (blur_planes(fields.to(x.device), sig, kcpu.REFLECT, 3.0, backend) * alpha).to(torch.float32)
    dx, dy = fields[:, 0], fields[:, 1]
    if backend == "torch":
        return ktorch.remap_bilinear_reflect(x, dy, dx)
    return torch.from_numpy(kcpu.remap_bilinear_reflect(_np(x), _np(dy), _np(dx))).to(x.device)


OPS: dict[str, Op] = {
    "gaussian_noise": Op(_apply_gaussian_noise, _draw_normal_hwc),
    "shot_noise": Op(_apply_shot_noise, _draw_shot),
    "impulse_noise": Op(_apply_impulse_noise, _draw_impulse),
    "speckle_noise": Op(_apply_speckle_noise, _draw_normal_hwc),
    "gaussian_blur": Op(_apply_gaussian_blur),
    "glass_blur": Op(_apply_glass_blur, _draw_glass),
    "defocus_blur": Op(_apply_defocus_blur),
    "motion_blur": Op(_apply_motion_blur, _draw_uniform_scalar),
    "zoom_blur": Op(_apply_zoom_blur),
    "snow": Op(_apply_snow, _draw_snow, colour=True),
    "frost": Op(_apply_frost, _draw_frost, colour=True),
    "fog": Op(_apply_fog, _draw_fog),
    "spatter": Op(_apply_spatter, _draw_spatter, colour=True),
    "brightness": Op(_apply_brightness),
    "contrast": Op(_apply_contrast),
    "saturate": Op(_apply_saturate, colour=True),
    "jpeg_compression": Op(_apply_jpeg, colour=True),
    "pixelate": Op(_apply_pixelate),
    "elastic_transform": Op(_apply_elastic, _draw_elastic),
}
