"""Tell the truth about a running sweep: a live bar over its work, or one log line per finished task.

The unit of work is one *eval*: one model evaluation of one sample (a gradient, or a query). Each task
starts from its *plan*: samples × levels × the attack's budget per level (steps × restarts, queries,
summed over a suite's members; 1 for clean and corruptions). Inside a task the evaluator and the
attacks report, batched by the runner (``engine.runners.base.WorkBatcher``), the evals they spent and
the planned evals they found unnecessary (a suite member never runs on a sample already broken; Square
stops querying a broken sample), with the seconds that took. So the bar moves within a task, counts
work actually done, and its total (done + what is still open, discounted by the share of the plan
that was really spent so far) shrinks as work is found unnecessary.

The ETA is each unfinished task's samples left at the seconds per sample of the whole batches done on
its model × perturbation (recent batches weighted more), less the time its running batch already took;
before the first whole batch, its open plan at the seconds per planned eval settled so far (``task_seconds``);
shared among the workers. It converges instead of swinging with the mix of work (docs/BENCHMARKS.md,
"Progress": within ±30 % at 25/50/75 % of two recorded sweeps with AutoAttack). At the end, one line per
worker and the balance between them. While the bar is live, log lines and anything printed (Ray's worker
logs) are written above it. Runner-agnostic: no Ray here (runners call the ``RunEvents`` methods).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from tqdm.auto import tqdm

from engine.evaluation.tasks import Task, TaskResult
from engine.perturbations.base import Perturbation
from engine.runners.base import RunEvents

log = logging.getLogger(__name__)

REFRESH_S = 1.0  # how often the live bar is redrawn (elapsed, rate and ETA move even without reports)
SHOWN_RUNNING = 2  # running tasks named on the bar; the rest are counted
DEFAULT_COLUMNS = 120  # width of the bar when neither the stream nor COLUMNS says
BAR_MIN, BAR_MAX = 10, 30  # the bar's own glyphs: at least, at most
RECENT = 0.5  # weight of the latest batches in the seconds per sample (an exponential moving average)


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


def work_per_sample(pert: Perturbation) -> int:
    """Evals one sample is planned to cost under ``pert``: its levels × its per-level budget (a suite's: its
    members'); ``Perturbation.planned_evals``."""
    return len(pert.levels) * max(1, pert.planned_evals)


def bar_columns(stream: IO[str]) -> int:
    """The width to draw in: ``COLUMNS`` when set (what a user or a test asks for), else the terminal's, else 120
    (a pseudo-terminal may report 0×0)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cols = _terminal_columns(stream)
    return cols if cols > 0 else DEFAULT_COLUMNS


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when cut."""
    return text if len(text) <= width else (text[:max(0, width - 1)] + "…" if width > 0 else "")


@dataclass
class TaskWork:
    """One task's account in evals: its plan, what was spent, what was found unnecessary, and the seconds."""

    model: str
    perturbation: str
    samples: int
    planned: int
    spent: int = 0
    skipped: int = 0
    busy_s: float = 0.0
    done_samples: int = 0  # samples through every level (whole batches)
    busy_at_done: float = 0.0  # busy_s when the last of them was done
    finished: bool = False

    @property
    def settled(self) -> int:
        """Planned evals accounted for (spent or found unnecessary); spending beyond the plan settles no more."""
        return min(self.planned, self.spent + self.skipped)

    @property
    def open(self) -> int:
        return 0 if self.finished else self.planned - self.settled

    @property
    def in_flight_s(self) -> float:
        """Seconds spent on the batch now running (since the last whole batch)."""
        return self.busy_s - self.busy_at_done

    def reset(self) -> None:
        self.spent, self.skipped, self.busy_s, self.finished = 0, 0, 0.0, False
        self.done_samples, self.busy_at_done = 0, 0.0


def result_cost(result: TaskResult, planned: int) -> int:
    """Evals a finished task really spent: its rows' gradient evaluations and queries for an attack, its plan
    (one classification per sample and level) otherwise."""
    cols = result.columns
    if result.family != "attack" or "grad_evals" not in cols:
        return planned
    return int(cols["grad_evals"].sum()) + int(cols["queries"].sum())


Key = tuple[str, str] | str | None  # (model, perturbation), perturbation, or None: the whole sweep


class SweepProgress(RunEvents):
    """Progress of the tasks still to run. ``live``: a redrawn bar; otherwise one log line per finished task.
    ``clock``: seconds, monotonic (injectable: the tests replay a recorded sweep on a fake clock)."""

    def __init__(self, tasks: Sequence[Task], work: Mapping[str, int], live: bool,
                 stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """``work``: evals per sample of each task (``work_per_sample``); 1 when missing."""
        self.clock = clock
        self.acct = {t.task_id: TaskWork(t.model_name, t.perturbation_name, t.n_samples,
                                         t.n_samples * max(1, int(work.get(t.task_id, 1)))) for t in tasks}
        self.n_tasks = len(tasks)
        self.running: dict[str, Task] = {}
        self.workers: dict[str, WorkerStats] = {}
        self._ready_at: dict[str, float] = {}
        self.finished_tasks = 0
        self._per_sample: dict[Key, float] = {}
        self.t0 = clock()
        self.work_t0: float | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.stream = stream if stream is not None else sys.stderr
        self.bar: tqdm | None = None
        self._ticker: threading.Thread | None = None
        self._unroute: Callable[[], None] | None = None
        if live:
            self.bar = tqdm(total=1, bar_format="{percentage:3.0f}%|{bar}| {desc}", file=self.stream,
                            dynamic_ncols=False, ncols=bar_columns(self.stream) - 1)
            self._unroute = route_output_above(self)
            self._redraw()
            self._ticker = threading.Thread(target=self._tick, name="gauntlet-progress", daemon=True)
            self._ticker.start()

    # -- what runners report -------------------------------------------------------------
    def worker_ready(self, worker: str, device: str) -> None:
        with self._lock:
            self._ready_at.setdefault(worker, self.clock())
            if self.work_t0 is None:
                self.work_t0 = self.clock()  # the overhead is measured from here (Ray start-up is not work)
            self.workers.setdefault(worker, WorkerStats(worker, device))

    def task_started(self, task: Task, worker: str) -> None:
        with self._lock:
            self._forget_running(task)
            self.running[worker] = task
            self._redraw()

    def task_retried(self, task: Task, reason: str) -> None:
        with self._lock:
            if task.task_id in self.acct:
                self.acct[task.task_id].reset()
            self._forget_running(task)
            self._redraw()
        log.warning("retrying %s (task %s): %s", task.describe(), task.task_id, reason)

    def work(self, task: Task, spent: int, skipped: int, samples: int, seconds: float) -> None:
        """``task`` spent ``spent`` evals, found ``skipped`` planned ones unnecessary and took ``samples`` more
        through every level, in ``seconds``."""
        a = self.acct.get(task.task_id)
        if a is None or a.finished:  # a report that arrives after the result is void: the result counts
            return
        with self._lock:
            a.spent = max(0, a.spent + spent)  # a settling report may correct an earlier one downwards
            a.skipped += skipped
            a.busy_s += max(0.0, seconds)
            if samples > 0:
                self._batches_done(a, min(samples, a.samples - a.done_samples), a.busy_s)
            self._redraw()

    def finished(self, result: TaskResult) -> None:
        """The driver has persisted ``result``: its account is settled from its rows' real cost."""
        task = result.task
        with self._lock:
            a = self.acct.get(task.task_id)
            if a is not None:
                a.spent = result_cost(result, a.planned)
                a.skipped, a.busy_s, a.finished = max(0, a.planned - a.spent), result.seconds, True
                self._batches_done(a, a.samples - a.done_samples, result.seconds)
            self.finished_tasks += 1
            self._forget_running(task)
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
        return self.clock() - self.t0

    def done_units(self) -> int:
        """Evals spent so far."""
        return sum(a.spent for a in self.acct.values())

    def per_settled(self, value: Callable[[TaskWork], float]) -> dict[Key, float]:
        """``value`` per planned eval settled, pooled by (model, perturbation), by perturbation, and overall."""
        num: dict[Key, float] = {}
        den: dict[Key, float] = {}
        for a in self.acct.values():
            if a.settled <= 0:
                continue
            for key in ((a.model, a.perturbation), a.perturbation, None):
                num[key] = num.get(key, 0.0) + value(a)
                den[key] = den.get(key, 0.0) + a.settled
        return {k: num[k] / den[k] for k in num if den[k] > 0}

    def total_estimate(self) -> int:
        """Evals spent plus those still expected: each task's open plan times the share of the plan that was
        really spent so far on its kind of work (1 before any is settled: the plan is an upper bound)."""
        share = self.per_settled(lambda a: min(a.spent, a.settled))
        left = sum(a.open * _pooled(share, a, 1.0) for a in self.acct.values() if a.open)
        return self.done_units() + round(left)

    def eta(self) -> float | None:
        """Seconds still needed: each unfinished task's share (``task_seconds``), shared among the workers and
        scaled by how busy they have been kept; None until anything is settled."""
        with self._lock:
            unit = self.per_settled(lambda a: a.busy_s)
            if None not in unit:
                return None
            per_sample = self.per_sample()
            busy = sum(self.task_seconds(a, unit, per_sample) for a in self.acct.values() if not a.finished)
            workers = max(1, len(self.workers))
            return busy / (workers * self._utilisation(workers))

    def per_sample(self) -> dict[Key, float]:
        """Seconds per sample taken through every level (whole batches), by (model, perturbation) and by
        perturbation: a batch's levels and members, and what breaks early, repeat from batch to batch."""
        return dict(self._per_sample)

    def _batches_done(self, a: TaskWork, samples: int, busy: float) -> None:
        """``samples`` more of ``a`` went through every level, its busy time now ``busy``: fold their seconds per
        sample into the running averages, recent batches weighted more (RECENT): a machine whose load changes
        runs the next batches at its speed now."""
        if samples <= 0:
            return
        cost = max(0.0, busy - a.busy_at_done) / samples
        for key in ((a.model, a.perturbation), a.perturbation):
            old = self._per_sample.get(key)
            self._per_sample[key] = cost if old is None else RECENT * cost + (1 - RECENT) * old
        a.done_samples += samples
        a.busy_at_done = busy

    @staticmethod
    def task_seconds(a: TaskWork, unit: Mapping[Key, float], per_sample: Mapping[Key, float]) -> float:
        """Seconds ``a`` still needs, from the best evidence: whole batches of its model × perturbation (its
        samples left at their cost, less the time its running batch already took); else its own settled plan
        (the running first batch: the plan left at the cost per planned eval so far); else whole batches of
        its perturbation on other models; else the plan at the sweep's cost per planned eval."""
        key = (a.model, a.perturbation)
        if key in per_sample or (key not in unit and a.perturbation in per_sample):
            cost = per_sample[key] if key in per_sample else per_sample[a.perturbation]
            return max(0.0, (a.samples - a.done_samples) * cost - a.in_flight_s)
        return a.open * _pooled(unit, a, unit.get(None, 0.0))

    def running_text(self) -> str:
        names = [t.describe() for t in self.running.values()]
        if not names:
            return ""
        extra = f" (+{len(names) - SHOWN_RUNNING})" if len(names) > SHOWN_RUNNING else ""
        return "running " + "; ".join(names[:SHOWN_RUNNING]) + extra

    def status_text(self, room: int) -> str:
        """What the bar says beside its glyphs, in at most ``room`` characters: tasks, elapsed<ETA, evals and
        the running task(s) as they fit, in that order of importance."""
        text = (f"{self.finished_tasks}/{self.n_tasks} tasks "
                f"{format_duration(self.elapsed())}<{format_duration(self.eta())}")
        evals = f" {_si(self.done_units())}/{_si(self.total_estimate())} evals"
        running = self.running_text()
        if len(text) + len(evals) + min(len(running) + 1, 30) <= room:
            text += evals
        if running and room - len(text) - 1 >= 12:
            text += " " + fit(running, room - len(text) - 1)
        return fit(text, room)

    def close(self) -> list[WorkerStats]:
        """Stop the bar; log one line per worker and the balance; return the workers' stats."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        with self._lock:
            if self.bar is not None:
                self._redraw()
                self.bar.close()
            if self._unroute is not None:
                self._unroute()
                self._unroute = None
            end = self.clock()
            stats = list(self.workers.values())
            for s in stats:
                s.up_s = end - self._ready_at.get(s.name, self.t0)
        for s in stats:
            log.info("%s", s.line())
        ratio = balance(stats)
        if ratio is not None:
            log.info("balance over %d workers: busiest / idlest busy time = %.2f", len(stats), ratio)
        return stats

    def write_above(self, line: str, target: IO[str]) -> None:
        """Write ``line`` on its own line above the bar (the bar is cleared, then drawn again below it)."""
        with self._lock:
            if self.bar is not None:
                self.bar.clear()
            target.write(line + "\n")
            target.flush()
            if self.bar is not None:
                self.bar.refresh()

    # -- internals -----------------------------------------------------------------------
    def _utilisation(self, workers: int) -> float:
        """Busy seconds over the workers' wall time since work began (driver overhead, idle actors), in
        [0.2, 1]: the ETA is wall time, the costs are busy time."""
        wall = self.clock() - (self.work_t0 if self.work_t0 is not None else self.t0)
        busy = sum(a.busy_s for a in self.acct.values())
        return min(1.0, max(0.2, busy / (workers * wall))) if wall > 0 and busy > 0 else 1.0

    def _forget_running(self, task: Task) -> None:
        for w, t in list(self.running.items()):
            if t.task_id == task.task_id:
                del self.running[w]

    def _redraw(self) -> None:
        if self.bar is None:
            return
        width = bar_columns(self.stream) - 1  # the last column would wrap on some terminals
        text = self.status_text(max(0, width - 7 - BAR_MIN))  # 7: "100%|" and "| "
        self.bar.ncols = max(1, min(width, 7 + len(text) + BAR_MAX))
        self.bar.total = max(1, self.total_estimate())
        self.bar.n = min(self.done_units(), self.bar.total)
        self.bar.set_description_str(text, refresh=False)
        self.bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with self._lock:
                self._redraw()


def _pooled(values: Mapping[Key, float], a: TaskWork, default: Any) -> Any:
    """The value for ``a``'s (model, perturbation), else its perturbation's, else the sweep's, else ``default``."""
    for key in ((a.model, a.perturbation), a.perturbation, None):
        if key in values:
            return values[key]
    return default


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


class _AboveBar(io.TextIOBase):
    """Stands in for ``sys.stdout`` / ``sys.stderr`` (and the log handlers writing there) while the bar is live:
    each whole line is written above the bar, never through it (Ray prints its workers' logs this way)."""

    def __init__(self, progress: SweepProgress, target: IO[str]) -> None:
        super().__init__()
        self.progress, self.target, self._buf = progress, target, ""

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.progress.write_above(line, self.target)
        return len(s)

    def finish(self) -> None:
        if self._buf:
            self.progress.write_above(self._buf, self.target)
            self._buf = ""

    def flush(self) -> None:  # a partial line waits for its end (or for the bar to close)
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:  # anything else (``buffer``, ``errors``): the real stream's
        return getattr(self.target, name)


def route_output_above(progress: SweepProgress) -> Callable[[], None]:
    """Route ``sys.stdout``, ``sys.stderr`` and the console log handlers (root's and Ray's) through
    :class:`_AboveBar`; return the function that puts everything back."""
    originals = {"stdout": sys.stdout, "stderr": sys.stderr}
    proxies = {name: _AboveBar(progress, stream) for name, stream in originals.items()}
    saved: list[tuple[logging.StreamHandler[Any], Any]] = []
    for logger in (logging.getLogger(), logging.getLogger("ray")):
        for h in logger.handlers:
            if type(h) is not logging.StreamHandler:  # files and others write elsewhere
                continue
            for name, stream in originals.items():
                if h.stream is stream or h.stream is getattr(sys, f"__{name}__"):
                    saved.append((h, h.setStream(proxies[name])))
                    break
    sys.stdout, sys.stderr = proxies["stdout"], proxies["stderr"]

    def restore() -> None:
        sys.stdout, sys.stderr = originals["stdout"], originals["stderr"]
        for proxy in proxies.values():
            proxy.finish()
        for h, stream in saved:
            h.setStream(stream)

    return restore
