"""Run tasks one after another in this process, sharing the driver's cache of models and datasets."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch

from engine.errors import GauntletError
from engine.evaluate import evaluate
from engine.resources import Resources
from engine.runners.base import RunContext, oom_message
from engine.tasks import Task, TaskResult

WORKER = "local"


class LocalRunner:
    """The in-process backend."""

    def run(self, tasks: Sequence[Task], ctx: RunContext) -> Iterator[TaskResult]:
        res = ctx.resources if ctx.resources is not None else Resources(ctx.device)
        ctx.events.worker_ready(WORKER, str(res.device))
        for task in tasks:
            ctx.events.task_started(task, WORKER)
            try:
                yield evaluate(task, res, on_batch=functools.partial(ctx.on_samples, task))
            except torch.OutOfMemoryError:
                raise GauntletError(oom_message(task, str(res.device))) from None
