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
from engine.runners.base import REPORT_INTERVAL_S, RunContext, WorkBatcher, oom_message

WORKER = "local"


def set_threads(n: int) -> int:
    """Set (when loaded) numba's and then torch's CPU threads to ``n``; return torch's previous count.

    numba's OpenMP layer shares the OpenMP runtime with torch, and launching its thread pool (its first
    parallel kernel, or ``numba.set_num_threads``) sets the runtime's count to NUMBA_NUM_THREADS, every core
    by default. Torch then ran 2-thread teams in a process set to 1 thread, from the first corruption on: on
    a loaded 2-core machine the default sweep took 233 s instead of 41 s (docs/BENCHMARKS.md, "Ray under
    contention"), and a model built after that point got another thread count. So numba's pool is started
    first, then torch's count set.
    """
    before = torch.get_num_threads()
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)
    return before


@dataclass
class LocalRunner:
    """The in-process backend. ``threads``: torch/numba CPU threads while it runs (None: torch's count as it is,
    held there while the tasks run)."""

    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"runner.threads={self.threads} must be ≥ 1, or null for torch's default")

    def run(self, tasks: Sequence[Task], ctx: RunContext) -> Iterator[TaskResult]:
        res = ctx.resources if ctx.resources is not None else Resources(ctx.device)
        before = set_threads(self.threads if self.threads is not None else torch.get_num_threads())
        try:
            ctx.events.worker_ready(WORKER, str(res.device))
            for task in tasks:
                ctx.events.task_started(task, WORKER)
                report = WorkBatcher(functools.partial(ctx.on_work, task), REPORT_INTERVAL_S)
                try:
                    yield evaluate(task, res, on_batch=report.batch_done, on_work=report)
                except torch.OutOfMemoryError:
                    raise GauntletError(oom_message(task, str(res.device))) from None
        finally:
            set_threads(before)
