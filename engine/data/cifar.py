"""CIFAR-10 / CIFAR-100 from a local folder, python or binary layout, read without running code.

Layouts (as released by Krizhevsky; ``root`` may be the parent folder or the layout folder itself):

- CIFAR-10 python: ``cifar-10-batches-py/test_batch`` (``data_batch_1…5`` for ``split: train``),
  a pickled dict with ``data`` (N×3072 uint8, channel-major) and ``labels``;
- CIFAR-10 binary: ``cifar-10-batches-bin/test_batch.bin``, records of 1 label byte + 3072 pixel bytes;
- CIFAR-100 python: ``cifar-100-python/test`` (``train``) with ``fine_labels`` / ``coarse_labels``;
- CIFAR-100 binary: ``cifar-100-binary/test.bin``, records of coarse byte, fine byte, 3072 pixel bytes.

Python batches go through :mod:`engine.data.restricted_pickle`, never ``pickle.load``.
The uint8 pixels of the split stay in memory (30 MB for a test split); rows are
converted to float only when a task asks for them. ``sample_id`` = row index in the split.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data import LazyDataset, check_labels, fixed_dataset_name, required_path, subset_order
from engine.data.fingerprint import FileSource
from engine.data.restricted_pickle import restricted_load
from engine.errors import ConfigError

LAYOUTS = ("auto", "python", "binary")
PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class _Spec:
    name: str
    py_dir: str
    bin_dir: str
    py_files: dict[str, tuple[str, ...]]
    bin_files: dict[str, tuple[str, ...]]


CIFAR10 = _Spec(
    "cifar10", "cifar-10-batches-py", "cifar-10-batches-bin",
    {"test": ("test_batch",), "train": tuple(f"data_batch_{i}" for i in range(1, 6))},
    {"test": ("test_batch.bin",), "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6))},
)
CIFAR100 = _Spec(
    "cifar100", "cifar-100-python", "cifar-100-binary",
    {"test": ("test",), "train": ("train",)},
    {"test": ("test.bin",), "train": ("train.bin",)},
)


class CifarSet(LazyDataset):
    """A CIFAR split held as uint8 N×3×32×32; float rows are made per slice."""

    def __init__(self, name: str, num_classes: int, pixels: np.ndarray, labels: np.ndarray,
                 order: np.ndarray, files: Sequence[Path] = (), layout: str = "") -> None:
        super().__init__(name, num_classes, labels, order, (3, 32, 32))
        self._pixels, self._files, self._layout = pixels, list(files), layout

    def content_source(self) -> FileSource | None:
        """The split's batch files (engine/data/fingerprint.py)."""
        if not self._files:
            return None
        return FileSource(f"CIFAR {self._layout} batches", self.name, self._files[0].parent, tuple(self._files),
                          extra={"num_classes": self.num_classes})

    def decode(self, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self._pixels[indices]).float().div_(255.0)


def _layout_expected(spec: _Spec, split: str) -> str:
    return (f"expected {spec.py_dir}/{spec.py_files[split][0]} (python layout) or "
            f"{spec.bin_dir}/{spec.bin_files[split][0]} (binary layout) under it")


