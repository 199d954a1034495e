"""Images and labels from one ``.npz`` file, read with ``allow_pickle=False`` (no object arrays, no code).

``x``: N×H×W×C (or N×H×W) uint8 in 0-255, or N×C×H×W float in [0, 1]; ``y``: N integer labels.
``layout: nhwc | nchw`` overrides the dtype's default. ``sample_id`` = row index in the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from engine.data import LazyDataset, check_labels, required_path, subset_order, user_dataset_name
from engine.data.fingerprint import FileSource
from engine.errors import ConfigError

LAYOUTS = ("auto", "nhwc", "nchw")
EXPECTED = "x: N×H×W×C uint8 (0-255) or N×C×H×W float in [0, 1], y: N integer labels"


class ArraySet(LazyDataset):
    """Images kept as stored (uint8 or float, N×C×H×W view); float32 rows made per slice."""

    def __init__(self, name: str, num_classes: int, x: np.ndarray, labels: np.ndarray, order: np.ndarray,
                 path: Path | None = None) -> None:
        super().__init__(name, num_classes, labels, order, (int(x.shape[1]), int(x.shape[2]), int(x.shape[3])))
        self._x, self._path = x, path

    def content_source(self) -> FileSource | None:
        """The .npz file (engine/data/fingerprint.py)."""
        if self._path is None:
            return None
        return FileSource("npz file", self.name, self._path.parent, (self._path,),
                          extra={"num_classes": self.num_classes})

    def decode(self, indices: np.ndarray) -> torch.Tensor:
        rows = np.ascontiguousarray(self._x[indices])
        out = torch.from_numpy(rows).float()
        return out.div_(255.0) if rows.dtype == np.uint8 else out


def _read(path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"dataset.path={path} is not a file; expected an .npz with {EXPECTED}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: the file is empty (0 bytes); write the arrays into it ({EXPECTED})")
    if not zipfile.is_zipfile(path):  # np.load would treat anything else as .npy or a pickle
        with path.open("rb") as f:
            head = f.read(8)
        what = ("a pickle (it was not unpickled)" if head[:1] == b"\x80"
                else "an .npy array" if head.startswith(b"\x93NUMPY") else "not a zip archive")
        raise ConfigError(f"{path}: not a readable .npz ({what}); expected an .npz with {EXPECTED}")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if not keys:
                raise ConfigError(f"{path}: an empty .npz (it holds no arrays); expected {EXPECTED}")
            if x_key not in keys or y_key not in keys:
                raise ConfigError(f"{path}: arrays {keys}; expected {x_key!r} and {y_key!r} ({EXPECTED})")
            return f[x_key], f[y_key]
    except ConfigError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused
        raise ConfigError(f"{path}: {exc}; store plain numeric arrays ({EXPECTED})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"{path}: not a readable .npz ({exc}); expected {EXPECTED}") from None


def _to_nchw(x: np.ndarray, layout: str, path: Path) -> np.ndarray:
    if layout not in LAYOUTS:
        raise ConfigError(f"dataset.layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if x.ndim == 3:
        x, layout = x[:, None], "nchw"  # N×H×W grayscale
    if x.ndim != 4:
        raise ConfigError(f"{path}: x has shape {x.shape}; expected {EXPECTED}")
    if layout == "auto":
        layout = "nhwc" if x.dtype == np.uint8 else "nchw"
    if layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ConfigError(
            f"{path}: x read as {layout.upper()} has {x.shape[1]} channels; set dataset.layout=nhwc or nchw "
            f"({EXPECTED})"
        )
    return x


MAX_INFERRED_CLASSES = 100_000  # ImageNet-21k has 21,841 classes; a larger max(y) + 1 is a stray label


def _inferred_classes(labels: np.ndarray, path: str) -> int:
    """``max(y) + 1``, unless the largest label stands far from the rest (a stray value such as 255 or 10⁹):
    then the label is named, not turned into a class count the model could never match."""
    top = int(labels.max())
    rest = labels[labels != top]
    second = int(rest.max()) if rest.size else -1
    stray = top >= MAX_INFERRED_CLASSES or (second >= 0 and top >= 16 and top > 2 * second + 1)
    if stray:
        at = int(np.flatnonzero(labels == top)[0])
        others = f"the other labels are ≤ {second}" if second >= 0 else "it is the only label"
        raise ConfigError(
            f"{path} (y): label {top} at index {at} would make {top + 1:,} classes (dataset.num_classes is inferred "
            f"as max(y) + 1) but {others}; a stray label? Fix that label, or set dataset.num_classes to the "
            "model's class count (labels outside it are then named)"
        )
    return top + 1


def load_npz(path: str, name: str = "npz", x_key: str = "x", y_key: str = "y", num_classes: int | None = None,
             layout: str = "auto", subset: str = "first", subset_seed: int = 0) -> ArraySet:
    """``x`` / ``y`` of ``path``; ``num_classes`` defaults to ``max(y) + 1``."""
    file = Path(required_path(path, "path", f"an .npz file with {EXPECTED}")).expanduser()
    x, y = _read(file, x_key, y_key)
    if x.dtype == np.uint8:
        pass
    elif x.dtype in (np.float16, np.float32, np.float64):
        lo, hi = float(np.min(x)) if x.size else 0.0, float(np.max(x)) if x.size else 0.0
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
            raise ConfigError(
                f"{path}: float x spans [{lo:g}, {hi:g}]; expected pixels in [0, 1] "
                "(store uint8 0-255, or divide by 255; normalisation belongs in model.<name>.mean/std)"
            )
    else:
        raise ConfigError(f"{path}: x has dtype {x.dtype}; expected uint8 or float ({EXPECTED})")
    x = _to_nchw(x, layout, file)
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{path}: y is {y.dtype} {y.shape} for {len(x)} images; expected {len(x)} integer labels")
    if not len(x):
        raise ConfigError(f"{path}: x and y hold 0 images; the dataset is empty — write the images "
                          f"into it ({EXPECTED})")
    if y.dtype.kind == "u" and int(y.max()) >= 2**63:
        raise ConfigError(f"{path} (y): label {int(y.max())} is beyond 64-bit class indices; fix that label")
    labels = y.astype(np.int64)
    k = int(num_classes) if num_classes is not None else _inferred_classes(labels, path)
    check_labels(labels, k, f"{path} (y)")
    return ArraySet(user_dataset_name(name, "npz"), k, x, labels, subset_order(len(labels), subset, subset_seed),
                    file)
