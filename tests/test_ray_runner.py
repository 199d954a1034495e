"""runner=ray in-process, on ONE session-scoped private Ray instance: same rows as local, retries, fail-fast.

The instance (``ray_instance`` in tests/conftest.py, shared with tests/test_scenarios.py) is explicit (2 CPUs,
100 MiB object store, no dashboard, loopback only) and every test has a timeout. Tests that need their own Ray
(the CLI, a simulated multi-node cluster) run in subprocesses: tests/test_ray_cli.py and tests/test_ray_cluster.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: stay on 127.0.0.1

from engine.errors import ConfigError, GauntletError
from engine.evaluation.resources import Resources
from engine.evaluation.tasks import Task
from engine.models.checkpoint import save_checkpoint, sha256_of
from engine.models.cnn import SmallCNN
from engine.planning.plan import Plan, make_plan
from engine.runners.base import RunContext, default_threads
from engine.runners.local import LocalRunner
from engine.runners.progress import SweepProgress, work_per_sample
from engine.runners.ray import RayRunner
from engine.store.parquet import ResultStore
from tests.conftest import REPO, compose_dict, tiny_overrides

ray = pytest.importorskip("ray")
CPU = torch.device("cpu")


def _plan(ckpt: Path, out: Path, *extra: str) -> tuple[Plan, ResultStore, Resources]:
    cfg = compose_dict(tiny_overrides(ckpt, out, *extra))
    store = ResultStore(str(cfg["out_dir"]))
    return make_plan(cfg, store.has, progress=False), store, Resources(CPU)


def _run(runner: Any, tasks: tuple[Task, ...], store: ResultStore, res: Resources,
         after: Callable[[int], None] | None = None) -> list[Any]:
    """What ``engine.sweep._execute`` does, with a hook after each written result."""
    work = {t.task_id: work_per_sample(res.perturbation(t.perturbation_name, t.perturbation)) for t in tasks}
    tracker = SweepProgress(tasks, work, live=False)
    ctx = RunContext(CPU, tracker.work, res, events=tracker)
    results = []
    try:
        for result in runner.run(tasks, ctx):
            store.write(result)
            tracker.finished(result)
            results.append(result)
            if after is not None:
                after(len(results))
    finally:
        tracker.close()
    return results


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("task_id", "ascending"), ("level", "ascending"), ("sample_id", "ascending")])


def _assert_exactly_once(store: ResultStore, plan: Plan, res: Resources) -> None:
    table = store.read(t.task_id for t in plan.tasks)
    keys = list(zip(table["task_id"].to_pylist(), table["level"].to_pylist(), table["sample_id"].to_pylist(),
                    strict=True))
    assert len(keys) == len(set(keys)), "duplicated rows"
    expected = sum(t.n_samples * len(res.perturbation(t.perturbation_name, t.perturbation).levels)
                   for t in plan.tasks)
    assert len(keys) == expected, "lost rows"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("threads", [1, 2])
def test_ray_gives_the_local_rows_column_by_column(ray_instance: Any, tiny_checkpoint: Path, tmp_path: Path,
                                                   threads: int) -> None:
    extra = ("perturbation=[clean,fgsm_linf,gaussian_noise]", "shard_size=10")
    plan, store_r, res = _plan(tiny_checkpoint, tmp_path / "ray", *extra)
    runner = RayRunner(threads=threads)  # 1: one single-thread actor per CPU (2 here); 2: one actor of 2 threads
    results = _run(runner, plan.todo, store_r, res)
    plan_l, store_l, res_l = _plan(tiny_checkpoint, tmp_path / "local", *extra)
    _run(LocalRunner(threads=threads), plan_l.todo, store_l, res_l)
    a, b = _sorted(store_r.read()), _sorted(store_l.read())
    assert a.num_rows == b.num_rows == 20 * (1 + 7 + 5)
    for name in a.column_names:
        assert a[name].equals(b[name]), f"column {name} differs between runner=ray and runner=local"
    assert {r.worker for r in results} <= {"ray-0", "ray-1"} and {r.device for r in results} == {"cpu"}
    info = runner.worker_info
    assert len(info) == 2 // threads
    assert all(i["threads"] == threads and i["numba_threads"] == str(threads) for i in info)
    assert all(i["nice"] == os.nice(0) for i in info)  # not Ray's +15: a busy machine must not starve the sweep
    assert all(n == 1 for i in info for n in i["loads"].values())  # each actor loaded the model once
    assert sum(len(i["runs"]) for i in info) == len(plan.todo)  # each task ran once


@pytest.mark.timeout(300)
def test_a_killed_worker_costs_a_retry_not_the_sweep(ray_instance: Any, tiny_checkpoint: Path,
                                                   tmp_path: Path) -> None:
    plan, store, res = _plan(tiny_checkpoint, tmp_path, "perturbation=[pgd_linf]", "n_examples=40",
                             "shard_size=5", "batch_size=5")
    runner = RayRunner(threads=1, num_actors=2, max_retries=2)
    killed: list[str] = []

    def kill_one(n_done: int) -> None:
        if killed:
            return
        busy = [w for w in runner.workers() if w["inflight"]]
        assert busy, "no worker had a task in flight"
        os.kill(int(busy[0]["pid"]), signal.SIGKILL)
        killed.append(busy[0]["name"])

    results = _run(runner, plan.todo, store, res, after=kill_one)
    assert killed
    assert sorted(r.task.task_id for r in results) == sorted(t.task_id for t in plan.todo)  # each once
    retried = {t for t, n in runner.attempts.items() if n == 2}
    assert retried and max(runner.attempts.values()) == 2  # the killed worker's task(s) ran again ...
    assert all(r.worker != killed[0] for r in results if r.task.task_id in retried)  # ... on another actor
    _assert_exactly_once(store, plan, res)


@pytest.mark.timeout(240)
def test_a_deterministic_error_fails_fast_names_the_task_and_is_not_retried(
        ray_instance: Any, tiny_checkpoint: Path, tmp_path: Path) -> None:
    plan, store, res = _plan(tiny_checkpoint, tmp_path / "out", "perturbation=[clean]", "shard_size=5")
    state = SmallCNN().state_dict()
    state["head.3.bias"] = torch.full_like(state["head.3.bias"], float("nan"))
    bad_ckpt = tmp_path / "nan.safetensors"
    save_checkpoint(state, bad_ckpt, {})
    good = plan.todo[0]
    bad = dataclasses.replace(good, task_id="bad0000000000000000", model_name="nan_cnn",
                              model={**good.model, "checkpoint": str(bad_ckpt)},
                              checkpoint_sha256=sha256_of(bad_ckpt))
    tasks = (*plan.todo, bad)
    runner = RayRunner(threads=1, num_actors=2, max_retries=3)
    with pytest.raises(GauntletError) as err:
        _run(runner, tasks, store, res)
    msg = str(err.value)
    assert "nan_cnn × clean [0:5]" in msg and bad.task_id in msg and "NaN/inf logits" in msg
    assert runner.attempts[bad.task_id] == 1  # not retried
    written = store.read()  # whatever was written before the failure reads back whole
    assert "bad0000000000000000" not in set(written["task_id"].to_pylist())
    for task_id in set(written["task_id"].to_pylist()):
        assert store.has(task_id) and written.filter(pa.compute.equal(written["task_id"], task_id)).num_rows == 5


@pytest.mark.timeout(60)
def test_the_actor_count_follows_the_cluster_and_gpu_actors_never_wait_forever(ray_instance: Any) -> None:
    assert RayRunner(threads=1)._actor_count(ray_instance, 10) == 2  # 2 CPUs, 1 CPU per actor
    assert RayRunner(threads=1)._actor_count(ray_instance, 1) == 1  # never more actors than tasks
    assert RayRunner(cpus_per_actor=0.5)._actor_count(ray_instance, 10) == 4
    with pytest.raises(ConfigError, match=r"runner\.gpus_per_actor=1 but the Ray cluster has no free GPU"):
        RayRunner(gpus_per_actor=1)._actor_count(ray_instance, 10)
    with pytest.raises(ConfigError, match=r"runner\.num_actors=3 but the cluster fits 2"):
        RayRunner(threads=1, num_actors=3)._actor_count(ray_instance, 10)


@pytest.mark.timeout(60)
def test_default_cpu_actors_use_the_local_runners_thread_count(ray_instance: Any, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Null threads resolve as runner=local's do (torch's default), capped by the biggest node's CPUs."""
    for local_threads, expected in ((1, (0.0, 1.0, 1)), (2, (0.0, 2.0, 2)), (8, (0.0, 2.0, 2))):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=local_threads: n)
        assert default_threads() == local_threads
        caplog.clear()
        assert RayRunner()._shape(ray_instance) == expected  # (GPUs, CPUs, threads) per actor
        capped = "CPU actors get 2 thread(s), the most any node has; runner=local uses 8" in caplog.text
        assert capped == (local_threads == 8)
    assert RayRunner()._actor_count(ray_instance, 10) == 1  # one 2-thread actor fills this 2-CPU instance
    assert RayRunner(threads=1)._shape(ray_instance) == (0.0, 1.0, 1)
    assert RayRunner(cpus_per_actor=2, threads=1)._shape(ray_instance) == (0.0, 2.0, 1)


