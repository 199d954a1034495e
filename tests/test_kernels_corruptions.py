"""The numba kernels against SciPy / Pillow / the reference's Python loops, and against their torch twins."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from engine.perturbations.corruptions import ALL, CORRUPTIONS, PRESETS
from engine.perturbations.corruptions.ops import gaussian_kernel1d, pil_matrix, pil_taps
from kernels import corruptions_cpu as K
from kernels import corruptions_torch as T

RNG = np.random.default_rng(1234)


@pytest.mark.parametrize(
    ("mode", "code"), [("nearest", K.NEAREST), ("reflect", K.REFLECT), ("mirror", K.MIRROR)]
)
@pytest.mark.parametrize("sigma", [0.4, 3.0, 12.0])
def test_separable_filter_matches_scipy_and_torch(mode: str, code: int, sigma: float) -> None:
    planes = RNG.random((3, 23, 31))
    ref = ndi.gaussian_filter(planes, (0, sigma, sigma), mode=mode, truncate=4.0)
    k = gaussian_kernel1d(sigma, 4.0)
    np.testing.assert_allclose(K.separable_filter(planes, k, k, code), ref, atol=1e-12)
    np.testing.assert_allclose(
        T.separable_filter(torch.from_numpy(planes), k, k, code).numpy(), ref, atol=1e-12
    )


def _python_glass(img: np.ndarray, shifts: np.ndarray, delta: int) -> np.ndarray:
    """The reference's loop, verbatim in effect: HWC uint8, the tuple 'swap' on NumPy views."""
    x = img.transpose(1, 2, 0).copy()
    h, w = x.shape[:2]
    for it in range(shifts.shape[0]):
        for i, hh in enumerate(range(h - delta, delta, -1)):
            for j, ww in enumerate(range(w - delta, delta, -1)):
                dx, dy = shifts[it, i, j]
                hp, wp = hh + dy, ww + dx
                x[hh, ww], x[hp, wp] = x[hp, wp], x[hh, ww]
    return x.transpose(2, 0, 1)


@pytest.mark.parametrize(("delta", "iters"), [(1, 2), (2, 3), (4, 1)])
def test_glass_shuffle_is_the_reference_copy_loop(delta: int, iters: int) -> None:
    img = RNG.integers(0, 256, (2, 3, 27, 34), dtype=np.uint8)
    shifts = RNG.integers(-delta, delta, (2, iters, 27 - 2 * delta, 34 - 2 * delta, 2))
    expected = np.stack([_python_glass(img[b], shifts[b], delta) for b in range(2)])
    np.testing.assert_array_equal(K.glass_shuffle(img.copy(), shifts, delta), expected)
    got = T.glass_shuffle(torch.from_numpy(img.copy()), torch.from_numpy(shifts), delta).numpy()
    np.testing.assert_array_equal(got, expected)


def test_glass_swap_is_a_copy() -> None:
    """Why the kernel copies: the reference's tuple assignment on views never swaps."""
    x = np.array([[[1, 1, 1]], [[2, 2, 2]]], dtype=np.uint8)
    x[0, 0], x[1, 0] = x[1, 0], x[0, 0]
    assert x[0, 0, 0] == 2 and x[1, 0, 0] == 2


@pytest.mark.parametrize("factor", [1.01, 1.07, 1.3, 2.5, 4.5])
@pytest.mark.parametrize("center_trim", [False, True])
def test_zoom_matches_scipy_clipped_zoom(factor: float, center_trim: bool) -> None:
    size = 30
    img = RNG.random((2, size, size)).astype(np.float32)
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    zoomed = ndi.zoom(img[:, top : top + crop, top : top + crop], (1, factor, factor), order=1)
    trim = (zoomed.shape[1] - size) // 2 if center_trim else 0
    ref = zoomed[:, trim : trim + size, trim : trim + size]
    r0, rt, rmax = K.zoom_tables(size, factor, size, center_trim)
    tables = (r0[None], rt[None], r0[None], rt[None], np.array([rmax]), np.array([rmax]))
    np.testing.assert_allclose(K.zoom_sum(img, *tables), ref, atol=1e-6)
    np.testing.assert_allclose(T.zoom_sum(torch.from_numpy(img), *tables).numpy(), ref, atol=1e-6)


def test_shift_blend_numba_equals_torch() -> None:
    planes = RNG.random((3, 2, 20, 25))
    dxs, dys = RNG.integers(-6, 6, (3, 9)), RNG.integers(-6, 6, (3, 9))
    weights, counts = RNG.random((3, 9)), np.array([9, 4, 0])
    a = K.shift_blend(planes, dxs, dys, weights, counts)
    b = T.shift_blend(torch.from_numpy(planes), *map(torch.from_numpy, (dxs, dys, weights, counts))).numpy()
    np.testing.assert_allclose(a, b, atol=1e-12)
    assert np.all(a[2] == 0)


