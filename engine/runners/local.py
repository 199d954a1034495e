"""Run tasks one after another in this process, sharing the driver's cache of models and datasets."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

from engine.evaluate import evaluate
from engine.resources import Resources
from engine.runners.base import RunContext
from engine.tasks import Task, TaskResult


class LocalRunner:
    """The in-process backend."""

    def run(self, tasks: Sequence[Task], ctx: RunContext) -> Iterator[TaskResult]:
        res = ctx.resources if ctx.resources is not None else Resources(ctx.device)
        for task in tasks:
            yield evaluate(task, res, on_batch=functools.partial(ctx.on_samples, task))
