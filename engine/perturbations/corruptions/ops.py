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
from io import BytesIO
from typing import Any

import numpy as np
import torch

from engine.perturbations.corruptions import textures
from kernels import corruptions_cpu as kcpu
from kernels import corruptions_torch as ktorch

Draws = dict[str, np.ndarray]
Shape = tuple[int, int, int]
DrawFn = Callable[[np.random.Generator, Shape, Any, dict[str, Any], "np.ndarray | None"], Draws]
ApplyFn = Callable[[torch.Tensor, dict[str, np.ndarray], Any, dict[str, Any], str], torch.Tensor]

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as cv2.COLOR_RGB2GRAY and PIL's convert("L")


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


def map_threads(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[fn(i) for i in items]`` on as many threads as numba may use (the callees release the GIL)."""
    import numba

    workers = max(1, min(len(items), numba.get_num_threads()))
    if workers == 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _t(draws: dict[str, np.ndarray], key: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(draws[key])).to(like.device, dtype or like.dtype)


def _hwc(t: torch.Tensor) -> torch.Tensor:
    """Draws stored H×W×C per sample (the reference's layout) → N×C×H×W."""
    return t.permute(0, 3, 1, 2)


def to_luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------- noise


def _draw_normal_hwc(rng: np.random.Generator, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    c, h, w = shape
    return {"z": rng.standard_normal((h, w, c), dtype=np.float32)}


def _apply_gaussian_noise(x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    return x + _hwc(_t(d, "z", x)) * float(c)


def _apply_speckle_noise(x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    return x + x * (_hwc(_t(d, "z", x)) * float(c))


def _draw_shot(rng: np.random.Generator, shape: Shape, c: Any, opts: dict[str, Any], x: np.ndarray | None) -> Draws:
    assert x is not None, "shot noise draws Poisson counts of the image itself"
    lam = np.transpose(x, (1, 2, 0)).astype(np.float64) * float(c)
    return {"counts": rng.poisson(lam).astype(np.float32)}


def _apply_shot_noise(x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    return _hwc(_t(d, "counts", x)) / float(c)


def _draw_impulse(rng: np.random.Generator, shape: Shape, p: Any, opts: dict[str, Any], x: Any) -> Draws:
    # skimage.util.random_noise(mode='s&p'): flip where U1 ≤ amount, salt where U2 ≤ 0.5
    c, h, w = shape
    return {"flip": rng.random((h, w, c)), "salt": rng.random((h, w, c))}


def _apply_impulse_noise(x: torch.Tensor, d: Draws, p: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    flip = _hwc(torch.from_numpy(np.ascontiguousarray(d["flip"]) <= float(p)).to(x.device))
    salt = _hwc(torch.from_numpy(np.ascontiguousarray(d["salt"]) <= 0.5).to(x.device))
    return torch.where(flip, salt.to(x.dtype), x)


# ---------------------------------------------------------------------------------------------- blur


def _apply_gaussian_blur(x: torch.Tensor, d: Draws, sigma: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    return blur_planes(x, float(sigma), kcpu.NEAREST, 4.0, backend)


def _draw_glass(rng: np.random.Generator, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    _, h, w = shape
    _, delta, iters = param
    delta = int(delta)
    return {"shifts": rng.integers(-delta, delta, size=(int(iters), h - 2 * delta, w - 2 * delta, 2))}


def _apply_glass_blur(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    sigma, delta = float(param[0]), int(param[1])
    # First blur in float64 so the truncation to uint8 (np.uint8(...·255)) lands where the reference's does.
    blurred = blur_planes(x.to(torch.float64), sigma, kcpu.NEAREST, 4.0, backend)
    img = torch.floor((blurred * 255).clamp_(0, 255)).to(torch.uint8)
    shifts = np.ascontiguousarray(d["shifts"])
    if backend == "torch":
        img = ktorch.glass_shuffle(img, torch.from_numpy(shifts), delta)
    else:
        img = torch.from_numpy(kcpu.glass_shuffle(_np(img), shifts, delta)).to(x.device)
    return blur_planes(img.to(x.dtype) / 255.0, sigma, kcpu.NEAREST, 4.0, backend)


@functools.lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk, with its all-zero border trimmed (same result, fewer taps)."""
    import cv2

    if radius <= 8:
        span, ksize = np.arange(-8, 8 + 1), (3, 3)
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


def _apply_defocus_blur(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
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
    import cv2  # cv2.filter2D (BORDER_REFLECT_101) is the reference's own call; it switches to DFT for big kernels

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
    weights = np.ascontiguousarray(np.broadcast_to(k, dy.shape))
    return dx, dy, weights, counts


def motion_blur_planes(planes: torch.Tensor, angles: np.ndarray, radius: int, sigma: float, backend: str) -> torch.Tensor:
    """The reference's shift-and-add motion blur of (N, C, H, W) planes, one angle per image; float64."""
    _, _, h, w = planes.shape
    dx, dy, weights, counts = motion_taps(angles, int(radius), float(sigma), h, w)
    if backend == "torch":
        return ktorch.shift_blend(planes, *(torch.from_numpy(a) for a in (dx, dy, weights, counts)))
    return torch.from_numpy(kcpu.shift_blend(_np(planes), dx, dy, weights, counts)).to(planes.device)


def _draw_uniform_scalar(rng: np.random.Generator, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    return {"u": np.asarray(rng.random())}


def _apply_motion_blur(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    angles = -45 + (45 - (-45)) * np.asarray(d["u"], dtype=np.float64)  # np.random.uniform(-45, 45)
    return motion_blur_planes(x, angles, int(param[0]), float(param[1]), backend).to(x.dtype)


@functools.lru_cache(maxsize=64)
def zoom_plan(
    h: int, w: int, factors: tuple[float, ...], center_trim: bool, out_h: int | None = None, out_w: int | None = None
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
    """Sum of the zoomed layers of every (H, W) plane of ``planes`` (..., H, W); output shape from ``plan``."""
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


def _apply_zoom_blur(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    factors = zoom_factors(param)
    h, w = x.shape[-2:]
    plan = zoom_plan(h, w, factors, bool(opts.get("center_trim", False)))
    return (x + zoom_planes(x, plan, backend)) / (len(factors) + 1)


# ---------------------------------------------------------------------------------------------- weather


def _draw_snow(rng: np.random.Generator, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    _, h, w = shape
    return {"z": rng.standard_normal((h, w)), "u": np.asarray(rng.random())}


def _apply_snow(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    loc, scale, zoom, threshold, radius, sigma, blend = param
    n, _, h, w = x.shape
    layer = float(loc) + float(scale) * _t(d, "z", x, torch.float64)  # np.random.normal(loc, scale)
    # clipped_zoom keeps the whole zoomed crop here (no trim), and the blur sees that size
    zh = int(round(math.ceil(h / float(zoom)) * float(zoom)))
    zw = int(round(math.ceil(w / float(zoom)) * float(zoom)))
    layer = zoom_planes(layer, zoom_plan(h, w, (float(zoom),), False, zh, zw), backend)
    layer = torch.where(layer < float(threshold), torch.zeros_like(layer), layer).clamp_(0, 1)
    angles = -135 + (-45 - (-135)) * np.asarray(d["u"], dtype=np.float64)
    layer = motion_blur_planes(layer.unsqueeze(1), angles, int(radius), float(sigma), backend)
    layer = (torch.round(layer * 255) / 255.0)[..., :h, :w]
    gray = to_luma(x)
    base = float(blend) * x + (1 - float(blend)) * torch.maximum(x, gray * 1.5 + 0.5)
    return (base.to(torch.float64) + layer + torch.flip(layer, dims=(-2, -1))).to(x.dtype)


def _frost_scale(opts: dict[str, Any]) -> float | None:
    s = opts.get("texture_scale")
    return None if s is None else float(s)


def _draw_frost(rng: np.random.Generator, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    _, h, w = shape
    idx = int(rng.integers(textures.N_USED))
    tex = textures.rescaled_texture(idx, h, w, _frost_scale(opts))
    top = int(rng.integers(0, tex.shape[0] - h))
    left = int(rng.integers(0, tex.shape[1] - w))
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


def _draw_fog(rng: np.random.Generator, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    size = _plasma_size(shape[1], shape[2])
    return {"u": rng.random(size * size - 1)}


def _apply_fog(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    strength, decay = float(param[0]), float(param[1])
    n, _, h, w = x.shape
    size = _plasma_size(h, w)
    u = np.ascontiguousarray(d["u"], dtype=np.float64)
    if backend == "torch":
        plasma = ktorch.plasma_fractal(torch.from_numpy(u).to(x.device), size, decay)
    else:
        plasma = torch.from_numpy(kcpu.plasma_fractal(u, size, decay)).to(x.device)
    xd = x.to(torch.float64)
    max_val = xd.amax(dim=(1, 2, 3), keepdim=True)
    out = (xd + strength * plasma[:, None, :h, :w]) * max_val / (max_val + strength)
    return out.to(x.dtype)


def _draw_spatter(rng: np.random.Generator, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    return {"z": rng.standard_normal((shape[1], shape[2]))}


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


def _apply_saturate(x: torch.Tensor, d: Draws, param: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
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


def _jpeg_one(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _apply_jpeg(x: torch.Tensor, d: Draws, quality: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    # libjpeg has no GPU twin that encodes bit-identically: both backends encode on the CPU
    # (Pillow, quality q, as the reference), threads over the batch (Pillow releases the GIL).
    imgs = _np(torch.floor(x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1))
    out = map_threads(lambda im: _jpeg_one(im, int(quality)), list(imgs))
    arr = np.stack(out).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(x.device, x.dtype)


def pil_box_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's BOX resampling matrix (out_size × in_size): its ``precompute_coeffs`` with a box filter."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = np.zeros((out_size, in_size))
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        for i in range(lo, hi):
            t = (i - center + 0.5) / filterscale
            weights[o, i] = 1.0 if -0.5 < t <= 0.5 else 0.0
        total = weights[o].sum()
        if total:
            weights[o] /= total
    return weights


def pil_nearest_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's NEAREST resize as a 0/1 matrix: output o copies input ⌊(o + ½)·in/out⌋."""
    src = np.floor((np.arange(out_size) + 0.5) * (in_size / out_size)).astype(np.int64)
    m = np.zeros((out_size, in_size))
    m[np.arange(out_size), np.minimum(src, in_size - 1)] = 1.0
    return m


@functools.lru_cache(maxsize=64)
def pixelate_matrices(h: int, w: int, c: float, upsample: str) -> tuple[np.ndarray, ...]:
    """(down rows, down cols, up rows, up cols) resize matrices; a pass is ``R · img`` or ``img · Cᵀ``."""
    sh, sw = int(h * c), int(w * c)
    up = pil_box_weights if upsample == "box" else pil_nearest_matrix
    mats = (pil_box_weights(h, sh), pil_box_weights(w, sw), up(sh, h), up(sw, w))
    for m in mats:
        m.setflags(write=False)
    return mats


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit result of a resampling pass (values on the 0-255 scale): round half up."""
    return torch.floor(x.clamp(0, 255) + 0.5)


def _pixelate_one(img: np.ndarray, c: float, upsample: str) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    pil = pil.resize((int(w * c), int(h * c)), Image.Resampling.BOX)
    up = Image.Resampling.BOX if upsample == "box" else Image.Resampling.NEAREST
    return np.asarray(pil.resize((w, h), up)).reshape(h, w, -1)


def _pixelate_pil(x: torch.Tensor, c: float, upsample: str) -> torch.Tensor:
    """CPU path: Pillow itself on the uint8 image (the reference's call), threaded over the batch."""
    imgs = _np(torch.floor(x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1))
    out = map_threads(lambda im: _pixelate_one(im, c, upsample), list(imgs))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0


def _apply_pixelate(x: torch.Tensor, d: Draws, c: Any, opts: dict[str, Any], backend: str) -> torch.Tensor:
    # Pillow resizes horizontally, rounds to uint8, then vertically and rounds again;
    # we apply the same weights in float64 and the same rounding after every pass, so
    # the output sits on the 1/255 grid like the reference's uint8 image.
    h, w = x.shape[-2:]
    upsample = str(opts.get("upsample", "nearest"))
    if backend != "torch":
        return _pixelate_pil(x, float(c), upsample)
    mats = pixelate_matrices(h, w, float(c), upsample)
    down_r, down_c, up_r, up_c = (torch.tensor(m, device=x.device, dtype=torch.float64) for m in mats)
    out = _quantize(x.to(torch.float64) * 255)  # integer-valued, so ties round like Pillow's
    out = _quantize(down_r @ _quantize(out @ down_c.T))
    out = _quantize(up_r @ _quantize(out @ up_c.T))
    return (out / 255).to(x.dtype)


def _draw_elastic(rng: np.random.Generator, shape: Shape, param: Any, opts: dict[str, Any], x: Any) -> Draws:
    _, h, w = shape
    out: Draws = {}
    if opts.get("variant") == "affine":
        out["affine"] = rng.random((3, 2))
    out["ux"] = rng.random((h, w))
    out["uy"] = rng.random((h, w))
    return out


def _affine_matrices(u: np.ndarray, h: int, w: int, jitter: float) -> np.ndarray:
    """Hendrycks' random affine: three points around the centre, each moved by U(−jitter, jitter)."""
    import cv2

    center = np.float32((h, w)) // 2
    square = min(h, w) // 3
    pts1 = np.float32(
        [center + square, [center[0] + square, center[1] - square], center - square]
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
    n, _, h, w = x.shape
    ux = torch.from_numpy(np.ascontiguousarray(d["ux"], dtype=np.float64))
    uy = torch.from_numpy(np.ascontiguousarray(d["uy"], dtype=np.float64))
    if opts.get("variant") == "affine":
        side = min(h, w)
        alpha, sigma, jitter = (float(p) * side for p in param)
        x = _warp_affine(x, _affine_matrices(np.asarray(d["affine"], dtype=np.float64), h, w, jitter), backend)
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
