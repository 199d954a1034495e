"""A dataset config that selects samples of another one: a seeded random subset, or an explicit list of ids.

Used as ``dataset: {_target_: engine.claims.subset.subset_of, base: {...}, ...}`` so a
claim's subset and an escalation's "samples still robust" run through the normal
planner, evaluator and result store; sample ids are kept, so rows join across runs.

Any dataset layout works (engine.data.Dataset): an in-memory base is indexed
directly; a lazy one (CIFAR, image folder, .npz) is wrapped in a :class:`SubsetView`
that decodes only the rows a task slices, never the whole split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from engine.data import Dataset, SampleSet
from engine.errors import ConfigError


class SubsetView:
    """Rows ``positions`` of a lazy ``base`` dataset, in that order; images are decoded per slice/take."""

    def __init__(self, base: Dataset, positions: np.ndarray) -> None:
        self.base = base
        self.positions = positions.astype(np.int64)
        sel = torch.from_numpy(self.positions)
        self.name, self.num_classes = base.name, base.num_classes
        self._labels, self._ids = base.labels[sel], base.sample_ids[sel]

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    @property
    def sample_ids(self) -> torch.Tensor:
        return self._ids

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.base.image_shape

    def slice(self, start: int, stop: int) -> SampleSet:
        """Rows ``start:stop`` of the subset: the base decodes only those."""
        return self.base.take(self.positions[start:stop])

    def take(self, positions: Sequence[int] | np.ndarray) -> SampleSet:
        return self.base.take(self.positions[np.asarray(positions, dtype=np.int64)])


def subset_positions(base: Dataset, mode: str = "random", n: int | None = None, seed: int = 0,
                     ids: Sequence[int] | None = None) -> np.ndarray:
    """Positions in ``base`` of the ids ``ids`` (in that order), or of ``n`` samples (random: seeded; first)."""
    if ids is not None:
        pos = {int(s): i for i, s in enumerate(base.sample_ids.tolist())}
        missing = [int(s) for s in ids if int(s) not in pos]
        if missing:
            raise ConfigError(f"subset_of: sample ids {missing[:5]} are not in dataset {base.name!r}")
        return np.asarray([pos[int(s)] for s in ids], dtype=np.int64)
    if n is None or isinstance(n, bool) or n < 1 or n > len(base):
        raise ConfigError(f"subset: n={n!r} must be between 1 and the split's size ({len(base)} in "
                          f"dataset {base.name!r}); n_examples=N after the claim file checks fewer samples")
    if mode == "first":
        return np.arange(n, dtype=np.int64)
    if mode == "random":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randperm(len(base), generator=g)[:n].sort().values.numpy().astype(np.int64)
    raise ConfigError(f"subset: mode={mode!r}; valid modes: random, first")


def subset_of(base: Dataset, mode: str = "random", n: int | None = None, seed: int = 0,
              ids: Sequence[int] | None = None) -> Dataset:
    """``base`` restricted to ``ids`` (in that order), or to ``n`` samples (``mode`` random: seeded; first)."""
    if not isinstance(base, Dataset):
        raise ConfigError(f"subset_of: base must build a dataset (engine.data.Dataset), got {type(base).__name__}")
    positions = subset_positions(base, mode, n, seed, ids)
    if isinstance(base, SampleSet):
        return base.take(positions)
    return SubsetView(base, positions)


def ids_digest(ids: Sequence[int]) -> str:
    """sha256 of the sample ids in order (as ``id,id,…``): names a sample set in a verdict."""
    return hashlib.sha256(",".join(str(int(i)) for i in ids).encode()).hexdigest()
