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
    Each row splits into the replicated edges and a contiguous middle, so the inner
    loop vectorises.
    """
    n, c, h, w = planes.shape
    out = np.empty((n, c, h, w), dtype=np.float64)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        acc = np.empty(w, dtype=np.float64)  # one output row, kept in L1 across all taps
        for y in range(h):
            acc[:] = 0.0
            for k in range(counts[b]):
                dx = dxs[b, k]
                wk = weights[b, k]
                x0 = min(max(dx, 0), w)  # first x whose source x - dx is inside the row
                x1 = max(min(w + dx, w), x0)  # one past the last
                src = planes[b, ch, min(max(y - dys[b, k], 0), h - 1)]
                left = wk * src[0]
                for x in range(x0):
                    acc[x] += left
                mid = acc[x0:x1]
                shifted = src[x0 - dx : x1 - dx]
                for j in range(x1 - x0):  # j ≥ 0: no wrap-around check, so LLVM vectorises
                    mid[j] += wk * shifted[j]
                right = wk * src[w - 1]
                for x in range(x1, w):
                    acc[x] += right
            out[b, ch, y, :] = acc
    return out


@njit(cache=True, parallel=True)
def zoom_sum(planes, r0, rt, c0, ct, rmax, cmax):  # type: ignore[no-untyped-def]
    """Σ over zoom factors f of ``planes`` sampled bilinearly at (r0[f, y] + rt[f, y], c0[f, x] + ct[f, x]).

    The index/weight tables come from :func:`zoom_tables` and fix the output size
    (P, r0.shape[1], c0.shape[1]); each layer is cast to the planes' dtype before it
    is added, as ``scipy.ndimage.zoom`` returns the input dtype. ``rmax[f]``/``cmax[f]``
    are the last valid row/column of factor f's crop. Separable: the crop's rows are
    interpolated along x once (float64), then blended along y in contiguous rows.
    """
    p = planes.shape[0]
    nf, h = r0.shape
    w = c0.shape[1]
    out = np.zeros((p, h, w), dtype=planes.dtype)
    for i in prange(p):
        tmp = np.empty((planes.shape[1], w))
        for f in range(nf):
            lo = r0[f, 0]
            hi = min(r0[f, h - 1] + 1, rmax[f])
            for r in range(lo, hi + 1):
                for x in range(w):
                    xa = c0[f, x]
                    xb = min(xa + 1, cmax[f])
                    tx = ct[f, x]
                    tmp[r, x] = planes[i, r, xa] * (1.0 - tx) + planes[i, r, xb] * tx
            for y in range(h):
                ya = r0[f, y]
                yb = min(ya + 1, rmax[f])
                ty = rt[f, y]
                for x in range(w):
                    out[i, y, x] += planes.dtype.type(tmp[ya, x] * (1.0 - ty) + tmp[yb, x] * ty)
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
    zoomed = round(crop * factor)  # Python's round, as scipy.ndimage.zoom sizes its output
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


@njit(cache=True, parallel=True)
def quantize_u8(x):  # type: ignore[no-untyped-def]
    """float in [0, 1] → uint8 by round-half-up of x·255 (clipped), any shape, flattened in C order."""
    flat = x.ravel()
    out = np.empty(flat.shape[0], dtype=np.uint8)
    for i in prange(flat.shape[0]):
        v = math.floor(flat[i] * 255.0 + 0.5)
        out[i] = 0 if v < 0 else (255 if v > 255 else np.uint8(v))
    return out.reshape(x.shape)


@njit(cache=True, inline="always")
def _clip8(ss: int) -> int:
    if ss >= (1 << 30):
        return 255
    if ss <= 0:
        return 0
    return ss >> 22


@njit(cache=True, parallel=True)
def pil_resample_u8(planes, idx_x, kk_x, idx_y, kk_y):  # type: ignore[no-untyped-def]
    """Pillow's two-pass 8-bit resampling (``ImagingResample``) of uint8 planes (P, H, W).

    Horizontal pass first, each output rounded to uint8, then vertical: output ``o``
    sums inputs ``idx[o, k]`` times 22-bit fixed-point weights ``kk[o, k]`` (taps padded
    to a common count with zero weights) plus half an ulp, then shifts and clips, exactly
    as Pillow's ``clip8``. Sums fit int32 (≤ 255 · 2²² + 2²¹), so the loops vectorise.
    """
    p, h = planes.shape[0], planes.shape[1]
    ow, kx = idx_x.shape
    oh, ky = idx_y.shape
    out = np.empty((p, oh, ow), dtype=np.uint8)
    for i in prange(p):
        tmp = np.empty((h, ow), dtype=np.int32)
        acc = np.empty(ow, dtype=np.int32)
        for y in range(h):
            row = planes[i, y]
            acc[:] = 1 << 21
            for k in range(kx):
                for o in range(ow):
                    acc[o] += np.int32(row[idx_x[o, k]]) * kk_x[o, k]
            for o in range(ow):
                tmp[y, o] = _clip8(acc[o])
        for o in range(oh):
            acc[:] = 1 << 21
            for k in range(ky):
                src = tmp[idx_y[o, k]]
                wk = kk_y[o, k]
                for x in range(ow):
                    acc[x] += src[x] * wk
            for x in range(ow):
                out[i, o, x] = _clip8(acc[x])
    return out


@njit(cache=True, parallel=True)
def dequantize_u8(img, channels_last):  # type: ignore[no-untyped-def]
    """uint8 (N, C, H, W) — or (N, H, W, C) when ``channels_last`` — to float32 (N, C, H, W) / 255."""
    if channels_last:
        n, h, w, c = img.shape
    else:
        n, c, h, w = img.shape
    out = np.empty((n, c, h, w), dtype=np.float32)
    for b in prange(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    v = img[b, y, x, ch] if channels_last else img[b, ch, y, x]
                    out[b, ch, y, x] = np.float32(v) / np.float32(255.0)
    return out


@njit(cache=True)
def poisson_alias_tables(lams, length):  # type: ignore[no-untyped-def]
    """Walker/Vose alias tables of Poisson(λ) truncated to [0, length), one row per λ in ``lams``.

    ``length`` should exceed λ_max by > 10·√λ_max + 20: the tail it drops has mass < 1e-20.
    """
    m = lams.shape[0]
    prob = np.ones((m, length))
    alias = np.zeros((m, length), dtype=np.int32)
    pmf = np.empty(length)
    small = np.empty(length, dtype=np.int64)
    large = np.empty(length, dtype=np.int64)
    for r in range(m):
        lam = lams[r]
        total = 0.0
        for k in range(length):
            if lam > 0:
                pmf[k] = math.exp(-lam + k * math.log(lam) - math.lgamma(k + 1.0))
            else:
                pmf[k] = 1.0 if k == 0 else 0.0
            total += pmf[k]
        ns = 0
        nl = 0
        for k in range(length):
            pmf[k] = pmf[k] / total * length
            if pmf[k] < 1.0:
                small[ns] = k
                ns += 1
            else:
                large[nl] = k
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            s = small[ns]
            g = large[nl - 1]
            prob[r, s] = pmf[s]
            alias[r, s] = g
            pmf[g] = (pmf[g] + pmf[s]) - 1.0
            if pmf[g] < 1.0:
                nl -= 1
                small[ns] = g
                ns += 1
        # leftovers keep probability 1 (rounding residue)
    return prob, alias


@njit(cache=True, nogil=True)
def poisson_alias_sample(levels, uniforms, prob, alias):  # type: ignore[no-untyped-def]
    """One Poisson count per value: alias-table row ``levels[i]``, driven by ``uniforms[i]`` ∈ [0, 1)."""
    flat_l = levels.ravel()
    flat_u = uniforms.ravel()
    length = prob.shape[1]
    out = np.empty(flat_l.shape[0], dtype=np.float32)
    for i in range(flat_l.shape[0]):
        t = flat_u[i] * length
        k = int(t)
        if k >= length:
            k = length - 1
        row = flat_l[i]
        out[i] = k if (t - k) < prob[row, k] else alias[row, k]
    return out.reshape(levels.shape)


@njit(cache=True, parallel=True)
def pointwise_hwc(x, a, b, p, mode):  # type: ignore[no-untyped-def]
    """Per-pixel noise on NCHW ``x`` from H×W×C draws ``a``/``b`` (N, H, W, C), written NCHW.

    mode 0: x + a·p (Gaussian); 1: x + x·(a·p) (speckle); 2: a / p (shot; a = counts);
    3: impulse, ``b`` (salt 1 / pepper 0) where the mask ``a`` is set, else x.
    """
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for i in prange(n):
        for ch in range(c):
            for y in range(h):
                src = x[i, ch, y]
                dst = out[i, ch, y]
                da = a[i, y]
                if mode == 0:
                    for xx in range(w):
                        dst[xx] = src[xx] + da[xx, ch] * p
                elif mode == 1:
                    for xx in range(w):
                        dst[xx] = src[xx] + src[xx] * (da[xx, ch] * p)
                elif mode == 2:
                    for xx in range(w):
                        dst[xx] = da[xx, ch] / p
                else:
                    db = b[i, y]
                    for xx in range(w):  # branch-free select: the masks are random
                        m = np.float32(da[xx, ch])
                        dst[xx] = src[xx] + m * (np.float32(db[xx, ch]) - src[xx])
    return out


@njit(cache=True, parallel=True)
def truncate_u8(x):  # type: ignore[no-untyped-def]
    """``np.uint8(x · 255)`` for x in [0, 1] (truncation, as the reference's glass blur), any shape."""
    flat = x.ravel()
    out = np.empty(flat.shape[0], dtype=np.uint8)
    for i in prange(flat.shape[0]):
        v = flat[i] * 255.0
        out[i] = 0 if v <= 0 else (255 if v >= 255 else np.uint8(math.floor(v)))
    return out.reshape(x.shape)


@njit(cache=True, inline="always")
def _round_half_even(v: float) -> float:
    r = float(math.floor(v + 0.5))
    if r - v == 0.5 and r % 2 != 0:  # a tie: go to the even neighbour, as np.round
        r -= 1.0
    return r


@njit(cache=True, parallel=True)
def snow_threshold(layer, threshold):  # type: ignore[no-untyped-def]
    """Snow flakes: values below ``threshold`` → 0, then clip to [0, 1] (in place, returned)."""
    flat = layer.ravel()
    for i in prange(flat.shape[0]):
        v = flat[i]
        flat[i] = 0.0 if v < threshold else min(max(v, 0.0), 1.0)
    return layer


@njit(cache=True, parallel=True)
def snow_compose(x, layer, blend):  # type: ignore[no-untyped-def]
    """The reference's snow blend on NCHW RGB ``x`` with the blurred flake layer (N, 1, h', w') ⊇ H×W.

    The layer is rounded to 8 bits, cropped to H×W, and added with its 180° rotation to
    ``blend·x + (1 − blend)·max(x, 1.5·gray + 0.5)``, gray = ITU-R 601 luma.
    """
    n, c, h, w = x.shape
    out = np.empty((n, c, h, w), dtype=x.dtype)
    for b in prange(n):
        for y in range(h):
            for xx in range(w):
                s = _round_half_even(layer[b, 0, y, xx] * 255) / 255.0
                s += _round_half_even(layer[b, 0, h - 1 - y, w - 1 - xx] * 255) / 255.0
                gray = np.float32(0.299) * x[b, 0, y, xx] + np.float32(0.587) * x[b, 1, y, xx]
                gray += np.float32(0.114) * x[b, 2, y, xx]
                lift = gray * np.float32(1.5) + np.float32(0.5)
                for ch in range(c):
                    v = x[b, ch, y, xx]
                    base = blend * v + (1 - blend) * max(v, lift)
                    out[b, ch, y, xx] = base + s
    return out


@njit(cache=True, parallel=True)
def fog_compose(x, plasma, strength):  # type: ignore[no-untyped-def]
    """``(x + strength · plasma[:H, :W]) · max(x) / (max(x) + strength)`` per image, in float64."""
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for b in prange(n):
        peak = np.float64(x[b].max())
        scale = peak / (peak + strength)
        for ch in range(c):
            for y in range(h):
                for xx in range(w):
                    out[b, ch, y, xx] = (np.float64(x[b, ch, y, xx]) + strength * plasma[b, y, xx]) * scale
    return out


@njit(cache=True, parallel=True)
def gather_u8(planes, rows, cols):  # type: ignore[no-untyped-def]
    """``planes[:, rows][:, :, cols]`` for uint8 (P, H, W): Pillow's NEAREST resize given its indices."""
    p = planes.shape[0]
    out = np.empty((p, rows.shape[0], cols.shape[0]), dtype=np.uint8)
    for i in prange(p):
        for y in range(rows.shape[0]):
            src = planes[i, rows[y]]
            dst = out[i, y]
            for x in range(cols.shape[0]):
                dst[x] = src[cols[x]]
    return out
