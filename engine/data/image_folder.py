"""An ImageNet-style folder ``<root>/<class>/<image>``, decoded lazily by a bounded pool of threads.

Class index = position of the folder name in sorted order, or the index a class-index JSON
gives it (``{"n01440764": 0, …}`` or ImageNet's ``{"0": ["n01440764", "tench"], …}``).
``sample_id`` = position in the sorted (class folder, file name) listing of the whole tree.
Resize (shorter side, bilinear) then center-crop follows torchvision's ``Resize`` + ``CenterCrop``
on PIL images, so ``resize: 256, crop: 224`` is the usual ImageNet evaluation transform.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data import LazyDataset, check_labels, required_path, subset_order, user_dataset_name
from engine.data.fingerprint import FileSource
from engine.data.pixels import read16, sample_depth, to_channels
from engine.errors import ConfigError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CHECKS = ("header", "none")
LAYOUT = "<root>/<class name>/<image>.JPEG|png|… (one sub-folder per class)"


def _class_index(root: Path, folders: list[str], class_index: str | None) -> tuple[dict[str, int], int]:
    if class_index is None:
        return {name: i for i, name in enumerate(folders)}, len(folders)
    path = Path(class_index).expanduser()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"dataset.class_index={path} cannot be read as JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"dataset.class_index={path}: expected a JSON object, got {type(doc).__name__}")
    mapping: dict[str, int] = {}
    for key, value in doc.items():
        if isinstance(value, int) and not isinstance(value, bool):
            mapping[str(key)] = value  # {"n01440764": 0}
        elif isinstance(value, list) and value and str(key).isdigit():
            mapping[str(value[0])] = int(key)  # ImageNet's {"0": ["n01440764", "tench"]}
        else:
            raise ConfigError(
                f"dataset.class_index={path}: entry {key!r} is neither \"folder\": index nor "
                "\"index\": [\"folder\", \"label\"]"
            )
    unknown = [f for f in folders if f not in mapping]
    if unknown:
        raise ConfigError(f"dataset.root={root}: folder(s) {unknown[:5]} are not in dataset.class_index={path}")
    return mapping, max(mapping.values()) + 1


def _listing(root: Path, extensions: Sequence[str]) -> tuple[list[str], list[Path], list[str]]:
    if not root.is_dir():
        raise ConfigError(f"dataset.root={root} is not a folder; expected {LAYOUT}")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(f"dataset.root={root} has no class sub-folders; expected {LAYOUT}")
    exts = tuple(e.lower() for e in extensions)
    files: list[Path] = []
    classes: list[str] = []
    for name in folders:
        for f in sorted((root / name).iterdir()):
            if f.is_file() and f.suffix.lower() in exts:
                files.append(f)
                classes.append(name)
    if not files:
        raise ConfigError(f"dataset.root={root}: its class folder(s) {_names(folders)} hold no images with suffix "
                          f"{', '.join(exts)}; expected {LAYOUT}")
    return folders, files, classes


def _names(folders: Sequence[str]) -> str:
    shown = ", ".join(repr(f) for f in folders[:5])
    return shown + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")


def _refuse_empty_classes(root: Path, folders: list[str], classes: list[str], extensions: Sequence[str]) -> None:
    """Without a class index every sub-folder is a class: an empty one would take a class index and shift
    the labels of every folder sorted after it, so it is named instead of counted."""
    present = set(classes)
    empty = [f for f in folders if f not in present]
    if empty:
        raise ConfigError(
            f"dataset.root={root}: class folder(s) {_names(empty)} hold no images with suffix "
            f"{', '.join(extensions)}; each sub-folder is a class (index = its sorted position), so an empty one "
            "would shift the labels of the folders after it. Add its images, remove it, or give "
            "dataset.class_index to fix the class indices"
        )


class ImageFolderSet(LazyDataset):
    """Files and labels listed up front; pixels decoded per slice by at most ``workers`` threads."""

    def __init__(self, name: str, num_classes: int, files: list[Path], labels: np.ndarray, order: np.ndarray,
                 mode: str, resize: int | None, crop: int | None, workers: int, root: Path | None = None) -> None:
        self._files, self._mode, self._resize, self._crop, self._workers = files, mode, resize, crop, workers
        self._root, self._all_labels = root, labels
        first = self._decode_one(files[int(order[0])] if len(order) else files[0])
        c, h, w = (int(v) for v in first.shape)
        super().__init__(name, num_classes, labels, order, (c, h, w))

    def _decode_one(self, path: Path) -> np.ndarray:
        """C×H×W samples: uint8 (8-bit files) or float32 in [0, 1] (16-bit files, docs/models-and-data.md)."""
        from PIL import Image

        try:
            with Image.open(path) as opened:
                if sample_depth(opened, path) == 16:
                    return self._decode16(opened, path)
                img = self._resize_crop(opened.convert(self._mode), path)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ConfigError(
                f"image {path} cannot be decoded ({exc}); it is corrupt, truncated or not an image"
            ) from None
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return arr.transpose(2, 0, 1).copy()  # Pillow's buffer is read-only; torch wants its own

    def _decode16(self, opened: Any, path: Path) -> np.ndarray:
        """A 16-bit file: samples / 65535 as float32, then the same resize and crop, per channel in mode F."""
        from PIL import Image

        arr = to_channels(read16(opened, path), 3 if self._mode == "RGB" else 1)
        planes = [np.asarray(self._resize_crop(Image.fromarray(np.ascontiguousarray(arr[:, :, c]), mode="F"), path))
                  for c in range(arr.shape[2])]
        return np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)  # clip: float rounding of the filter only

    def _resize_crop(self, img: Any, path: Path) -> Any:
        from PIL import Image

        if self._resize:
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self._resize * long / short)
            size = (self._resize, new_long) if w <= h else (new_long, self._resize)
            img = img.resize(size, Image.Resampling.BILINEAR)
        if self._crop:
            img = _center_crop(img, self._crop, path)
        return img

    def content_source(self) -> FileSource | None:
        """Every listed file with its label (engine/data/fingerprint.py), and the decoder's version."""
        if self._root is None:
            return None
        import PIL

        decoder = f"pillow {PIL.__version__}; samples / 255 or / 65535 by bit depth"
        return FileSource("image folder", self.name, self._root, tuple(self._files),
                          tuple(self._all_labels.tolist()), {"num_classes": self.num_classes, "decoder": decoder},
                          self._workers)

    def decode(self, indices: np.ndarray) -> torch.Tensor:
        paths = [self._files[int(i)] for i in indices]
        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            arrays = list(pool.map(self._decode_one, paths))
        for path, arr in zip(paths, arrays, strict=True):
            if arr.shape != self.image_shape:
                raise ConfigError(
                    f"image {path} is {arr.shape[2]}×{arr.shape[1]} but the first image is "
                    f"{self.image_shape[2]}×{self.image_shape[1]}; set dataset.crop (and dataset.resize) "
                    "so every image comes out the same size"
                )
        if not arrays:
            return torch.zeros((0, *self.image_shape))
        # 8-bit rows as torch divides them, 16-bit rows already divided by 65535: one float32 batch either way
        return torch.stack([torch.from_numpy(a).float().div_(255.0) if a.dtype == np.uint8 else torch.from_numpy(a)
                            for a in arrays])