def test_plasma_numba_equals_torch_and_is_normalised() -> None:
    u = RNG.random((3, 64 * 64 - 1))
    a = K.plasma_fractal(u, 64, 1.7)
    b = T.plasma_fractal(torch.from_numpy(u), 64, 1.7).numpy()
    np.testing.assert_allclose(a, b, atol=1e-12)
    assert a.min() == 0.0 and a.max() == 1.0


def test_remap_matches_scipy_map_coordinates() -> None:
    img = RNG.random((1, 2, 20, 24)).astype(np.float32)
    dy = (RNG.standard_normal((1, 20, 24)) * 6).astype(np.float32)
    dx = (RNG.standard_normal((1, 20, 24)) * 6).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(20), np.arange(24), indexing="ij")
    ref = np.stack(
        [ndi.map_coordinates(img[0, c], [yy + dy[0], xx + dx[0]], order=1, mode="reflect") for c in range(2)]
    )
    np.testing.assert_allclose(K.remap_bilinear_reflect(img, dy, dx)[0], ref, atol=1e-6)
    got = T.remap_bilinear_reflect(torch.from_numpy(img), torch.from_numpy(dy), torch.from_numpy(dx))
    np.testing.assert_allclose(got[0].numpy(), ref, atol=1e-6)


@pytest.mark.parametrize(("n_in", "n_out", "kind"), [(224, 134, "box"), (32, 19, "box"), (30, 32, "box"),
                                                      (89, 224, "nearest"), (19, 32, "nearest")])  # fmt: skip
def test_pil_resample_is_pillow(n_in: int, n_out: int, kind: str) -> None:
    from PIL import Image

    img = RNG.integers(0, 256, (n_in, n_in), dtype=np.uint8)
    resample = Image.Resampling.BOX if kind == "box" else Image.Resampling.NEAREST
    ref = np.asarray(Image.fromarray(img).resize((n_out, n_out), resample))
    taps = pil_taps(n_in, n_out, kind)
    np.testing.assert_array_equal(K.pil_resample_u8(img[None], *taps, *taps)[0], ref)
    m = pil_matrix(n_in, n_out, kind)
    tmp = np.clip(np.floor(img.astype(np.float64) @ m.T + 0.5), 0, 255)
    np.testing.assert_array_equal(np.clip(np.floor(m @ tmp + 0.5), 0, 255), ref)


def test_quantize_roundtrip() -> None:
    u = RNG.integers(0, 256, (2, 3, 5, 7), dtype=np.uint8)
    x = (u.astype(np.float32) / 255).astype(np.float32)
    np.testing.assert_array_equal(K.quantize_u8(x), u)
    np.testing.assert_array_equal(K.dequantize_u8(u, False), x)
    np.testing.assert_array_equal(K.dequantize_u8(np.ascontiguousarray(u.transpose(0, 2, 3, 1)), True), x)


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_numba_and_torch_paths_agree_on_same_draws(kind: str, preset: str) -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for severity in (1, 3, 5):
        a = CORRUPTIONS[kind](name=kind, preset=preset, backend="numba")
        b = CORRUPTIONS[kind](name=kind, preset=preset, backend="torch")
        draws = a.draws(x, [0, 1, 2], 0, severity)
        out_a, out_b = a.corrupt(x, severity, draws=draws), b.corrupt(x, severity, draws=draws)
        # OpenCV rounds warpAffine's source coordinates to 1/32 px; the torch path samples exactly.
        tol = 0.05 if kind == "elastic_transform" and preset == "cifar10_c" else 1e-5
        assert (out_a - out_b).abs().max().item() <= tol, (kind, preset, severity)


def test_kernels_import_no_engine_and_default_the_numba_cache(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["HOME"] = str(tmp_path)
    env.pop("XDG_CACHE_HOME", None)
    code = (
        "import sys, os, kernels.corruptions_cpu, kernels.corruptions_torch;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('engine', 'hydra', 'ray', 'wandb')];"
        "assert not bad, bad;"
        "print(os.environ['NUMBA_CACHE_DIR'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fmt: skip
    assert out.stdout.strip() == str(tmp_path / ".cache" / "gauntlet" / "numba")


@pytest.mark.parametrize("size", [32, 224])
def test_jpeg_round_trip_equals_pillow_for_both_presets(size: int) -> None:
    """OpenCV encodes/decodes for speed; the pixels must be Pillow's (the reference's codec)."""
    from io import BytesIO

    import cv2
    import skimage.data
    from PIL import Image

    from engine.perturbations.corruptions.ops import _jpeg_one

    qualities = {q for preset in PRESETS.values() for q in preset["jpeg_compression"][0]}
    for name in ("astronaut", "coffee"):
        img = cv2.resize(getattr(skimage.data, name)(), (size, size), interpolation=cv2.INTER_AREA)
        for q in sorted(qualities):
            buf = BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=q)
            ref = np.asarray(Image.open(BytesIO(buf.getvalue())))
            got = _jpeg_one(np.ascontiguousarray(img[..., ::-1]), q)[..., ::-1]
            np.testing.assert_array_equal(got, ref, err_msg=f"{name} {size}px q={q}")
