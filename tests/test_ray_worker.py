"""The actor side of runner=ray without Ray: device choice, shipped checkpoints, model cache, OOM message."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.errors import CheckpointError, ConfigError, GauntletError
from engine.evaluation.resources import Resources
from engine.models.checkpoint import sha256_of
from engine.planning.plan import make_plan
from engine.runners import ray_worker
from engine.runners.base import RunContext
from engine.runners.local import LocalRunner
from engine.runners.ray_worker import Shipped, Worker, materialise_checkpoint, pick_device
from engine.seeding import stable_hash
from tests.conftest import compose_dict, tiny_overrides


@pytest.fixture(autouse=True)
def _keep_threads() -> Any:
    """A Worker sets torch's thread count for its process; give the test process its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _tasks(ckpt: Path, out: Path, *extra: str) -> tuple[Any, ...]:
    cfg = compose_dict(tiny_overrides(ckpt, out, "perturbation=[clean]", "shard_size=10", *extra))
    return make_plan(cfg, lambda _: False, progress=False).todo


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: a Ray GPU id is a real device here")
def test_a_fake_gpu_without_cuda_means_cpu_and_no_gpu_means_cpu() -> None:
    assert pick_device(["3"]) == (torch.device("cpu"), "cpu")
    assert pick_device([]) == (torch.device("cpu"), "cpu")


def test_shipped_checkpoint_is_checked_by_sha256(tiny_checkpoint: Path, tmp_path: Path) -> None:
    task = _tasks(tiny_checkpoint, tmp_path)[0]
    data = tiny_checkpoint.read_bytes()
    path = materialise_checkpoint(data, task, tmp_path / "ckpts")
    assert sha256_of(path) == task.checkpoint_sha256 and path.suffix == ".safetensors"
    with pytest.raises(CheckpointError, match="corrupted in transit"):
        materialise_checkpoint(data[:-1] + bytes([data[-1] ^ 1]), task, tmp_path / "ckpts2")


def test_worker_loads_each_model_once_uses_shipped_data_and_names_itself(tiny_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    tasks = _tasks(tiny_checkpoint, tmp_path)
    reports: list[tuple[str, int, int, int, int, float]] = []
    store = {"ckpt": tiny_checkpoint.read_bytes()}
    data = Resources(torch.device("cpu")).dataset(tasks[0].dataset).slice(0, 20)
    store["data"] = data  # type: ignore[assignment]
    worker = Worker("ray-7", 1, [], lambda *r: reports.append(r), store.__getitem__, report_interval_s=0.0)
    shipped = Shipped("ckpt", "data", stable_hash(tasks[0].dataset))
    results = [worker.run(t, 1, shipped) for t in tasks]
    assert [r.task for r in results] == list(tasks)  # the original task, not the worker's local copy
    assert {r.worker for r in results} == {"ray-7"} and {r.device for r in results} == {"cpu"}
    info = worker.info()
    assert info["loads"] == {"digits_cnn": 1} and info["threads"] == 1
    # batched progress reports cover every sample: one classification each, nothing found unnecessary
    assert sum(r[2] for r in reports) == 20 and sum(r[3] for r in reports) == 0 and sum(r[4] for r in reports) == 20
    assert {r[0] for r in reports} == {t.task_id for t in tasks} and all(r[5] >= 0 for r in reports)
    local = LocalRunner().run(tasks, RunContext(torch.device("cpu"), lambda *report: None))
    for a, b in zip(results, local, strict=True):
        assert all((a.columns[k] == b.columns[k]).all() for k in a.columns)


def test_worker_builds_the_sweeps_perturbations_before_it_is_ready_and_leaves_bad_ones_to_their_task(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    tasks = _tasks(tiny_checkpoint, tmp_path, "perturbation=[clean,pgd_linf]")
    good = [(t.perturbation_name, dict(t.perturbation)) for t in tasks]
    bad = ("broken", {"_target_": "engine.perturbations.no_such_module.Nothing"})
    worker = Worker("ray-1", 1, [], lambda *r: None, lambda ref: ref, perturbations=[*good, bad])
    assert {stable_hash([n, c]) for n, c in good} <= set(worker.res._perts)  # built, so imported, at start
    assert stable_hash(list(bad)) not in worker.res._perts and worker.info()["warm_s"] >= 0
    with pytest.raises(GauntletError):
        worker.res.perturbation(*bad)  # the error is the task's to report, with its name


def test_cuda_out_of_memory_names_the_task_and_the_fix(tiny_checkpoint: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    task = _tasks(tiny_checkpoint, tmp_path, "batch_size=64")[0]

    def oom(*_: Any, **__: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ray_worker, "evaluate", oom)
    worker = Worker("ray-0", 1, [], lambda *r: None, lambda ref: ref)
    with pytest.raises(GauntletError, match=r"digits_cnn × clean \[0:10\].*batch_size=64\). Lower it, e.g. "
                                            r"batch_size=32"):
        worker.run(task, 1, Shipped())
    monkeypatch.setattr("engine.runners.local.evaluate", oom)
    with pytest.raises(GauntletError, match=r"batch_size=32"):
        list(LocalRunner().run([task], RunContext(torch.device("cpu"), lambda *report: None)))


def test_runner_configs_are_checked_by_key() -> None:
    from engine.runners.ray import RayRunner

    for kwargs, key in [({"in_flight": 0}, "runner.in_flight"), ({"gpus_per_actor": -1}, "runner.gpus_per_actor"),
                        ({"address": "nonsense"}, "runner.address"), ({"num_actors": 0}, "runner.num_actors")]:
        with pytest.raises(ConfigError, match=key):
            RayRunner(**kwargs)
    with pytest.raises(ConfigError, match=r"runner\.threads"):
        LocalRunner(threads=0)
    assert dataclasses.asdict(RayRunner())["address"] is None


class _FlakyRay:
    """Just what RayRunner._join touches: init fails ``failures`` times, then connects."""

    def __init__(self, failures: int) -> None:
        self.failures, self.inits, self.shutdowns, self.up = failures, 0, 0, False

    def init(self, address: str, log_to_driver: bool) -> None:
        self.inits += 1
        if self.inits <= self.failures:
            self.up = True  # a half-made client context, which the retry must clear first
            raise ConnectionError("Initialization failure from server:\nStarting Ray client server failed")
        self.up = True

    def is_initialized(self) -> bool:
        return self.up

    def shutdown(self) -> None:
        self.shutdowns, self.up = self.shutdowns + 1, False


def test_a_ray_client_join_is_retried_and_then_fails_with_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.runners import ray as ray_runner

    monkeypatch.setattr(ray_runner, "JOIN_RETRY_S", 0.0)
    runner = ray_runner.RayRunner(address="ray://head:10001")
    flaky = _FlakyRay(failures=2)
    runner._join(flaky, "ray://head:10001")
    assert flaky.inits == 3 and flaky.shutdowns == 2 and flaky.up
    down = _FlakyRay(failures=99)
    with pytest.raises(ConfigError, match=r"runner\.address='ray://head:10001': cannot join a Ray cluster"):
        runner._join(down, "ray://head:10001")
    assert down.inits == ray_runner.JOIN_ATTEMPTS
    plain = _FlakyRay(failures=1)  # host:port (GCS) joins fail at once: nothing transient to wait out
    with pytest.raises(ConfigError):
        ray_runner.RayRunner(address="head:6379")._join(plain, "head:6379")
    assert plain.inits == 1
