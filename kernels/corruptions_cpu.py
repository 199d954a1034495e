"""Numba CPU kernels for the hot loops of the ImageNet-C corruptions, batched over NCHW arrays.

Each kernel reproduces one step of the reference (``imagecorruptions`` 1.1.2) with
its random draws passed in; the corruption module composes them. Batches are
parallel over images (or image planes) with ``prange``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

import kernels  # noqa: F401  (sets NUMBA_CACHE_DIR before numba compiles anything)

# Border modes, named after scipy.ndimage: NEAREST repeats the edge pixel,
# REFLECT is half-sample symmetric (d c b a | a b c d), MIRROR is whole-sample
# symmetric (d c b | a b c d), which OpenCV calls BORDER_REFLECT_101.
NEAREST = 0
REFLECT = 1
MIRROR = 2


@njit(cache=True, inline="always")
def _border(i: int, n: int, mode: int) -> int:
    if 0 <= i < n:
        return i
    if n == 1:
        return 0
    if mode == NEAREST:
        return 0 if i < 0 else n - 1
    if mode == REFLECT:
        period = 2 * n
        i = i % period
        return i if i < n else period - 1 - i
    period = 2 * n - 2
    i = i % period
    return i if i < n else period - i


@njit(cache=True, inline="always")
def _filter_plane(src, dst, wy, wx, mode, tmp, row):  # type: ignore[no-untyped-def]
    h, w = src.shape
    ry = (wy.shape[0] - 1) // 2
    rx = (wx.shape[0] - 1) // 2
    # Axis 0 first (scipy.ndimage order), accumulating whole rows so the inner loop vectorises.
    for y in range(h):
        for x in range(w):
            tmp[y, x] = 0.0
        for k in range(wy.shape[0]):
            sy = _border(y + k - ry, h, mode)
            wk = wy[k]
            for x in range(w):
                tmp[y, x] += wk * src[sy, x]
    for y in range(h):
        for x in range(w + 2 * rx):
            row[x] = tmp[y, _border(x - rx, w, mode)]
        for x in range(w):
            dst[y, x] = 0.0
        for k in range(wx.shape[0]):
            wk = wx[k]
            for x in range(w):
                dst[y, x] += wk * row[x + k]


@njit(cache=True, parallel=True)
def separable_filter(planes, wy, wx, mode):  # type: ignore[no-untyped-def]
    """Correlate each (H, W) plane of ``planes`` (P, H, W) with ``wy`` along rows then ``wx`` along columns.

    Same arithmetic as ``scipy.ndimage.correlate1d`` applied axis by axis (what
    ``skimage.filters.gaussian`` calls), in the dtype of ``planes``.
    """
    p, h, w = planes.shape
    out = np.empty_like(planes)
    rx = (wx.shape[0] - 1) // 2
    for i in prange(p):
        tmp = np.empty((h, w), dtype=planes.dtype)
        row = np.empty(w + 2 * rx, dtype=planes.dtype)
        _filter_plane(planes[i], out[i], wy, wx, mode, tmp, row)
    return out


@njit(cache=True, parallel=True)
def glass_shuffle(img, draws, delta):  # type: ignore[no-untyped-def]
    """ImageNet-C's local pixel shuffle on uint8 images (N, C, H, W), in place.

    ``draws[n, it, i, j] = (dx, dy)`` is the pair drawn for pixel
    ``(h, w) = (H - delta - i, W - delta - j)`` in iteration ``it``, visited in the
    reference's order (rows and columns descending). The reference writes
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on NumPy views: the right side is
    two views, the first assignment overwrites ``x[h, w]``, so the second writes
    ``x[h', w']`` back onto itself. The net effect is a *copy* ``x[h, w] = x[h', w']``,
    reading pixels that earlier steps already overwrote; we reproduce that.
    """
    n, c, h, w = img.shape
    iters = draws.shape[1]
    for b in prange(n):
        for it in range(iters):
            for i in range(h - 2 * delta):
                hh = h - delta - i
                for j in range(w - 2 * delta):
                    ww = w - delta - j
                    hp = hh + draws[b, it, i, j, 1]
                    wp = ww + draws[b, it, i, j, 0]
                    for ch in range(c):
                        img[b, ch, hh, ww] = img[b, ch, hp, wp]
    return img


@njit(cache=True, parallel=True)
def shift_blend(planes, dxs, dys, weights, counts):  # type: ignore[no-untyped-def]
    """Σ_k weights[n, k] · shift(planes[n], dxs[n, k], dys[n, k]) over the first counts[n] taps.

    ``planes`` is (N, C, H, W); ``shift`` is the reference's roll-and-replicate
    shift, i.e. ``out[y, x] = in[clip(y - dy), clip(x - dx)]``. Accumulates in float64
    like the reference (float32 zeros + float64 kernel · image) and returns float64.
    """
    n, c, h, w = planes.shape
    out = np.zeros((n, c, h, w), dtype=np.float64)
    for b in prange(n):
        for k in range(counts[b]):
            dx = dxs[b, k]
            dy = dys[b, k]
            wk = weights[b, k]
            for ch in range(c):
                for y in range(h):
                    sy = min(max(y - dy, 0), h - 1)
                    for x in range(w):
                        sx = min(max(x - dx, 0), w - 1)
                        out[b, ch, y, x] += wk * planes[b, ch, sy, sx]
    return out


@njit(cache=True, parallel=True)
def zoom_sum(planes, r0, rt, c0, ct, rmax, cmax):  # type: ignore[no-untyped-def]
    """Σ over zoom factors f of the bilinear resample ``planes[.., r0[f, y] + rt[f, y], c0[f, x] + ct[f, x]]``.

    The index/weight tables come from :func:`zoom_tables` and fix the output size
    (P, r0.shape[1], c0.shape[1]); each layer is cast to the
    planes' dtype before it is added, as ``scipy.ndimage.zoom`` returns the input dtype.
    ``rmax[f]``/``cmax[f]`` are the last valid row/column of factor f's crop.
    """
    p = planes.shape[0]
    nf, h = r0.shape
    w = c0.shape[1]
    out = np.zeros((p, h, w), dtype=planes.dtype)
    for i in prange(p):
        for f in range(nf):
            for y in range(h):
                ya = r0[f, y]
                yb = min(ya + 1, rmax[f])
                ty = rt[f, y]
                for x in range(w):
                    xa = c0[f, x]
                    xb = min(xa + 1, cmax[f])
                    tx = ct[f, x]
                    top = planes[i, ya, xa] * (1.0 - tx) + planes[i, ya, xb] * tx
                    bot = planes[i, yb, xa] * (1.0 - tx) + planes[i, yb, xb] * tx
                    out[i, y, x] += planes.dtype.type(top * (1.0 - ty) + bot * ty)
    return out


def zoom_tables(
    size: int, factor: float, out_len: int, center_trim: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Bilinear source index and weight, along one axis, for the reference's ``clipped_zoom``.

    The reference crops the central ``ceil(size / factor)`` pixels, resizes them with
    ``scipy.ndimage.zoom(order=1)`` (output length ``round(crop · factor)``, source
    coordinate ``o · (crop - 1) / (out - 1)``), and keeps the first ``out_len`` outputs
    (``imagecorruptions``) or the central ones (Hendrycks' CIFAR code).
    Returns (first source index, weight of the next, last valid source index).
    """
    crop = int(np.ceil(size / float(factor)))
    top = (size - crop) // 2
    zoomed = int(round(crop * factor))
    trim = (zoomed - out_len) // 2 if center_trim else 0
    scale = (crop - 1) / (zoomed - 1) if zoomed > 1 else 0.0
    coord = (np.arange(out_len) + trim) * scale
    first = np.floor(coord).astype(np.int64)
    frac = coord - first
    first = np.minimum(first, crop - 1)
    return first + top, frac, top + crop - 1


