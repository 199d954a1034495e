"""The probe's files: a real image, the largest the contract allows, an oversized one, a malformed one, a bomb.

The decompression bomb is a valid PNG written row by row (never held decoded here): a 1-bit image whose header
declares ``side × side`` pixels of zeros, a few tens of kilobytes on the wire.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png(pixels: np.ndarray) -> bytes:
    """H×W uint8 (grey) or H×W×3 → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def noise(side: int, channels: int, seed: int) -> bytes:
    """Incompressible noise at ``side × side``: the largest file of that size (PNG cannot shrink it)."""
    rng = np.random.default_rng(seed)
    shape = (side, side) if channels == 1 else (side, side, channels)
    return png(rng.integers(0, 256, size=shape, dtype=np.uint8))


def malformed() -> bytes:
    """A PNG signature and a truncated header chunk: every decoder must refuse it."""
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + b"\x00\x00\x10"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb(side: int) -> bytes:
    """A 1-bit grey PNG of ``side × side`` zeros, compressed row by row (decoded: side² pixels)."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0 + the row's packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 64) for _ in range(side // 64)]
    parts.append(comp.compress(row * (side % 64)))
    parts.append(comp.flush())
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
