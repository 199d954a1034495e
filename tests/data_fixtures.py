"""Generated datasets in the on-disk layouts users have: CIFAR python/binary, image folders, npz."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def smooth_images(n: int, size: int = 32, seed: int = 0, channels: int = 3) -> np.ndarray:
    """uint8 N×H×W×C: low-resolution noise upsampled (nearest) — image-like, cheap, deterministic."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, 4, 4, channels), dtype=np.uint8)
    reps = -(-size // 4)
    return np.repeat(np.repeat(low, reps, axis=1), reps, axis=2)[:, :size, :size]


def write_cifar_python(root: Path, images: np.ndarray, labels: np.ndarray, cifar100: bool = False,
                       bytes_keys: bool = False) -> Path:
    """``root/cifar-10-batches-py/test_batch`` (or ``cifar-100-python/test``) as the release pickles it.

    The release was pickled by Python 2, whose ``str`` keys load as ``str`` with ``encoding='latin1'``
    (torchvision) and as ``bytes`` with ``encoding='bytes'`` (the CIFAR page's recipe); ``bytes_keys``
    writes the second kind.
    """
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1)
    batch: dict[bytes, object] = {b"batch_label": b"testing batch 1 of 1", b"data": data,
                                  b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    if cifar100:
        batch[b"fine_labels"] = [int(v) for v in labels]
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    else:
        batch[b"labels"] = [int(v) for v in labels]
    path = folder / ("test" if cifar100 else "test_batch")
    if not bytes_keys:
        batch = {k.decode(): v for k, v in batch.items()}  # type: ignore[misc]
    path.write_bytes(pickle.dumps(batch, protocol=2))
    meta_name = "meta" if cifar100 else "batches.meta"
    names_key = b"fine_label_names" if cifar100 else b"label_names"
    k = 100 if cifar100 else 10
    meta = {names_key.decode(): [f"c{i}" for i in range(k)]}
    (folder / meta_name).write_bytes(pickle.dumps(meta, protocol=2))
    return path


def write_cifar_binary(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1)
    records = np.concatenate([labels.astype(np.uint8)[:, None], pixels], axis=1)
    path = folder / "test_batch.bin"
    records.tofile(path)
    return path


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str],
                       suffix: str = ".png", bits: int = 8) -> Path:
    """``root/<class>/<i>.<suffix>`` for every image; returns ``root``.

    ``bits=16`` stores uint8 images as 16-bit samples ``v · 257`` (the same values: v·257/65535 = v/255),
    or uint16 images as they are; ``.png`` by :func:`write_png`, ``.tif`` by OpenCV (libtiff).
    """
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        arr = img[..., 0] if img.shape[-1] == 1 else img
        path = root / classes[int(y)] / f"{i:05d}{suffix}"
        if bits == 8:
            Image.fromarray(arr).save(path, quality=95)
        else:
            write16(path, arr.astype(np.uint16) * 257 if arr.dtype == np.uint8 else arr)
    return root


def write_png(path: Path, arr: np.ndarray) -> Path:
    """A PNG written by hand (IHDR, one zlib IDAT, IEND), independent of the readers under test.

    ``arr``: uint8 or uint16, H×W (gray), H×W×2 (gray + alpha), ×3 (RGB) or ×4 (RGBA).
    """
    import struct
    import zlib

    arr = arr[:, :, None] if arr.ndim == 2 else arr
    h, w, c = arr.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    depth = 16 if arr.dtype == np.uint16 else 8
    rows = arr.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def write16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit image: PNG by :func:`write_png`, TIFF by OpenCV (RGB given, BGR stored as OpenCV expects)."""
    if path.suffix.lower() == ".png":
        return write_png(path, arr)
    import cv2

    bgr = arr[:, :, ::-1] if arr.ndim == 3 and arr.shape[2] in (3, 4) else arr
    if arr.ndim == 3 and arr.shape[2] == 4:
        bgr = arr[:, :, [2, 1, 0, 3]]
    if not cv2.imwrite(str(path), np.ascontiguousarray(bgr)):
        raise OSError(f"OpenCV could not write {path}")
    return path


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=images, y=labels.astype(np.int64))
    return path