@njit(cache=True, parallel=True)
def plasma_fractal(uniforms, mapsize, wibbledecay):  # type: ignore[no-untyped-def]
    """The reference's diamond-square height map, one per row of ``uniforms`` (N, mapsize² - 1).

    ``uniforms`` are U[0, 1) draws in the order the reference consumes
    ``np.random.uniform(-wibble, wibble, shape)`` (squares, then the two diamond
    sets, per step); ``-wibble + 2·wibble·u`` is the legacy formula, so injected
    draws give bit-identical maps. Returns (N, mapsize, mapsize) float64 in [0, 1].
    """
    nb = uniforms.shape[0]
    out = np.empty((nb, mapsize, mapsize), dtype=np.float64)
    for b in prange(nb):
        m = out[b]
        m[:, :] = 0.0
        step = mapsize
        wibble = 100.0
        pos = 0
        while step >= 2:
            half = step // 2
            n = mapsize // step
            # squares: corners summed with the next row, then the next column (np.roll(-1))
            acc = np.empty((n, n))
            for i in range(n):
                for j in range(n):
                    acc[i, j] = m[i * step, j * step] + m[((i + 1) % n) * step, j * step]
            acc2 = np.empty((n, n))
            for i in range(n):
                for j in range(n):
                    acc2[i, j] = acc[i, j] + acc[i, (j + 1) % n]
            for i in range(n):
                for j in range(n):
                    u = -wibble + (wibble - (-wibble)) * uniforms[b, pos]
                    pos += 1
                    m[half + i * step, half + j * step] = acc2[i, j] / 4 + wibble * u
            # diamonds: read both grids before writing either set
            dr = np.empty((n, n))
            ul = np.empty((n, n))
            for i in range(n):
                for j in range(n):
                    dr[i, j] = m[half + i * step, half + j * step]
                    ul[i, j] = m[i * step, j * step]
            for i in range(n):
                for j in range(n):
                    lt = (dr[i, j] + dr[(i - 1) % n, j]) + (ul[i, j] + ul[i, (j + 1) % n])
                    u = -wibble + (wibble - (-wibble)) * uniforms[b, pos]
                    pos += 1
                    m[i * step, half + j * step] = lt / 4 + wibble * u
            for i in range(n):
                for j in range(n):
                    tt = (dr[i, j] + dr[i, (j - 1) % n]) + (ul[i, j] + ul[(i + 1) % n, j])
                    u = -wibble + (wibble - (-wibble)) * uniforms[b, pos]
                    pos += 1
                    m[half + i * step, j * step] = tt / 4 + wibble * u
            step //= 2
            wibble /= wibbledecay
        lo = m.min()
        for i in range(mapsize):
            for j in range(mapsize):
                m[i, j] -= lo
        hi = m.max()
        for i in range(mapsize):
            for j in range(mapsize):
                m[i, j] /= hi
    return out


