"""Batched torch twins of :mod:`kernels.corruptions_cpu`, for CUDA (and testable on CPU).

Same inputs, same draws, same arithmetic up to floating-point order: the tests in
``tests/test_kernels_corruptions.py`` hold each pair to agreement.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

NEAREST = 0
REFLECT = 1
MIRROR = 2


def border_index(idx: torch.Tensor, n: int, mode: int) -> torch.Tensor:
    """Map integer indices, possibly outside [0, n), back inside by ``mode`` (see ``corruptions_cpu``)."""
    if n == 1:
        return torch.zeros_like(idx)
    if mode == NEAREST:
        return idx.clamp(0, n - 1)
    if mode == REFLECT:
        period = 2 * n
        i = torch.remainder(idx, period)
        return torch.where(i < n, i, period - 1 - i)
    period = 2 * n - 2
    i = torch.remainder(idx, period)
    return torch.where(i < n, i, period - i)


def separable_filter(planes: torch.Tensor, wy: np.ndarray, wx: np.ndarray, mode: int) -> torch.Tensor:
    """Correlate each (H, W) plane of ``planes`` (..., H, W) with ``wy`` (rows) then ``wx`` (columns)."""
    shape = planes.shape
    h, w = shape[-2:]
    x = planes.reshape(-1, 1, h, w)
    dev, dt = x.device, x.dtype
    ry, rx = (len(wy) - 1) // 2, (len(wx) - 1) // 2
    rows = border_index(torch.arange(-ry, h + ry, device=dev), h, mode)
    x = F.conv2d(x.index_select(2, rows), torch.as_tensor(wy, dtype=dt, device=dev).view(1, 1, -1, 1))
    cols = border_index(torch.arange(-rx, w + rx, device=dev), w, mode)
    x = F.conv2d(x.index_select(3, cols), torch.as_tensor(wx, dtype=dt, device=dev).view(1, 1, 1, -1))
    return x.reshape(shape)


def glass_shuffle(img: torch.Tensor, draws: torch.Tensor, delta: int) -> torch.Tensor:
    """The reference's sequential pixel copy (see ``corruptions_cpu.glass_shuffle``), without the loop.

    Pixel p is visited once and takes the value its source s = p + (dy, dx) holds at
    that moment: s's *final* value if s was visited earlier, else s's value before
    this iteration. Those "visited earlier" links form chains that strictly go back
    in visiting order, so pointer jumping resolves every chain in O(log HW) gathers.
    """
    n, c, h, w = img.shape
    dev = img.device
    rh, rw = h - 2 * delta, w - 2 * delta
    hw = h * w
    hh = (h - delta - torch.arange(rh, device=dev)).view(rh, 1)
    ww = (w - delta - torch.arange(rw, device=dev)).view(1, rw)
    dst = (hh * w + ww).reshape(-1)  # flat pixel of each visit, in visiting order
    order = torch.full((hw,), -1, dtype=torch.int64, device=dev)
    order[dst] = torch.arange(rh * rw, device=dev)
    out = img.reshape(n, c, hw)
    draws = draws.to(dev, torch.int64)
    for it in range(draws.shape[1]):
        d = draws[:, it].reshape(n, rh * rw, 2)
        src = dst.view(1, -1) + d[..., 1] * w + d[..., 0]
        src_order = order[src]
        # term[p]: pixel whose pre-iteration value p ends with; nxt[p]: pixel p copies from, while active
        term = torch.arange(hw, device=dev).repeat(n, 1)
        nxt = term.clone()
        active = torch.zeros((n, hw), dtype=torch.bool, device=dev)
        linked = (src_order >= 0) & (src_order < torch.arange(rh * rw, device=dev).view(1, -1))
        term[:, dst] = src
        nxt[:, dst] = src
        active[:, dst] = linked
        for _ in range(math.ceil(math.log2(max(hw, 2))) + 2):
            if not bool(active.any()):
                break
            q = nxt
            q_active = active.gather(1, q)
            term = torch.where(active & ~q_active, term.gather(1, q), term)
            nxt = torch.where(active & q_active, nxt.gather(1, q), nxt)
            active = active & q_active
        out = out.gather(2, term.unsqueeze(1).expand(n, c, hw))
    return out.reshape(n, c, h, w)


def shift_blend(
    planes: torch.Tensor, dxs: torch.Tensor, dys: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """Σ_k weights[n, k] · shift(planes[n], dxs[n, k], dys[n, k]) over the first counts[n] taps, float64."""
    n, c, h, w = planes.shape
    dev = planes.device
    x = planes.to(torch.float64)
    out = torch.zeros((n, c, h, w), dtype=torch.float64, device=dev)
    ys = torch.arange(h, device=dev).view(1, h)
    xs = torch.arange(w, device=dev).view(1, w)
    dxs, dys = dxs.to(dev, torch.int64), dys.to(dev, torch.int64)
    weights, counts = weights.to(dev, torch.float64), counts.to(dev, torch.int64)
    for k in range(int(counts.max().item()) if n else 0):
        rows = (ys - dys[:, k : k + 1]).clamp(0, h - 1)
        cols = (xs - dxs[:, k : k + 1]).clamp(0, w - 1)
        shifted = x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
        shifted = shifted.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
        wk = torch.where(counts > k, weights[:, k], torch.zeros_like(weights[:, k]))
        out += wk.view(n, 1, 1, 1) * shifted
    return out


def zoom_sum(
    planes: torch.Tensor,
    r0: np.ndarray,
    rt: np.ndarray,
    c0: np.ndarray,
    ct: np.ndarray,
    rmax: np.ndarray,
    cmax: np.ndarray,
) -> torch.Tensor:
    """Σ over zoom factors of bilinear resamples (tables from ``corruptions_cpu.zoom_tables``)."""
    dev, dt = planes.device, planes.dtype
    x = planes.to(torch.float64)
    out = planes.new_zeros((*planes.shape[:-2], r0.shape[1], c0.shape[1]))
    for f in range(r0.shape[0]):
        ya = torch.tensor(r0[f], device=dev)
        yb = torch.as_tensor(np.minimum(r0[f] + 1, rmax[f]), device=dev)
        xa = torch.tensor(c0[f], device=dev)
        xb = torch.as_tensor(np.minimum(c0[f] + 1, cmax[f]), device=dev)
        ty = torch.tensor(rt[f], device=dev).view(-1, 1)
        tx = torch.tensor(ct[f], device=dev).view(1, -1)
        top = x.index_select(-2, ya)
        bot = x.index_select(-2, yb)
        top = top.index_select(-1, xa) * (1.0 - tx) + top.index_select(-1, xb) * tx
        bot = bot.index_select(-1, xa) * (1.0 - tx) + bot.index_select(-1, xb) * tx
        out += (top * (1.0 - ty) + bot * ty).to(dt)
    return out


def plasma_fractal(uniforms: torch.Tensor, mapsize: int, wibbledecay: float) -> torch.Tensor:
    """Batched diamond-square height maps from U[0, 1) draws (N, mapsize² - 1); float64 (N, S, S)."""
    nb = uniforms.shape[0]
    u = uniforms.to(torch.float64)
    m = torch.zeros((nb, mapsize, mapsize), dtype=torch.float64, device=u.device)
    step, wibble, pos = mapsize, 100.0, 0

    def take(k: int) -> torch.Tensor:
        nonlocal pos
        v = u[:, pos : pos + k * k].reshape(nb, k, k)
        pos += k * k
        return -wibble + (wibble - (-wibble)) * v

    while step >= 2:
        half, k = step // 2, mapsize // step
        corner = m[:, 0:mapsize:step, 0:mapsize:step]
        acc = corner + torch.roll(corner, -1, dims=1)
        acc = acc + torch.roll(acc, -1, dims=2)
        m[:, half:mapsize:step, half:mapsize:step] = acc / 4 + wibble * take(k)
        dr = m[:, half:mapsize:step, half:mapsize:step].clone()
        ul = m[:, 0:mapsize:step, 0:mapsize:step].clone()
        lt = (dr + torch.roll(dr, 1, dims=1)) + (ul + torch.roll(ul, -1, dims=2))
        m[:, 0:mapsize:step, half:mapsize:step] = lt / 4 + wibble * take(k)
        tt = (dr + torch.roll(dr, 1, dims=2)) + (ul + torch.roll(ul, -1, dims=1))
        m[:, half:mapsize:step, 0:mapsize:step] = tt / 4 + wibble * take(k)
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def remap_bilinear_reflect(img: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling at (y + dy, x + dx) with half-sample-symmetric borders (scipy ``mode='reflect'``)."""
    n, c, h, w = img.shape
    dev = img.device
    cy = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1) + dy.to(dev, torch.float64)
    cx = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w) + dx.to(dev, torch.float64)
    fy, fx = torch.floor(cy), torch.floor(cx)
    ty, tx = (cy - fy).unsqueeze(1), (cx - fx).unsqueeze(1)
    fy, fx = fy.to(torch.int64), fx.to(torch.int64)
    y0, y1 = border_index(fy, h, REFLECT), border_index(fy + 1, h, REFLECT)
    x0, x1 = border_index(fx, w, REFLECT), border_index(fx + 1, w, REFLECT)
    flat = img.to(torch.float64).reshape(n, c, h * w)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        idx = (yi * w + xi).reshape(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, idx).reshape(n, c, h, w)

    top = at(y0, x0) * (1.0 - tx) + at(y0, x1) * tx
    bot = at(y1, x0) * (1.0 - tx) + at(y1, x1) * tx
    return (top * (1.0 - ty) + bot * ty).to(img.dtype)
