"""The runner interface: given tasks, yield results as they finish. Runners never write files."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from engine.evaluation.resources import Resources
from engine.evaluation.tasks import Task, TaskResult

# (task, evals spent, planned evals found unnecessary, samples finished, seconds of work since the task's last report)
WorkDone = Callable[[Task, int, int, int, float], None]
REPORT_INTERVAL_S = 0.25  # how often an in-process task hands its progress to the driver


class WorkBatcher:
    """A task's progress, collected from the evaluator's frequent reports (evals, and samples through every
    level at each batch end) and handed on at most every ``interval_s`` (for a Ray actor one fire-and-forget
    message per interval, never a round trip per batch), with the seconds of work since the last hand-over.
    ``clock`` is injectable for tests."""

    def __init__(self, send: Callable[[int, int, int, float], None], interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.send, self.interval_s, self.clock = send, interval_s, clock
        self.last = clock()
        self.spent = self.skipped = self.samples = 0

    def __call__(self, spent: int, skipped: int) -> None:
        self.spent += spent
        self.skipped += skipped
        self._maybe_flush()

    def batch_done(self, samples: int) -> None:
        self.samples += samples
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Hand on what was collected (nothing when nothing was: its time goes with the next report)."""
        if not (self.spent or self.skipped or self.samples):
            return
        now = self.clock() if now is None else now
        self.send(self.spent, self.skipped, self.samples, now - self.last)
        self.spent = self.skipped = self.samples = 0
        self.last = now


class RunEvents:
    """What a runner tells the driver besides results (no-ops here; ``engine.runners.progress`` listens)."""

    def worker_ready(self, worker: str, device: str) -> None:
        """A worker (the local process, a Ray actor) is up on ``device``."""

    def task_started(self, task: Task, worker: str) -> None:
        """``worker`` is now running ``task``."""

    def task_retried(self, task: Task, reason: str) -> None:
        """``task`` lost its worker and goes back to the queue; progress reported for it so far is void."""


@dataclass(frozen=True)
class RunContext:
    """What the driver hands a runner: the device, a progress callback, and (in-process) its caches."""

    device: torch.device
    on_work: WorkDone
    resources: Resources | None = None
    events: RunEvents = field(default_factory=RunEvents)


class Runner(Protocol):
    """Any backend that can evaluate tasks (in this process, in Ray actors, ...).

    Contract: every ``TaskResult`` a runner yields comes from ``engine.evaluation.evaluate.evaluate``
    (which verifies each perturbed batch against its threat model); a runner never builds
    rows itself, never writes files, and yields each task at most once.
    """

    def run(self, tasks: Sequence[Task], ctx: RunContext) -> Iterator[TaskResult]:
        """Yield one ``TaskResult`` per task (any order); ``ctx.on_work`` reports progress within tasks."""
        ...


def default_threads() -> int:
    """CPU threads of one evaluation when ``runner.threads`` is null, the same for every runner.

    torch's default in the driver process: its physical cores, or ``OMP_NUM_THREADS`` when set.
    CPU float reductions (convolutions, matmuls) depend on the thread count, so evaluations with
    equal threads give bit-identical rows; ``runner=local`` and ``runner=ray`` both resolve a null
    ``runner.threads`` through here (README, "Running on a cluster").
    """
    return max(1, torch.get_num_threads())


def oom_message(task: Task, device: str) -> str:
    """The user-facing message for a CUDA out-of-memory error: which task, where, and the fix."""
    smaller = max(1, task.batch_size // 2)
    return (
        f"CUDA ran out of memory on {device} evaluating {task.describe()} (task {task.task_id}, "
        f"batch_size={task.batch_size}). Lower it, e.g. batch_size={smaller}, or give the model a whole GPU "
        "(runner=ray runner.gpus_per_actor=1)."
    )