THREADS_SCRIPT = """
import sys, torch
from pathlib import Path
import engine.runners.local as local
from engine.sweep import run_sweep
from tests.conftest import compose_dict, tiny_overrides

seen = []
evaluate = local.evaluate
local.evaluate = lambda *a, **k: (evaluate(*a, **k), seen.append(torch.get_num_threads()))[0]
run_sweep(compose_dict(tiny_overrides(Path(sys.argv[1]), Path(sys.argv[2]), "perturbation=[gaussian_noise,clean]",
                                      "wandb=disabled")))
print(seen, torch.get_num_threads())
"""


@pytest.mark.timeout(300)
def test_runner_local_holds_its_thread_count_when_numba_starts_its_pool(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """numba's OpenMP pool, started by the first corruption kernel, sets the OpenMP runtime it shares with torch
    to NUMBA_NUM_THREADS (every core by default). runner=local keeps torch at its own count through that, as
    Ray's actors do (their NUMBA_NUM_THREADS is their thread count): same rows, no 2-thread teams in a
    process set to one thread (docs/BENCHMARKS.md, "Ray under contention"). A fresh process: the pool starts once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(tiny_checkpoint), str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[1, 1] 1"  # after the noise task, after clean, at the end


@pytest.mark.timeout(300)
def test_ray_reports_progress_from_inside_a_running_task(ray_instance: Any, embedded_checkpoints: dict[str, str],
                                                         tmp_path: Path) -> None:
    """Square on the trained digits model at a tiny ε (every sample stays robust: 1,000 queries each): the actor's
    batched reports reach the driver while the task runs, and what they count is what the rows say was spent."""
    cfg = compose_dict(["model=[digits_cnn]", "perturbation=[square_linf]", "perturbation.square_linf.eps=[0.002]",
                        "perturbation.square_linf.attacks.0.n_queries=4000", "n_examples=16", "batch_size=16",
                        f"out_dir={tmp_path}", "progress=false"])
    store = ResultStore(str(cfg["out_dir"]))
    plan = make_plan(cfg, store.has, progress=False)
    seen: list[tuple[int, int, bool]] = []

    class Watch(SweepProgress):
        def work(self, task: Task, spent: int, skipped: int, samples: int, seconds: float) -> None:
            seen.append((spent, samples, self.acct[task.task_id].finished))
            super().work(task, spent, skipped, samples, seconds)

    res = Resources(CPU)
    tracker = Watch(plan.todo, {t.task_id: 4000 for t in plan.todo}, live=False)
    runner = RayRunner(threads=1, num_actors=1, report_interval_s=0.05)
    results = []
    for result in runner.run(plan.todo, RunContext(CPU, tracker.work, res, events=tracker)):
        tracker.finished(result)  # as the driver does: reports that arrive later are void
        results.append(result)
    tracker.close()
    cost = int(results[0].columns["queries"].sum())
    during = [s for s in seen if not s[2]]
    assert len(during) >= 2 and sum(s[0] for s in during) > 0  # several reports while it ran, not one per task
    assert sum(s[0] for s in seen) <= cost  # never more than the rows say was spent (late reports are void)
