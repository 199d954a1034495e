"""Run tasks one after another in this process, sharing the driver's cache of models and datasets."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from engine.errors import ConfigError, GauntletError
from engine.evaluation.evaluate import evaluate
from engine.evaluation.resources import Resources
from engine.evaluation.tasks import Task, TaskResult
from engine.runners.base import RunContext, oom_message

WORKER = "local"


def set_threads(n: int) -> int:
    """Set torch's (and, when loaded, numba's) CPU threads to ``n``; return torch's previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return before


@dataclass
class LocalRunner:
    """The in-process backend. ``threads``: torch/numba CPU threads while it runs (None: leave as is)."""

    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"runner.threads={self.threads} must be ≥ 1, or null for torch's default")

    def run(self, tasks: Sequence[Task], ctx: RunContext) -> Iterator[TaskResult]:
        res = ctx.resources if ctx.resources is not None else Resources(ctx.device)
        before = set_threads(self.threads) if self.threads is not None else None
        try:
            ctx.events.worker_ready(WORKER, str(res.device))
            for task in tasks:
                ctx.events.task_started(task, WORKER)
                try:
                    yield evaluate(task, res, on_batch=functools.partial(ctx.on_samples, task))
                except torch.OutOfMemoryError:
                    raise GauntletError(oom_message(task, str(res.device))) from None
        finally:
            if before is not None:
                set_threads(before)
