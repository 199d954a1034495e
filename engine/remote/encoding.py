"""The pixels an endpoint receives: every query on the 8-bit grid, encoded as the contract declares (PNG or JPEG).

Perturbation sizes are measured on what :func:`sent_pixels` returns, never on the float tensor an attack computed:
for PNG that is the 8-bit rounding of the batch, for JPEG the decoding of the very bytes that are sent.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from engine.errors import ConfigError

Encoding = Literal["png", "jpeg"]


@dataclass(frozen=True)
class ImageContract:
    """How images are sent: the file format, JPEG quality, and an optional pixel size the client resizes to."""

    encoding: Encoding = "png"
    jpeg_quality: int = 95
    size: tuple[int, int] | None = None  # (H, W) the endpoint accepts; a batch of another size is refused
    # the endpoint JPEG-re-encodes what it receives at this quality before its model sees it (declared by whoever
    # knows the endpoint; Gauntlet cannot look inside it): transfer attacks craft through it, sizes stay on `sent`
    reencode_jpeg: int | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ("png", "jpeg"):
            raise ConfigError(f"remote encoding must be 'png' or 'jpeg', got {self.encoding!r}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ConfigError(f"remote jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        q = self.reencode_jpeg
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100):
            raise ConfigError(f"remote reencode_jpeg must be null or a JPEG quality in 1..100, got {q!r}")

    @property
    def lossy(self) -> bool:
        """Whether the model behind the endpoint sees anything but the 8-bit rounding of the image (JPEG sent, or a
        declared re-encoding)."""
        return self.encoding == "jpeg" or self.reencode_jpeg is not None


def to_grid(x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """N×C×H×W floats in [0, 1] → uint8 on the 8-bit grid (round half to even, as torch.round does), on CPU."""
    if x.dim() != 4:
        raise ConfigError(f"an oracle query is a batch N×C×H×W, got shape {tuple(x.shape)}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ConfigError(f"the remote contract declares images of {size[0]}×{size[1]} pixels; "
                          f"this batch is {x.shape[-2]}×{x.shape[-1]} (Gauntlet never resizes what it sends)")
    if not torch.isfinite(x).all():
        raise ConfigError("an oracle query holds NaN or inf pixels; nothing was sent")
    return (x.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()


def _pil(img: np.ndarray) -> Image.Image:
    """H×W×C uint8 → PIL image (grey for one channel, RGB for three)."""
    if img.shape[2] == 1:
        return Image.fromarray(img[:, :, 0], mode="L")
    if img.shape[2] == 3:
        return Image.fromarray(img, mode="RGB")
    raise ConfigError(f"images are sent with 1 or 3 channels, got {img.shape[2]}")


def encode_one(grid: torch.Tensor, contract: ImageContract) -> bytes:
    """One C×H×W uint8 image → the file bytes the endpoint receives."""
    img = grid.permute(1, 2, 0).numpy()
    pil = _pil(np.ascontiguousarray(img))
    buf = io.BytesIO()
    if contract.encoding == "png":
        pil.save(buf, format="PNG", compress_level=1)  # lossless at any level; 1 is the fastest
    else:
        pil.save(buf, format="JPEG", quality=int(contract.jpeg_quality))
    return buf.getvalue()


def decode_one(data: bytes, channels: int) -> torch.Tensor:
    """File bytes → C×H×W uint8 (what a server decodes)."""
    with Image.open(io.BytesIO(data)) as opened:
        arr = np.asarray(opened.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def encode_batch(grid: torch.Tensor, contract: ImageContract) -> list[bytes]:
    """N×C×H×W uint8 → one file per row."""
    return [encode_one(row, contract) for row in grid]


def sent_grid(grid: torch.Tensor, contract: ImageContract) -> torch.Tensor:
    """The uint8 pixels the endpoint decodes from what is sent for ``grid`` (identity for PNG at the same size)."""
    if contract.encoding == "png":
        return grid  # lossless: the server decodes exactly these pixels
    c = grid.shape[1]
    return torch.stack([decode_one(encode_one(row, contract), c) for row in grid])


def sent_pixels(x: torch.Tensor, contract: ImageContract) -> torch.Tensor:
    """``x`` as the endpoint receives it, back in [0, 1] on ``x``'s device and dtype."""
    grid = sent_grid(to_grid(x, contract.size), contract)
    return (grid.float() / 255.0).to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)


def reencoded(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """Pixels in [0, 1] (already on the 8-bit grid) after a JPEG round trip at ``quality``: what a model behind an
    endpoint that re-encodes sees. On ``pixels``' device and dtype."""
    grid = to_grid(pixels)
    again = sent_grid(grid, ImageContract("jpeg", quality))
    return (again.float() / 255.0).to(device=pixels.device, dtype=pixels.dtype)


def row_keys(grid: torch.Tensor) -> list[str]:
    """One content key per row (sha256 of shape and pixels): identical queries share a key."""
    keys = []
    for row in grid:
        h = hashlib.sha256(str(tuple(row.shape)).encode())
        h.update(row.contiguous().numpy().tobytes())
        keys.append(h.hexdigest())
    return keys
