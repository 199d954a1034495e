"""Which perturbed inputs a task keeps (``save_examples``): chosen as rows are scored, capped per task.

The kept examples travel inside the task's ``TaskResult`` (from a Ray actor too); only the
driver writes them (engine/store/examples.py). ``broken`` keeps a row that is misclassified and
whose input was changed (``correct`` false and ``perturbation_size`` > 0: for attacks exactly the
rows with a ``broken_by``); ``all`` keeps every row of an attack or corruption. The cap is shared
fairly between levels: the first kept sample of every level, then the second of every level, …
(sample order), so a capped task still has examples at every level. Nothing depends on the batch
layout, so a resumed or a Ray sweep keeps the same set.
"""

from __future__ import annotations

import numpy as np
import torch

SAVE_MODES = ("none", "broken", "all")
DEFAULT_CAP = 2000  # the default sweep's largest task has 7 levels × 200 samples: every broken one fits


class ExampleCollector:
    """Collect one task's examples level by level; at most ``cap`` per level are held (no more can be kept)."""

    def __init__(self, mode: str, cap: int, family: str) -> None:
        self.mode, self.cap = mode, cap
        self.active = mode != "none" and family in ("attack", "corruption")
        self.parts: dict[float, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.held: dict[float, int] = {}

    def add(self, level: float, clean: torch.Tensor, x: torch.Tensor, row: dict[str, np.ndarray]) -> None:
        """Keep the rows of one scored batch at ``level`` that the mode selects (``row``: the batch's columns)."""
        if not self.active:
            return
        if self.mode == "broken":
            keep = np.flatnonzero(~row["correct"] & (row["perturbation_size"] > 0))
        else:
            keep = np.arange(len(row["sample_id"]))
        keep = keep[: max(self.cap - self.held.get(level, 0), 0)]
        if not len(keep):
            return
        idx = torch.as_tensor(keep, device=x.device)
        self.parts.setdefault(level, []).append(
            (row["sample_id"][keep], x.detach()[idx].cpu().numpy(), clean.detach()[idx].cpu().numpy()))
        self.held[level] = self.held.get(level, 0) + len(keep)

    def finish(self, image_shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        """The kept examples sorted by (level, sample_id): ``level``, ``sample_id``, ``x`` and ``clean``
        (float32, N×C×H×W); empty arrays when none; None when the sweep saves no examples."""
        if self.mode == "none":
            return None
        levels, ids, xs, cleans, ranks = [], [], [], [], []
        for lv, parts in self.parts.items():
            sid = np.concatenate([p[0] for p in parts])
            levels.append(np.full(len(sid), lv, dtype=np.float64))
            ids.append(sid)
            xs.append(np.concatenate([p[1] for p in parts]))
            cleans.append(np.concatenate([p[2] for p in parts]))
            ranks.append(np.argsort(np.argsort(sid, kind="stable"), kind="stable"))
        if not levels:
            empty = np.zeros((0, *image_shape), dtype=np.float32)
            return {"level": np.zeros(0), "sample_id": np.zeros(0, dtype=np.int64), "x": empty, "clean": empty}
        level, sample_id, rank = np.concatenate(levels), np.concatenate(ids), np.concatenate(ranks)
        chosen = np.lexsort((level, rank))[: self.cap]  # round robin over levels: rank 0 of each, rank 1, …
        chosen = chosen[np.lexsort((sample_id[chosen], level[chosen]))]
        return {"level": level[chosen], "sample_id": sample_id[chosen].astype(np.int64),
                "x": np.concatenate(xs)[chosen].astype(np.float32, copy=False),
                "clean": np.concatenate(cleans)[chosen].astype(np.float32, copy=False)}
