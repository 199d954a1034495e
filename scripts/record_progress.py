"""Record the progress events of a real sweep, and replay them on a fake clock to measure the ETA's error.

    python scripts/record_progress.py record OUT.json [override ...]   # runs the sweep in this process
    python scripts/record_progress.py replay OUT.json                  # ETA error at 25/50/75 % of the time

``record`` runs ``engine.sweep.run_sweep`` with the tracker wrapped so that every event it receives (a worker
ready, a task started, a progress report, a task finished) is written with its time. ``replay`` feeds those
events to a fresh ``SweepProgress`` on a fake clock and, at 25, 50 and 75 % of the sweep's elapsed time,
compares its ETA with the time the sweep really still took; the same for the estimator this replaced (whole
samples at batch ends, every planned eval counted, at the sweep's average rate). tests/test_progress.py
replays the recordings in tests/recordings/; docs/BENCHMARKS.md ("Progress") has the figures.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluation.tasks import Task, TaskResult
from engine.runners.progress import SweepProgress

MIXED_SWEEP = ["model=[digits_cnn,digits_cnn_at]",
               "perturbation=[clean,gaussian_noise,contrast,autoattack_standard_linf]", "n_examples=64",
               "batch_size=16", "runner=local", "runner.threads=1", "wandb=disabled"]
FRACTIONS = (0.25, 0.5, 0.75)


def record(out: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the sweep of ``overrides`` (after MIXED_SWEEP) and write its progress events to ``out``."""
    import engine.sweep as sweep
    from tests.conftest import compose_dict

    events: list[list[Any]] = []
    t0 = time.monotonic()

    def note(*event: Any) -> None:
        events.append([round(time.monotonic() - t0, 4), *event])

    class Recording(SweepProgress):
        def __init__(self, tasks: Any, work: Any, live: bool, **kw: Any) -> None:
            super().__init__(tasks, work, live=False)
            note("plan", [[t.task_id, t.model_name, t.perturbation_name, t.n_samples, int(work[t.task_id])]
                          for t in tasks])

        def worker_ready(self, worker: str, device: str) -> None:
            note("ready", worker, device)
            super().worker_ready(worker, device)

        def task_started(self, task: Task, worker: str) -> None:
            note("start", task.task_id, worker)
            super().task_started(task, worker)

        def work(self, task: Task, spent: int, skipped: int, samples: int, seconds: float) -> None:
            note("work", task.task_id, spent, skipped, samples, round(seconds, 4))
            super().work(task, spent, skipped, samples, seconds)

        def finished(self, result: TaskResult) -> None:
            a = self.acct[result.task.task_id]
            note("finished", result.task.task_id, round(result.seconds, 4), _cost(result, a.planned), result.family)
            super().finished(result)

        def close(self) -> Any:
            note("end")
            return super().close()

    sweep.SweepProgress = Recording  # type: ignore[misc]
    cfg = compose_dict([*MIXED_SWEEP, f"out_dir={out.parent / (out.stem + '_run')}", *overrides])
    sweep.run_sweep(cfg)
    doc = {"overrides": [*MIXED_SWEEP, *overrides], "events": events}
    out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return doc


def _cost(result: TaskResult, planned: int) -> int:
    from engine.runners.progress import result_cost

    return result_cost(result, planned)


def _tasks(plan: list[list[Any]]) -> dict[str, Task]:
    return {tid: Task(task_id=tid, run_id="r", model_name=m, model={}, checkpoint_sha256="s", dataset_name="d",
                      dataset={}, perturbation_name=p, perturbation={}, start=0, stop=n, seed=0, batch_size=1)
            for tid, m, p, n, _ in plan}


def replay(doc: dict[str, Any], estimator: str = "new") -> dict[float, tuple[float, float]]:
    """At each fraction of the sweep's elapsed time (from the first worker ready to the end): (ETA, true
    remaining seconds). ``estimator``: "new" (SweepProgress) or "old" (the one it replaced)."""
    events = doc["events"]
    ready = next(e[0] for e in events if e[1] == "ready")
    end = next(e[0] for e in events if e[1] == "end")
    marks = {f: ready + f * (end - ready) for f in FRACTIONS}
    etas = _replay_new(events, marks) if estimator == "new" else _replay_old(events, marks)
    return {f: (etas[f], end - t) for f, t in marks.items()}


def _replay_new(events: list[list[Any]], marks: dict[float, float]) -> dict[float, float]:
    """The ETA of a SweepProgress fed, on a fake clock, the events up to each mark."""
    now = [0.0]
    plan = next(e[2] for e in events if e[1] == "plan")
    tasks = _tasks(plan)
    p = SweepProgress(list(tasks.values()), {e[0]: e[4] for e in plan}, live=False, clock=lambda: now[0])
    handlers: dict[str, Callable[..., None]] = {
        "ready": lambda w, d: p.worker_ready(w, d),
        "start": lambda tid, w: p.task_started(tasks[tid], w),
        "work": lambda tid, sp, sk, n, s: p.work(tasks[tid], sp, sk, n, s),
        "finished": lambda tid, s, cost, fam: p.finished(_result(tasks[tid], s, cost, fam)),
    }
    out, pos = {}, 0
    for f, t in sorted(marks.items(), key=lambda m: m[1]):
        while pos < len(events) and events[pos][0] <= t:
            now[0] = events[pos][0]
            if events[pos][1] in handlers:
                handlers[events[pos][1]](*events[pos][2:])
            pos += 1
        now[0] = t
        eta = p.eta()
        out[f] = float("nan") if eta is None else eta
    return out


def _result(task: Task, seconds: float, cost: int, family: str) -> TaskResult:
    cols = {"grad_evals": np.array([cost], dtype=np.int64), "queries": np.zeros(1, dtype=np.int64)}
    return TaskResult(task, cols, family, None, seconds, "cpu", "local")


def _replay_old(events: list[list[Any]], marks: dict[float, float]) -> dict[float, float]:
    """The replaced estimator: whole samples × their planned evals, counted at batch ends, at the average
    rate since the first worker was ready."""
    plan = next(e[2] for e in events if e[1] == "plan")
    per = {tid: w for tid, _, _, _, w in plan}
    total = sum(n * w for _, _, _, n, w in plan)
    ready = next(e[0] for e in events if e[1] == "ready")
    out = {}
    for f, t in marks.items():
        done = sum(e[5] * per[e[2]] for e in events if e[1] == "work" and e[0] <= t)
        out[f] = float("nan") if done <= 0 else (total - done) * (t - ready) / done
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("record", "replay"):
        print(__doc__)
        return 2
    path = Path(argv[1])
    doc = record(path, argv[2:]) if argv[0] == "record" else json.loads(path.read_text())
    for name in ("new", "old"):
        for f, (eta, left) in replay(doc, name).items():
            print(f"{name} estimator at {100 * f:.0f} % of the time: ETA {eta:8.1f} s, really {left:8.1f} s left, "
                  f"error {100 * (eta - left) / left:+.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
