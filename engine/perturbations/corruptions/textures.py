"""Frost textures: the six images the ``imagecorruptions`` distribution installs, read as data.

The package is located with ``importlib.util.find_spec`` and never imported (its
1.1.2 ``__init__`` fails on NumPy 2); we only read ``<package>/frost/*``.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from engine.errors import ConfigError

FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
# The reference draws ``np.random.randint(5)``: frost6.jpg is listed but never picked.
N_USED = 5


def texture_dir() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the frost corruption reads its textures from the 'imagecorruptions' distribution, "
            "which is not installed: pip install imagecorruptions==1.1.2"
        )
    return Path(spec.origin).parent / "frost"


@functools.lru_cache(maxsize=8)
def load_texture(idx: int) -> np.ndarray:
    """Texture ``idx`` (0-5) as uint8 BGR (H, W, 3), decoded by OpenCV exactly as the reference does."""
    import cv2

    path = texture_dir() / FILES[idx]
    img = cv2.imread(str(path))
    if img is None:
        raise ConfigError(f"frost texture {path} is missing or unreadable; reinstall imagecorruptions==1.1.2")
    return img


@functools.lru_cache(maxsize=64)
def rescaled_texture(idx: int, height: int, width: int, texture_scale: float | None) -> np.ndarray:
    """Texture ``idx`` resized for an image of ``height`` × ``width``; uint8 RGB (h, w, 3), read-only.

    ``texture_scale=None``: imagecorruptions' rule (scale so the texture covers the
    image, times 1.1, bicubic). A number: Hendrycks' CIFAR rule, ``cv2.resize`` by
    ``texture_scale · max(height, width) / 32`` (bilinear), i.e. exactly 0.2 at 32×32.
    """
    import cv2

    frost = load_texture(idx)
    fh, fw = frost.shape[:2]
    if texture_scale is None:
        if fh >= height and fw >= width:
            scale = 1.0
        elif fh < height and fw >= width:
            scale = height / fh
        elif fh >= height and fw < width:
            scale = width / fw
        else:
            scale = float(np.maximum(height / fh, width / fw))
        scale *= 1.1
        size = (int(np.ceil(fw * scale)), int(np.ceil(fh * scale)))
        out = cv2.resize(frost, dsize=size, interpolation=cv2.INTER_CUBIC)
    else:
        f = texture_scale * max(height, width) / 32
        out = cv2.resize(frost, (0, 0), fx=f, fy=f)
    if out.shape[0] <= height or out.shape[1] <= width:
        raise ConfigError(
            f"frost texture {FILES[idx]} rescaled to {out.shape[:2]} cannot cover {height}×{width}"
        )
    rgb = np.ascontiguousarray(out[..., ::-1])
    rgb.setflags(write=False)
    return rgb
