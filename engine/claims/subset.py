"""A dataset config that selects samples of another one: a seeded random subset, or an explicit list of ids.

Used as ``dataset: {_target_: engine.claims.subset.subset_of, base: {...}, ...}`` so a
claim's subset and an escalation's "samples still robust" run through the normal
planner, evaluator and result store; sample ids are kept, so rows join across runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.data import SampleSet
from engine.errors import ConfigError


def subset_of(base: SampleSet, mode: str = "random", n: int | None = None, seed: int = 0,
              ids: Sequence[int] | None = None) -> SampleSet:
    """``base`` restricted to ``ids`` (in that order), or to ``n`` samples (``mode`` random: seeded; first)."""
    if not isinstance(base, SampleSet):
        raise ConfigError(f"subset_of: base must build a dataset (a SampleSet), got {type(base).__name__}")
    if ids is not None:
        pos = {int(s): i for i, s in enumerate(base.sample_ids.tolist())}
        missing = [int(s) for s in ids if int(s) not in pos]
        if missing:
            raise ConfigError(f"subset_of: sample ids {missing[:5]} are not in dataset {base.name!r}")
        index = torch.tensor([pos[int(s)] for s in ids], dtype=torch.int64)
    else:
        if n is None or n < 1 or n > len(base):
            raise ConfigError(f"subset: n={n!r} must be between 1 and the split's size ({len(base)})")
        if mode == "first":
            index = torch.arange(n)
        elif mode == "random":
            g = torch.Generator().manual_seed(int(seed))
            index = torch.randperm(len(base), generator=g)[:n].sort().values
        else:
            raise ConfigError(f"subset: mode={mode!r}; valid modes: random, first")
    return SampleSet(base.name, base.images[index], base.labels[index], base.sample_ids[index], base.num_classes)
