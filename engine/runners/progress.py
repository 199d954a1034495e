"""Tell the truth about a running sweep: a live bar over its work, or one log line per finished task.

The unit of work is one *eval*: one sample at one level of its perturbation, times the attack's own
budget per level (steps × restarts, queries, summed over a suite's members; 1 for clean and
corruptions), so a PGD-10 task of 200 samples × 7 ε is 14,000 evals and a clean one 200. Workers
report finished batches (``on_samples``); the ETA is the remaining evals at the sweep's average rate
since its first worker started, recomputed every second, so it grows honestly while a long attack
batch runs and reads ``?`` until the first batch is done. At the
end, one line per worker (device, tasks, samples/s, busy fraction) and the balance between them.
Runner-agnostic: no Ray here (runners call the ``RunEvents`` methods).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from tqdm.auto import tqdm

from engine.evaluation.tasks import Task, TaskResult
from engine.perturbations.base import Perturbation
from engine.runners.base import RunEvents

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how often the live bar is redrawn (elapsed, rate and ETA move even without reports)
SHOWN_RUNNING = 2  # running tasks named on the bar; the rest are counted


@dataclass
class WorkerStats:
    """What one worker did during the sweep (from the results it returned)."""

    name: str
    device: str
    tasks: int = 0
    samples: int = 0
    busy_s: float = 0.0
    up_s: float = 0.0  # from the worker's start (or the sweep's) to the end of the sweep

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.busy_s if self.busy_s > 0 else 0.0

    @property
    def busy_fraction(self) -> float:
        return min(1.0, self.busy_s / self.up_s) if self.up_s > 0 else 0.0

    def line(self) -> str:
        return (f"worker {self.name} on {self.device}: {self.tasks} task(s), {self.samples:,} samples, "
                f"{self.samples_per_s:,.1f} samples/s, busy {100 * self.busy_fraction:.0f} %")


def balance(stats: Sequence[WorkerStats]) -> float | None:
    """Busiest / idlest worker by busy time (``inf`` when one worker did nothing); None for one worker."""
    if len(stats) < 2:
        return None
    busy = [s.busy_s for s in stats]
    return max(busy) / min(busy) if min(busy) > 0 else float("inf")


def _terminal_columns(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


BUDGET_KEYS = ("steps", "n_iter", "n_queries")  # per-level work of an attack (first present)
RESTART_KEYS = ("restarts", "n_restarts")


def _budget(obj: object) -> int:
    steps = next((int(getattr(obj, k)) for k in BUDGET_KEYS if isinstance(getattr(obj, k, None), int)), 1)
    restarts = next((int(getattr(obj, k)) for k in RESTART_KEYS if isinstance(getattr(obj, k, None), int)), 1)
    eot = getattr(obj, "eot_iter", 1)
    return max(1, steps) * max(1, restarts) * (eot if isinstance(eot, int) and eot > 0 else 1)


def work_per_sample(pert: Perturbation) -> int:
    """Evals one sample costs under ``pert``: its levels × its per-level budget (a suite's: its members')."""
    members = getattr(pert, "attacks", None)
    per_level = sum(_budget(m) for m in members) if members else _budget(pert)
    return len(pert.levels) * max(1, per_level) if pert.family == "attack" else len(pert.levels)


class SweepProgress(RunEvents):
    """Progress of the tasks still to run. ``live``: a redrawn bar; otherwise one log line per finished task."""

    def __init__(self, tasks: Sequence[Task], work: Mapping[str, int], live: bool,
                 stream: IO[str] | None = None) -> None:
        """``work``: evals per sample of each task (``work_per_sample``); 1 when missing."""
        self.per_sample = {t.task_id: max(1, int(work.get(t.task_id, 1))) for t in tasks}
        self.weight = {t.task_id: t.n_samples * self.per_sample[t.task_id] for t in tasks}
        self.total = sum(self.weight.values())
        self.n_tasks = len(tasks)
        self.done: dict[str, int] = {}
        self.running: dict[str, Task] = {}
        self.workers: dict[str, WorkerStats] = {}
        self._ready_at: dict[str, float] = {}
        self.finished_tasks = 0
        self.t0 = time.monotonic()
        self.work_t0: float | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.bar: tqdm | None = None
        self._ticker: threading.Thread | None = None
        if live:
            out = stream if stream is not None else sys.stderr
            sized = _terminal_columns(out) > 0  # a pseudo-terminal may report 0×0: draw 120 wide
            self.bar = tqdm(total=self.total, desc="sweep", unit="eval", smoothing=0, dynamic_ncols=sized,
                            ncols=None if sized else 120, nrows=None if sized else 40, file=out)
            self._ticker = threading.Thread(target=self._tick, name="gauntlet-progress", daemon=True)
            self._ticker.start()

    # -- what runners report -------------------------------------------------------------
    def worker_ready(self, worker: str, device: str) -> None:
        with self._lock:
            self._ready_at.setdefault(worker, time.monotonic())
            if self.work_t0 is None:
                self.work_t0 = time.monotonic()  # the rate is measured from here (Ray start-up is not work)
                if self.bar is not None:
                    self.bar.reset(total=self.total)
                    self.bar.n = self.done_units()
            self.workers.setdefault(worker, WorkerStats(worker, device))

    def task_started(self, task: Task, worker: str) -> None:
        with self._lock:
            for w, t in list(self.running.items()):
                if t.task_id == task.task_id:
                    del self.running[w]
            self.running[worker] = task
            self._redraw()

    def task_retried(self, task: Task, reason: str) -> None:
        with self._lock:
            self._set_done(task.task_id, 0)
            for w, t in list(self.running.items()):
                if t.task_id == task.task_id:
                    del self.running[w]
            self._redraw()
        log.warning("retrying %s (task %s): %s", task.describe(), task.task_id, reason)

    def samples(self, task: Task, n: int) -> None:
        """``n`` more samples of ``task`` went through every level."""
        if task.task_id not in self.weight or n <= 0:
            return
        with self._lock:
            done = self.done.get(task.task_id, 0) + n * self.per_sample[task.task_id]
            self._set_done(task.task_id, min(done, self.weight[task.task_id]))
            if self.bar is not None:
                self.bar.refresh()

    def finished(self, result: TaskResult) -> None:
        """The driver has persisted ``result``."""
        task = result.task
        with self._lock:
            self._set_done(task.task_id, self.weight.get(task.task_id, 0))
            self.finished_tasks += 1
            for w, t in list(self.running.items()):
                if t.task_id == task.task_id:
                    del self.running[w]
            stats = self.workers.setdefault(result.worker, WorkerStats(result.worker, result.device))
            stats.device = result.device
            stats.tasks += 1
            stats.samples += task.n_samples
            stats.busy_s += result.seconds
            self._redraw()
            if self.bar is None:
                log.info("[%d/%d] %s done in %.1f s on %s (%s); sweep %s elapsed, ETA %s",
                         self.finished_tasks, self.n_tasks, task.describe(), result.seconds, result.worker,
                         result.device, format_duration(self.elapsed()), format_duration(self.eta()))

    # -- reading it ----------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def done_units(self) -> int:
        return sum(self.done.values())

    def eta(self) -> float | None:
        """Remaining evals at the average rate since work began; None before anything is done."""
        done = self.done_units()
        if done <= 0:
            return None
        working = time.monotonic() - (self.work_t0 if self.work_t0 is not None else self.t0)
        return (self.total - done) * working / done

    def running_text(self) -> str:
        names = [t.describe() for t in self.running.values()]
        if not names:
            return ""
        extra = f" (+{len(names) - SHOWN_RUNNING})" if len(names) > SHOWN_RUNNING else ""
        return "running " + "; ".join(names[:SHOWN_RUNNING]) + extra

    def close(self) -> list[WorkerStats]:
        """Stop the bar; log one line per worker and the balance; return the workers' stats."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        with self._lock:
            if self.bar is not None:
                self.bar.close()
            end = time.monotonic()
            stats = list(self.workers.values())
            for s in stats:
                s.up_s = end - self._ready_at.get(s.name, self.t0)
        for s in stats:
            log.info("%s", s.line())
        ratio = balance(stats)
        if ratio is not None:
            log.info("balance over %d workers: busiest / idlest busy time = %.2f", len(stats), ratio)
        return stats

    # -- internals -----------------------------------------------------------------------
    def _set_done(self, task_id: str, value: int) -> None:
        self.done[task_id] = value
        if self.bar is not None:
            self.bar.n = self.done_units()

    def _redraw(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.running_text(), refresh=False)
            self.bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with self._lock:
                if self.bar is not None:
                    self.bar.refresh()
