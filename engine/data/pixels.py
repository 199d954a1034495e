"""Read one image file's samples exactly: scale by its bit depth (8 or 16) to [0, 1], refuse what has no exact map.

Pillow holds 8-bit samples exactly, and 16-bit grayscale in its ``I;16`` modes, but it opens a
16-bit-per-channel (48/64-bit) RGB PNG or TIFF as 8-bit ``RGB`` (keeping only the high byte) and
``convert`` clips ``I;16`` to 255. So the bit depth is read from the file's own header (PNG's
IHDR through Pillow's raw mode, TIFF's BitsPerSample/SampleFormat tags, a PGM's maxval) and
16-bit colour samples are decoded by OpenCV (libpng/libtiff, ``IMREAD_UNCHANGED``), which returns
them as ``uint16``. Every sample is then divided by 255 or 65535; alpha is dropped, as
torchvision's ``convert("RGB")`` does. Modes whose samples have no fixed [0, 1] map (float,
32-bit or signed integers, CMYK and other colour spaces) are refused with the file's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError

EIGHT_BIT = frozenset({"1", "L", "P", "RGB", "RGBA", "LA", "PA", "RGBX"})  # 8 bits (or fewer, scaled) per sample
GRAY16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
WHY_REFUSED = {
    "F": "32-bit float samples, which have no fixed range",
    "I": "32-bit integer samples, which have no fixed range",
    "CMYK": "CMYK colour, which needs the file's colour profile to become RGB",
    "YCbCr": "YCbCr colour",
    "LAB": "CIELAB colour",
    "HSV": "HSV colour",
    "RGBa": "premultiplied alpha, whose colour samples are not the image's colours",
    "La": "premultiplied alpha, whose samples are not the image's gray levels",
}
ADVICE = "save it as an 8- or 16-bit grayscale or RGB PNG (or remove it)"
LUMA = (19595 / 65536, 38470 / 65536, 7471 / 65536)  # Pillow's RGB → L weights (ITU-R 601-2)


def _raw_mode(img: Any) -> str:
    """The raw mode of the file's first tile (Pillow's name for how samples are stored), or ''."""
    tile = getattr(img, "tile", None) or []
    if not tile:
        return ""
    args = tile[0][3]
    if isinstance(args, str):
        return args
    return args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else ""


def _tiff_depth(img: Any, path: Path) -> int:
    tags = getattr(img, "tag_v2", {})
    bits = tags.get(258, (1,) if img.mode == "1" else (8,))
    bits = tuple(bits) if isinstance(bits, tuple | list) else (bits,)
    fmt = tags.get(339, (1,))
    fmt = tuple(fmt) if isinstance(fmt, tuple | list) else (fmt,)
    if any(f != 1 for f in fmt) or len(set(bits)) != 1 or bits[0] not in (1, 2, 4, 8, 16):
        kind = {2: "signed integer", 3: "floating-point"}.get(next((f for f in fmt if f != 1), 1), "unsigned integer")
        raise ConfigError(f"image {path} is a TIFF of {'/'.join(map(str, bits))}-bit {kind} samples, which Gauntlet "
                          f"cannot map to [0, 1] exactly; {ADVICE}")
    if bits[0] == 16 and len(bits) > 1 and tags.get(284, 1) == 2:
        raise ConfigError(f"image {path} is a planar 16-bit colour TIFF (PlanarConfiguration=2), which neither "
                          f"Pillow nor OpenCV reads exactly; {ADVICE}")
    return 16 if bits[0] == 16 else 8


def sample_depth(img: Any, path: Path) -> int:
    """8 or 16: what the file's samples are divided by (255 or 65535); a mode with no exact map is refused."""
    mode, raw, fmt = img.mode, _raw_mode(img), getattr(img, "format", None)
    signed = raw.startswith("I;16") and "S" in raw[4:]
    if mode not in EIGHT_BIT | GRAY16 | {"I"} or signed or (mode == "I" and fmt not in ("PPM", "PNG")):
        why = "signed 16-bit samples" if signed else WHY_REFUSED.get(mode, "samples Gauntlet has no exact map for")
        raise ConfigError(f"image {path} has Pillow mode {mode} ({why}); Gauntlet reads only grayscale, palette "
                          f"and RGB(A) images of up to 16 bits per sample exactly; {ADVICE}")
    if fmt == "TIFF":
        return _tiff_depth(img, path)
    if mode == "I":  # a PGM with maxval > 255 (Pillow scales it to 0-65535), or a 16-bit PNG from Pillow < 10
        if fmt == "PNG" and not raw.startswith("I;16"):
            raise ConfigError(f"image {path} has Pillow mode I from raw mode {raw!r}; {ADVICE}")
        return 16
    if mode in GRAY16 or ";16" in raw:
        return 16
    tile = getattr(img, "tile", None) or []
    if fmt == "PPM" and mode == "RGB" and tile and isinstance(tile[0][3], tuple) and int(tile[0][3][-1]) > 255:
        raise ConfigError(f"image {path} is a colour PPM of more than 8 bits, which Pillow reads only to 8 bits; "
                          f"{ADVICE}")
    return 8


def _colour16(img: Any, path: Path) -> np.ndarray:
    """H×W×C uint16 samples of a 16-bit colour PNG/TIFF in RGB order, from libpng/libtiff through OpenCV.

    Checked against Pillow, which keeps each sample's high byte: a layout one of them misreads (a planar
    16-bit TIFF fools OpenCV) makes them disagree, and the file is refused instead of read wrongly.
    """
    import cv2

    arr: np.ndarray | None = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.shape[1::-1] != img.size:
        got = "nothing" if arr is None else f"{arr.dtype} {arr.shape}"
        raise ConfigError(f"image {path}: its 16-bit samples cannot be decoded exactly (OpenCV gave {got} for a "
                          f"{img.size[0]}×{img.size[1]} image); {ADVICE}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    rgb = arr[:, :, 2::-1] if arr.shape[2] >= 3 else arr[:, :, :1]  # BGR(A) → RGB; gray+alpha → gray
    high = np.asarray(img.convert("RGB"))[:, :, : rgb.shape[2]]
    if not np.array_equal(np.right_shift(rgb, 8), high):
        raise ConfigError(f"image {path}: OpenCV and Pillow disagree on its 16-bit samples (a layout one of them "
                          f"misreads, such as a planar TIFF), so it cannot be read exactly; {ADVICE}")
    return rgb


def read16(img: Any, path: Path) -> np.ndarray:
    """H×W×C float32 in [0, 1] (C = 1 or 3) of a 16-bit image, each sample divided by 65535."""
    if img.mode in GRAY16 or img.mode == "I":
        arr = np.asarray(img)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise ConfigError(f"image {path}: 16-bit samples outside 0-65535; {ADVICE}")
        arr = arr[:, :, None]
    else:
        arr = _colour16(img, path)
    return arr.astype(np.float32) / np.float32(65535)


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """H×W×C float samples with ``channels`` channels: gray is repeated, RGB → gray with Pillow's weights."""
    if arr.shape[2] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=2)
    w = np.asarray(LUMA, dtype=np.float64)
    return (arr.astype(np.float64) @ w).astype(np.float32)[:, :, None]
