"""Datasets: labels and stable sample ids known up front, images decoded only for the rows a task asks for.

Two shapes share one interface (``name``, ``num_classes``, ``labels``, ``sample_ids``,
``len()``, ``slice(start, stop) → SampleSet``):

- :class:`SampleSet`: every image in memory (the embedded digits set, the released ``-C`` blocks,
  and what ``slice`` returns for a task's rows);
- :class:`LazyDataset`: a folder or file on disk; ``slice`` decodes only rows ``start:stop``, so an
  ImageNet-size folder is never held in memory whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from engine.errors import ConfigError


@dataclass(frozen=True)
class SampleSet:
    """A labelled image set; ``sample_ids`` are stable across runs and independent of any split or shard."""

    name: str
    images: torch.Tensor  # float32, N×C×H×W, in [0, 1]
    labels: torch.Tensor  # int64, N
    sample_ids: torch.Tensor  # int64, N
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def slice(self, start: int, stop: int) -> SampleSet:
        """Rows ``start:stop`` (positions in this set, not sample ids)."""
        return SampleSet(
            self.name,
            self.images[start:stop],
            self.labels[start:stop],
            self.sample_ids[start:stop],
            self.num_classes,
        )

    def take(self, positions: Sequence[int] | np.ndarray) -> SampleSet:
        """Rows at ``positions`` (in this set's order), e.g. the few samples a sanity check re-attacks."""
        idx = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return SampleSet(self.name, self.images[idx], self.labels[idx], self.sample_ids[idx], self.num_classes)


@runtime_checkable
class Dataset(Protocol):
    """What the planner and the evaluator need from any dataset."""

    @property
    def name(self) -> str: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def labels(self) -> torch.Tensor: ...

    @property
    def sample_ids(self) -> torch.Tensor: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def __len__(self) -> int: ...

    def slice(self, start: int, stop: int) -> SampleSet: ...

    def take(self, positions: Sequence[int] | np.ndarray) -> SampleSet: ...


SUBSETS = ("first", "random")


def subset_order(n: int, subset: str, subset_seed: int) -> np.ndarray:
    """Row order over the full set: ``first`` keeps file order; ``random`` a seeded permutation.

    The sweep evaluates the first ``n_examples`` rows of this order, so ``random`` gives a seeded
    N-sample subset that only grows (never reshuffles) when N grows; sample ids stay full-set indices.
    """
    if subset not in SUBSETS:
        raise ConfigError(f"dataset.subset={subset!r} is not one of {', '.join(SUBSETS)}")
    if subset == "first":
        return np.arange(n, dtype=np.int64)
    if isinstance(subset_seed, bool) or not isinstance(subset_seed, int):
        raise ConfigError(f"dataset.subset_seed={subset_seed!r} must be an integer")
    return np.random.default_rng(subset_seed).permutation(n).astype(np.int64)


class LazyDataset:
    """A dataset whose labels are in memory and whose images are decoded on demand.

    Subclasses set ``name``, ``num_classes``, the full-set labels, the row ``order``
    (indices into the full set, see :func:`subset_order`) and implement :meth:`decode`.
    """

    name: str
    num_classes: int

    def __init__(self, name: str, num_classes: int, all_labels: np.ndarray, order: np.ndarray,
                 image_shape: tuple[int, int, int]) -> None:
        self.name = name
        self.num_classes = num_classes
        self._order = order
        self._labels = torch.from_numpy(np.ascontiguousarray(all_labels[order]).astype(np.int64))
        self._ids = torch.from_numpy(order.astype(np.int64))
        self._shape = image_shape

    def __len__(self) -> int:
        return len(self._order)

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    @property
    def sample_ids(self) -> torch.Tensor:
        return self._ids

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape

    def decode(self, indices: np.ndarray) -> torch.Tensor:
        """float32 K×C×H×W images in [0, 1] for these full-set indices (in this order)."""
        raise NotImplementedError

    def slice(self, start: int, stop: int) -> SampleSet:
        """Decode rows ``start:stop`` of this dataset's order; nothing else is read."""
        idx = self._order[start:stop]
        images = self.decode(idx)
        return SampleSet(self.name, images, self._labels[start:stop], self._ids[start:stop], self.num_classes)

    def take(self, positions: Sequence[int] | np.ndarray) -> SampleSet:
        """Decode only the rows at ``positions`` (in this dataset's order)."""
        pos = np.asarray(positions, dtype=np.int64)
        sel = torch.from_numpy(pos)
        return SampleSet(self.name, self.decode(self._order[pos]), self._labels[sel], self._ids[sel], self.num_classes)

    def nbytes(self, n: int | None = None) -> int:
        """Bytes the first ``n`` rows (all by default) take once decoded as float32, without decoding them."""
        c, h, w = self._shape
        return (len(self) if n is None else min(n, len(self))) * c * h * w * 4


def required_path(value: object, key: str, expected: str) -> str:
    """The config value of a path key; a clear error when it was left at ``???`` or empty."""
    text = "" if value is None else str(value)
    if text in ("", "???"):
        raise ConfigError(f"dataset.{key} is not set; pass dataset.{key}=/path/to/data (expected {expected})")
    return text


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Every label must be an integer class index in ``[0, num_classes)``."""
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise ConfigError(
            f"{where}: label {int(labels[bad])} at index {bad} is outside 0…{num_classes - 1} "
            f"({num_classes} classes)"
        )


# Names only Gauntlet's own loaders may record: a generic loader (image folder, npz) cannot relabel
# its rows as one of these, so the ``dataset`` column always says which data produced a number.
RESERVED_NAMES = {
    "digits": "engine.data.digits.load_digits",
    "cifar10": "engine.data.cifar.load_cifar10",
    "cifar100": "engine.data.cifar.load_cifar100",
    "cifar100_coarse": "engine.data.cifar.load_cifar100",
}


def fixed_dataset_name(name: str, fixed: str) -> str:
    """Gauntlet's own loaders record their data under one name; an override cannot relabel it."""
    if name != fixed:
        raise ConfigError(
            f"dataset.name={name!r}: this loader records its rows as {fixed!r}; a name cannot relabel one dataset "
            "as another. Drop the override, or load the other data with its own dataset config."
        )
    return fixed


def user_dataset_name(name: str, loader: str) -> str:
    """A name for rows of a generic loader; refuses the names of Gauntlet's dedicated loaders."""
    name = str(name).strip()
    if not name:
        raise ConfigError(f"dataset.name is empty; give the {loader} data a name for the results")
    if name.lower() in RESERVED_NAMES:
        raise ConfigError(
            f"dataset.name={name!r} is the name of {RESERVED_NAMES[name.lower()]}'s data; a {loader} dataset "
            f"cannot be recorded as it. Use dataset={name.lower()} to load that data, or another name."
        )
    return name
