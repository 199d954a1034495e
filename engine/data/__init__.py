"""Datasets as in-memory tensors: images in [0, 1] (NCHW), labels, stable sample ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    def slice(self, start: int, stop: int) -> SampleSet:
        """Rows ``start:stop`` (positions in this set, not sample ids)."""
        return SampleSet(
            self.name,
            self.images[start:stop],
            self.labels[start:stop],
            self.sample_ids[start:stop],
            self.num_classes,
        )