def _find(spec: _Spec, root: Path, split: str, layout: str) -> tuple[str, list[Path]]:
    """The layout and the split's files; a clear error naming what was expected."""
    if layout not in LAYOUTS:
        raise ConfigError(f"dataset.layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise ConfigError(f"dataset.root={root} is not a folder; {_layout_expected(spec, split)}")
    candidates = []
    if layout in ("auto", "python"):
        candidates += [("python", d, spec.py_files[split]) for d in (root / spec.py_dir, root)]
    if layout in ("auto", "binary"):
        candidates += [("binary", d, spec.bin_files[split]) for d in (root / spec.bin_dir, root)]
    for kind, folder, names in candidates:
        if (folder / names[0]).is_file():
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise ConfigError(f"dataset.root={root}: {folder} lacks {', '.join(missing)} of the {split} split")
            return kind, [folder / n for n in names]
    raise ConfigError(f"dataset.root={root} holds no {spec.name} {split} split; {_layout_expected(spec, split)}")


def _read_python(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch: Any = restricted_load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError,
            OverflowError) as exc:
        raise ConfigError(
            f"{path}: not a readable CIFAR python batch ({exc}); expected a pickled dict with "
            "'data' (N×3072 uint8) and labels. Only plain data is unpickled, never code."
        ) from None
    if not isinstance(batch, dict):
        raise ConfigError(f"{path}: holds a {type(batch).__name__}, expected a dict with 'data' and labels")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise ConfigError(f"{path}: keys {sorted(map(str, batch))}; expected 'data' and {label_key!r}")
    data = batch["data"]
    labels = _integer_labels(batch[label_key], path, label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS \
            or len(labels) != len(data):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: 'data' is {what} with {len(labels)} labels; expected uint8 N×{PIXELS} and N labels")
    return data.reshape(-1, 3, 32, 32), labels


def _integer_labels(raw: Any, path: Path, key: str) -> np.ndarray:
    """The batch's labels as int64; text, fractions, booleans and out-of-int64 values are named, never cast."""
    items = raw.tolist() if isinstance(raw, np.ndarray) and raw.ndim == 1 else raw
    if not isinstance(items, list | tuple):
        shape = f" of shape {raw.shape}" if isinstance(raw, np.ndarray) else ""
        raise ConfigError(f"{path}: {key!r} is a {type(raw).__name__}{shape}; expected a list of integer class indices")
    for i, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(
                f"{path}: {key!r} holds {v!r} ({type(v).__name__}) at index {i}; expected integer class indices "
                "(a text or fractional label is refused, never cast)"
            )
        if not -(2**63) <= v < 2**63:
            raise ConfigError(f"{path}: label {v} at index {i} of {key!r} is not a class index (beyond 64-bit "
                              "integers); the batch is damaged or not a CIFAR batch")
    return np.asarray(items, dtype=np.int64).reshape(-1)


def _read_binary(path: Path, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + PIXELS
    if raw.size == 0 or raw.size % record:
        raise ConfigError(
            f"{path}: {raw.size} bytes is not a whole number of {record}-byte records "
            f"({label_bytes} label byte(s) + {PIXELS} pixels); the file is truncated or not this layout"
        )
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_index].astype(np.int64)


def _load(spec: _Spec, root: str, split: str, layout: str, subset: str, subset_seed: int,
          label_key: str, num_classes: int, bin_label: tuple[int, int], name: str) -> CifarSet:
    if split not in spec.py_files:
        raise ConfigError(f"dataset.split={split!r} is not one of {', '.join(spec.py_files)}")
    base = Path(required_path(root, "root", f"a folder; {_layout_expected(spec, split)}")).expanduser()
    kind, files = _find(spec, base, split, layout)
    parts = [_read_python(f, label_key) if kind == "python" else _read_binary(f, *bin_label) for f in files]
    pixels = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    if not len(labels):
        raise ConfigError(f"{', '.join(map(str, files))}: the {split} split holds 0 images; the file is empty or "
                          "was cut short; restore it from the release")
    check_labels(labels, num_classes, ", ".join(map(str, files)))
    return CifarSet(name, num_classes, pixels, labels, subset_order(len(labels), subset, subset_seed), files, kind)


def load_cifar10(root: str, split: str = "test", layout: str = "auto", subset: str = "first",
                 subset_seed: int = 0, name: str = "cifar10") -> CifarSet:
    """CIFAR-10 ``split`` from ``root`` (python or binary layout, see the module docstring)."""
    fixed_dataset_name(name, "cifar10")
    return _load(CIFAR10, root, split, layout, subset, subset_seed, "labels", 10, (1, 0), "cifar10")


def load_cifar100(root: str, split: str = "test", layout: str = "auto", subset: str = "first",
                  subset_seed: int = 0, label_type: str = "fine", name: str | None = None) -> CifarSet:
    """CIFAR-100 ``split``; ``label_type`` fine (100 classes) or coarse (20 superclasses)."""
    if label_type not in ("fine", "coarse"):
        raise ConfigError(f"dataset.label_type={label_type!r} is not one of fine, coarse")
    fine = label_type == "fine"
    fixed_dataset_name(name or ("cifar100" if fine else "cifar100_coarse"), "cifar100" if fine else "cifar100_coarse")
    return _load(CIFAR100, root, split, layout, subset, subset_seed, f"{label_type}_labels",
                 100 if fine else 20, (2, 1 if fine else 0), "cifar100" if fine else "cifar100_coarse")
