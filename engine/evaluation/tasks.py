"""Units of work and their results: plain, frozen, picklable values that cross process boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Task:
    """One model × one perturbation × one contiguous range of dataset rows.

    ``task_id`` hashes everything that changes the rows (resolved configs,
    checkpoint sha256, the dataset's content identity, sample range, seed, and batch
    layout for perturbations whose random draws are per batch) and nothing else, so it is stable across
    runs, run order and sweeps that share the task.
    """

    task_id: str
    run_id: str
    model_name: str
    model: dict[str, Any] = field(compare=False)
    checkpoint_sha256: str
    dataset_name: str
    dataset: dict[str, Any] = field(compare=False)
    perturbation_name: str
    perturbation: dict[str, Any] = field(compare=False)
    start: int
    stop: int
    seed: int
    batch_size: int
    dataset_identity: str = ""  # sha256 of the dataset's content (engine/data/fingerprint.py), part of task_id
    # docs/results.md "Adversarial examples": which examples to keep (none | broken | all), at most how many;
    # they change no row, so they are not part of task_id
    save_examples: str = "none"
    examples_cap: int = 0
    quantize: str = "none"  # none | uint8 | uint16 (docs/attacks.md): in task_id when not none

    @property
    def n_samples(self) -> int:
        return self.stop - self.start

    def describe(self) -> str:
        return f"{self.model_name} × {self.perturbation_name} [{self.start}:{self.stop}]"


@dataclass(frozen=True)
class TaskResult:
    """Per-sample columns for one task (one entry per level × sample), plus timing."""

    task: Task
    columns: dict[str, np.ndarray]
    family: str
    norm: str | None
    seconds: float
    device: str
    worker: str = "local"  # who computed it: "local" or a Ray actor's name (progress and balance lines)
    # the kept examples (engine/evaluation/examples.py): level, sample_id, x, clean; None when none are saved
    examples: dict[str, np.ndarray] | None = None
    # a remote model's oracle spend for this task (engine/remote/accounting.stats_since), and the samples
    # excluded under on_error: skip; None for a local model
    remote: dict[str, Any] | None = None
