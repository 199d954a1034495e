"""The runner interface: given tasks, yield results as they finish. Runners never write files."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from engine.resources import Resources
from engine.tasks import Task, TaskResult

SamplesDone = Callable[[Task, int], None]


@dataclass(frozen=True)
class RunContext:
    """What the driver hands a runner: the device, a progress callback, and (in-process) its caches."""

    device: torch.device
    on_samples: SamplesDone
    resources: Resources | None = None


class Runner(Protocol):
    """Any backend that can evaluate tasks (in this process, in Ray actors, ...).

    Contract: every ``TaskResult`` a runner yields comes from ``engine.evaluate.evaluate``
    (which verifies each perturbed batch against its threat model); a runner never builds
    rows itself, never writes files, and yields each task at most once.
    """

    def run(self, tasks: Sequence[Task], ctx: RunContext) -> Iterator[TaskResult]:
        """Yield one ``TaskResult`` per task (any order); ``ctx.on_samples`` reports progress within tasks."""
        ...