@njit(cache=True, parallel=True)
def remap_bilinear_reflect(img, dy, dx):  # type: ignore[no-untyped-def]
    """``out[n, c, y, x] = img[n, c]`` sampled bilinearly at ``(y + dy[n, y, x], x + dx[n, y, x])``.

    Out-of-range taps reflect half-sample symmetrically: ``scipy.ndimage.map_coordinates``
    with ``order=1, mode='reflect'``, as the reference's elastic transform calls it.
    """
    n, c, h, w = img.shape
    out = np.empty_like(img)
    for b in prange(n):
        for y in range(h):
            for x in range(w):
                cy = y + np.float64(dy[b, y, x])
                cx = x + np.float64(dx[b, y, x])
                fy = math.floor(cy)
                fx = math.floor(cx)
                ty = cy - fy
                tx = cx - fx
                y0 = _border(int(fy), h, REFLECT)
                y1 = _border(int(fy) + 1, h, REFLECT)
                x0 = _border(int(fx), w, REFLECT)
                x1 = _border(int(fx) + 1, w, REFLECT)
                for ch in range(c):
                    top = img[b, ch, y0, x0] * (1.0 - tx) + img[b, ch, y0, x1] * tx
                    bot = img[b, ch, y1, x0] * (1.0 - tx) + img[b, ch, y1, x1] * tx
                    out[b, ch, y, x] = top * (1.0 - ty) + bot * ty
    return out
