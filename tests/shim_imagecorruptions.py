"""Test-only shim that lets ``imagecorruptions`` 1.1.2 import and run on NumPy 2 and current scikit-image.

The reference fails three ways here: ``pkg_resources`` is gone (setuptools ≥ 81),
``np.float_`` was removed in NumPy 2 (fog), and ``skimage.filters.gaussian`` no
longer takes ``multichannel`` (glass/gaussian blur). Its impulse noise calls
``skimage.util.random_noise`` without an ``rng``, which now draws from a fresh
OS-seeded generator; the shim makes it draw that generator's seed from NumPy's
legacy global RNG, so seeding ``np.random`` makes every reference corruption
reproducible (and lets a test inject the same draws into Gauntlet's kernels).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_MODULE: Any = None


def _fake_pkg_resources() -> types.ModuleType:
    mod = types.ModuleType("pkg_resources")

    def resource_filename(package: str, resource: str) -> str:
        spec = importlib.util.find_spec(package.split(".")[0])
        assert spec is not None and spec.origin is not None
        return str(Path(spec.origin).parent / resource)

    mod.resource_filename = resource_filename  # type: ignore[attr-defined]
    return mod


def load_reference() -> Any:
    """Import ``imagecorruptions`` with the compatibility patches applied; returns the module."""
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    if "pkg_resources" not in sys.modules:
        try:
            importlib.import_module("pkg_resources")
        except ImportError:
            sys.modules["pkg_resources"] = _fake_pkg_resources()
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]

    import skimage.filters
    import skimage.util

    original_gaussian = skimage.filters.gaussian
    if not getattr(original_gaussian, "_gauntlet_shim", False):

        def gaussian(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
            if multichannel:
                kwargs.setdefault("channel_axis", -1)
            return original_gaussian(image, *args, **kwargs)

        gaussian._gauntlet_shim = True  # type: ignore[attr-defined]
        skimage.filters.gaussian = gaussian

    original_noise = skimage.util.random_noise
    if not getattr(original_noise, "_gauntlet_shim", False):

        def random_noise(image: Any, mode: str = "gaussian", rng: Any = None, **kwargs: Any) -> Any:
            if rng is None:
                rng = np.random.default_rng(legacy_seed_for_skimage())
            return original_noise(image, mode=mode, rng=rng, **kwargs)

        random_noise._gauntlet_shim = True  # type: ignore[attr-defined]
        skimage.util.random_noise = random_noise  # type: ignore[assignment]

    with warnings.catch_warnings():  # its scipy.ndimage.interpolation import is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        mod = importlib.import_module("imagecorruptions")
        corr = importlib.import_module("imagecorruptions.corruptions")
    corr.gaussian = skimage.filters.gaussian  # type: ignore[attr-defined]  # bound at import time with `from ... import gaussian`
    _MODULE = mod
    return mod


def legacy_seed_for_skimage() -> int:
    """The one legacy draw the shimmed ``random_noise`` makes to seed its Generator."""
    return int(np.random.randint(0, 2**31 - 1))


def reference_draws(kind: str, image_hwc: np.ndarray, severity: int) -> dict[str, np.ndarray]:
    """Draw from NumPy's global legacy RNG exactly as the reference's ``kind`` will, in the same order.

    Seed ``np.random``, call this, re-seed identically, call the reference: both
    consume the same stream, and the returned dict is what Gauntlet's kernels take.
    Only valid for the ImageNet-C constants of ``imagecorruptions`` (the shapes of
    some draws depend on them).
    """
    from engine.perturbations.corruptions import PRESETS, textures

    h, w, c = image_hwc.shape
    params, _ = PRESETS["imagenet_c"][kind]
    p = params[severity - 1]
    if kind in ("gaussian_noise", "speckle_noise"):
        return {"z": np.random.standard_normal((h, w, c))}
    if kind == "shot_noise":
        return {"counts": np.random.poisson(image_hwc / 255.0 * p).astype(np.float64)}
    if kind == "impulse_noise":
        g = np.random.default_rng(legacy_seed_for_skimage())
        flip, salt = g.random((h, w, c)) <= p, g.random((h, w, c)) <= 0.5  # skimage's _bernoulli
        return {"flip": flip.astype(np.uint8), "salt": salt.astype(np.uint8)}
    if kind == "glass_blur":
        _, delta, iters = p
        shifts = np.empty((iters, h - 2 * delta, w - 2 * delta, 2), dtype=np.int64)
        for it in range(iters):
            for i in range(h - 2 * delta):
                for j in range(w - 2 * delta):
                    shifts[it, i, j] = np.random.randint(-delta, delta, size=(2,))
        return {"shifts": shifts}
    if kind == "motion_blur":
        return {"u": np.asarray(np.random.random_sample())}
    if kind == "snow":
        z = np.random.standard_normal((h, w))
        return {"z": z, "u": np.asarray(np.random.random_sample())}
    if kind == "frost":
        idx = np.random.randint(5)
        tex = textures.rescaled_texture(idx, h, w, None)
        top, left = np.random.randint(0, tex.shape[0] - h), np.random.randint(0, tex.shape[1] - w)
        return {"idx": np.asarray(idx), "top": np.asarray(top), "left": np.asarray(left)}
    if kind == "fog":
        size = 2 ** (max(h, w) - 1).bit_length()
        return {"u": np.random.random_sample(size * size - 1)}
    if kind == "spatter":
        return {"z": np.random.standard_normal((h, w))}
    if kind == "elastic_transform":
        ux = np.random.random_sample((h, w))
        return {"ux": ux, "uy": np.random.random_sample((h, w))}
    return {}


def reference_output(kind: str, image_hwc: np.ndarray, severity: int) -> np.ndarray:
    """The reference's float output (0-255, H×W×3) for a uint8 RGB image, before its final uint8 cast."""
    from PIL import Image

    mod = load_reference()
    out = mod.corruption_dict[kind](Image.fromarray(image_hwc), severity)
    return np.asarray(out, dtype=np.float64)