def _center_crop(img, size: int, path: Path):  # type: ignore[no-untyped-def]
    w, h = img.size
    if w < size or h < size:
        raise ConfigError(f"image {path} is {w}×{h}, smaller than dataset.crop={size}; set dataset.resize ≥ crop")
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


_CHECKED: set[str] = set()  # listings (paths, sizes, mtimes) whose headers passed in this process


def _stamp(files: list[Path]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _check_headers(files: list[Path], workers: int) -> None:
    """Open every file's header (cheap, no pixel decoding): a non-image or empty file fails up front.

    The planner and the evaluator both load the dataset; an unchanged listing is checked once per process.
    """
    from PIL import Image

    stamp = _stamp(files)
    if stamp in _CHECKED:
        return

    def check(path: Path) -> str | None:
        try:
            with Image.open(path) as img:
                sample_depth(img, path)  # a mode with no exact [0, 1] map fails here, before any compute
                img.verify()
        except ConfigError as exc:
            return str(exc)
        except Exception as exc:
            return f"image {path} is not a readable image ({exc or type(exc).__name__}); remove or replace it"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for problem in pool.map(check, files):
            if problem:
                raise ConfigError(problem)
    _CHECKED.add(stamp)


def load_image_folder(
    root: str, name: str = "image_folder", class_index: str | None = None, resize: int | None = None,
    crop: int | None = None, channels: int = 3, workers: int = 4, check: str = "header",
    extensions: Sequence[str] = EXTENSIONS, subset: str = "first", subset_seed: int = 0,
) -> ImageFolderSet:
    """List the tree, check each file's header (``check: header``), decode pixels only per slice."""
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels={channels!r} must be 1 (grayscale) or 3 (RGB)")
    for key, value in (("resize", resize), ("crop", crop)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"dataset.{key}={value!r} must be a positive integer or null")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ConfigError(f"dataset.workers={workers!r} must be an integer 1-64 (decoding threads)")
    if check not in CHECKS:
        raise ConfigError(f"dataset.check={check!r} is not one of {', '.join(CHECKS)}")
    base = Path(required_path(root, "root", LAYOUT)).expanduser()
    folders, files, classes = _listing(base, extensions)
    if class_index is None:
        _refuse_empty_classes(base, folders, classes, extensions)
    mapping, num_classes = _class_index(base, folders, class_index)
    labels = np.array([mapping[c] for c in classes], dtype=np.int64)
    check_labels(labels, num_classes, f"dataset.class_index={class_index}")
    if check == "header":
        _check_headers(files, min(workers, os.cpu_count() or 1))
    order = subset_order(len(files), subset, subset_seed)
    return ImageFolderSet(user_dataset_name(name, "image_folder"), num_classes, files, labels, order,
                          "RGB" if channels == 3 else "L", resize, crop, workers, base)
