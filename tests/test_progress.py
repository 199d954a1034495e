"""engine/runners/progress.py: the unit of work, an honest ETA, retries roll back, one line per task and per worker."""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from pathlib import Path

import pytest

from engine.evaluation.tasks import Task, TaskResult
from engine.runners.progress import SweepProgress, WorkerStats, balance, format_duration, work_per_sample
from tests.conftest import run_cli, tiny_overrides


def _task(i: int, n: int = 10) -> Task:
    return Task(task_id=f"t{i}", run_id="r", model_name="m", model={}, checkpoint_sha256="s", dataset_name="d",
                dataset={}, perturbation_name=f"p{i}", perturbation={}, start=0, stop=n, seed=0, batch_size=5)


def _result(task: Task, worker: str, seconds: float) -> TaskResult:
    return TaskResult(task, {}, "attack", None, seconds, "cpu", worker)


def test_work_is_samples_times_per_sample_work_and_the_eta_is_unknown_until_work_is_done() -> None:
    a, b = _task(0), _task(1)
    p = SweepProgress([a, b], {"t0": 1, "t1": 7}, live=False)
    assert p.total == 10 * 1 + 10 * 7
    assert p.eta() is None  # nothing done: unknown, never "00:00"
    p.worker_ready("w", "cpu")
    time.sleep(0.05)
    p.samples(b, 5)  # half of b: 35 evals
    assert p.done_units() == 35
    eta = p.eta()
    assert eta is not None and eta > 0
    time.sleep(0.05)
    later = p.eta()
    assert later is not None and later > eta  # no report for a while: the ETA grows, it does not freeze
    p.samples(b, 50)  # over-reporting is capped at the task's size
    assert p.done_units() == 70
    p.close()


def test_a_retried_task_gives_back_its_progress_and_the_running_names_are_current() -> None:
    a, b = _task(0), _task(1)
    p = SweepProgress([a, b], {"t0": 2, "t1": 2}, live=False)
    p.task_started(a, "w0")
    p.task_started(b, "w1")
    assert p.running_text() == f"running {a.describe()}; {b.describe()}"
    p.samples(a, 5)
    p.task_retried(a, "worker lost")
    assert p.done_units() == 0 and p.running_text() == f"running {b.describe()}"
    p.close()


def test_one_line_per_finished_task_and_one_per_worker(caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = _task(0), _task(1), _task(2)
    p = SweepProgress([a, b, c], {}, live=False)
    with caplog.at_level(logging.INFO, logger="engine.runners.progress"):
        for w in ("ray-0", "ray-1"):
            p.worker_ready(w, "cpu")
        p.finished(_result(a, "ray-0", 1.0))
        p.finished(_result(b, "ray-0", 1.0))
        p.finished(_result(c, "ray-1", 2.0))
        stats = p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith(f"[1/3] {a.describe()} done in 1.0 s on ray-0 (cpu)")
    assert "ETA" in lines[2] and lines[2].startswith("[3/3]")
    assert any(s.startswith("worker ray-0 on cpu: 2 task(s), 20 samples, 10.0 samples/s, busy") for s in lines)
    assert lines[-1] == "balance over 2 workers: busiest / idlest busy time = 1.00"
    assert {s.name: s.tasks for s in stats} == {"ray-0": 2, "ray-1": 1}


def test_live_bar_names_the_running_task_and_counts_examples() -> None:
    a = _task(0)
    out = io.StringIO()
    p = SweepProgress([a], {"t0": 3}, live=True, stream=out)
    p.worker_ready("local", "cpu")
    p.task_started(a, "local")
    p.samples(a, 5)
    text = out.getvalue()
    assert "15/30" in text and f"running {a.describe()}" in text and "eval" in text
    p.finished(_result(a, "local", 0.5))
    p.close()
    assert "30/30" in out.getvalue()


def test_balance_and_durations() -> None:
    s = [WorkerStats("a", "cpu", busy_s=2.3), WorkerStats("b", "cpu", busy_s=2.0)]
    assert balance(s) == pytest.approx(1.15)
    assert balance(s[:1]) is None
    assert balance([*s, dataclasses.replace(s[0], busy_s=0.0)]) == float("inf")
    assert format_duration(None) == "?" and format_duration(65) == "01:05" and format_duration(3725) == "1:02:05"


def test_progress_false_logs_each_task_with_its_time(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli(*tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean,contrast]"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "[1/2] digits_cnn × clean [0:20] done in" in proc.stderr
    assert "[2/2] digits_cnn × contrast [0:20] done in" in proc.stderr
    assert "worker local on cpu: 2 task(s), 40 samples" in proc.stderr


def test_work_per_sample_follows_the_attack_budget(tiny_checkpoint: Path) -> None:
    from engine.evaluation.resources import build_perturbation
    from tests.conftest import compose_dict

    cfg = compose_dict(["perturbation=[clean,gaussian_noise,fgsm_linf,pgd_linf,autoattack_standard_linf]"])
    work = {n: work_per_sample(build_perturbation(n, c)) for n, c in cfg["perturbation"].items()}
    pgd = build_perturbation("pgd_linf", cfg["perturbation"]["pgd_linf"])
    assert work["clean"] == 1 and work["gaussian_noise"] == 5  # one per level
    assert work["fgsm_linf"] == len(cfg["perturbation"]["fgsm_linf"]["eps"])
    assert work["pgd_linf"] == len(pgd.levels) * pgd.steps * pgd.restarts
    assert work["autoattack_standard_linf"] > 50 * work["pgd_linf"] / pgd.steps  # a suite's budget dominates
