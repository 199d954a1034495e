"""Benchmark runner=ray against runner=local (not a timed test; figures go to docs/BENCHMARKS.md).

1. Efficiency on a compute-bound sweep: 2 single-CPU actors vs runner=local with one thread
   (target ≥ 85 % on a 2-core machine): T_local / (2 · T_ray).
2. Defaults: runner=local at torch's default threads vs runner=ray's default CPU shape (one actor
   with that many threads) and runner.threads=1 (one single-thread actor per CPU).
3. Per-task overhead of the Ray path on near-empty tasks (clean, 1 sample): (T_ray − T_local) / tasks
   with one actor (target ≤ 50 ms).
4. Balance on a simulated cluster (2 nodes × 4 fake GPUs, one actor per GPU): busiest / idlest
   actor by busy time and by tasks (target ≤ 1.15).
5. With CUDA: the compute-bound sweep on the GPU, local vs one ray actor.

Each Ray measurement reports the sweep from the moment its actors are up (steady state) and end to
end (Ray start and actor start-up included). Usage:
    PYTHONPATH=. python scripts/bench_ray.py [--skip-cluster] [--samples 96] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, before ray is imported

import torch

from engine.compose.config import compose_sweep
from engine.evaluation.resources import Resources
from engine.models.checkpoint import save_checkpoint
from engine.models.cnn import SmallCNN
from engine.planning.plan import make_plan
from engine.runners.base import RunContext
from engine.runners.local import LocalRunner
from engine.runners.progress import SweepProgress, WorkerStats, balance, work_per_sample
from engine.runners.ray import RayRunner


class Timed(SweepProgress):
    """Progress that also records when the last actor came up."""

    def __init__(self, *args: Any, expect_workers: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expect = expect_workers
        self.all_up: float | None = None

    def worker_ready(self, worker: str, device: str) -> None:
        super().worker_ready(worker, device)
        if len(self.workers) >= self.expect and self.all_up is None:
            self.all_up = time.monotonic()


def plan_for(root: Path, *overrides: str) -> tuple[Any, Resources]:
    ckpt = root / "tiny.safetensors"
    if not ckpt.exists():
        torch.manual_seed(0)
        save_checkpoint(SmallCNN().state_dict(), ckpt, {"model": "tiny"})
    cfg = compose_sweep(["model=[digits_cnn]", f"model.digits_cnn.checkpoint={ckpt}", "model.digits_cnn.train=null",
                         f"out_dir={root / 'out'}", "progress=false", *overrides])
    return make_plan(cfg, lambda _: False, progress=False), Resources(torch.device("cpu"))


def settle(seconds: float = 5.0) -> None:
    """Let the last Ray instance's processes exit before the next timing (they outlive ray.shutdown)."""
    time.sleep(seconds)


def timed_run(runner: Any, plan: Any, res: Resources, device: torch.device,
              workers: int) -> tuple[float, float, list[WorkerStats]]:
    """(steady seconds: all workers up → last result, end-to-end seconds: start → last result, worker stats).

    Both end at the last result, not when ``runner.run`` returns: Ray's shutdown after the sweep is
    not sweep time. A fresh ``Resources`` per run, so local pays its model loads as each actor does.
    """
    tasks = plan.todo
    work = {t.task_id: work_per_sample(res.perturbation(t.perturbation_name, t.perturbation)) for t in tasks}
    tracker = Timed(tasks, work, live=False, expect_workers=workers)
    ctx = RunContext(device, tracker.work, Resources(device), events=tracker)
    t0 = end = time.monotonic()
    n = 0
    for result in runner.run(tasks, ctx):
        end = time.monotonic()
        tracker.finished(result)
        n += 1
    assert n == len(tasks)
    stats = tracker.close()
    return end - (tracker.all_up or t0), end - t0, stats


def efficiency(root: Path, samples: int, steps: int, repeats: int) -> None:
    plan, res = plan_for(root, f"n_examples={samples}", "perturbation=[pgd_linf]",
                         f"perturbation.pgd_linf.steps={steps}", "batch_size=8", "shard_size=8")
    ratios = []
    for i in range(repeats):  # interleaved, so a change in the machine's load hits both sides
        settle()
        cpu0 = time.process_time()
        local, _, _ = timed_run(LocalRunner(threads=1), plan, res, torch.device("cpu"), 1)
        local_cpu = time.process_time() - cpu0
        ray_runner = RayRunner(num_cpus=2, num_actors=2, cpus_per_actor=1, object_store_memory=100 * 2**20)
        cpu0 = time.process_time()
        settle()
        steady, e2e, stats = timed_run(ray_runner, plan, res, torch.device("cpu"), 2)
        driver_cpu = time.process_time() - cpu0
        at_ready = {w["name"]: w["cpu_s"] for w in ray_runner.workers()}
        actors_cpu = sum(w["cpu_s"] - at_ready[w["name"]] for w in ray_runner.worker_info)
        print(f"[efficiency] CPU seconds: local {local_cpu:.1f}; ray actors {actors_cpu:.1f} (after start-up) + "
              f"driver {driver_cpu:.1f}: CPU efficiency {local_cpu / (actors_cpu + driver_cpu):.1%}", flush=True)
        ratios.append(local / (2 * steady))
        print(f"[efficiency] run {i + 1}: {len(plan.todo)} PGD-{steps} tasks × 8 samples × 7 ε: local 1 thread "
              f"{local:.1f} s; ray 2 × 1-CPU actors {steady:.1f} s steady, {e2e:.1f} s end to end; "
              f"T_local / (2 · T_ray) = {local / (2 * steady):.1%} steady, {local / (2 * e2e):.1%} end to end; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        for s in stats:
            print(f"[efficiency]   {s.line()}")
    print(f"[efficiency] median steady efficiency {statistics.median(ratios):.1%} over {repeats} run(s)"
          "  (target ≥ 85 %)")


def defaults(root: Path, samples: int, steps: int, repeats: int) -> None:
    """What a user gets without thread settings: runner=local (torch's default threads) against
    runner=ray's default CPU shape (one actor with that many threads) and runner.threads=1 (one
    single-thread actor per CPU), interleaved; steady wall time, T_local / T_ray."""
    plan, res = plan_for(root, f"n_examples={samples}", "perturbation=[pgd_linf]",
                         f"perturbation.pgd_linf.steps={steps}", "batch_size=8", "shard_size=8")
    shapes = {"ray default": {}, "ray threads=1": {"threads": 1}}
    ratios: dict[str, list[float]] = {k: [] for k in shapes}
    for i in range(repeats):
        settle()
        local, _, _ = timed_run(LocalRunner(), plan, res, torch.device("cpu"), 1)
        line = [f"local ({torch.get_num_threads()} threads) {local:.1f} s"]
        for name, kw in shapes.items():
            settle()
            runner = RayRunner(num_cpus=2, object_store_memory=100 * 2**20, **kw)  # type: ignore[arg-type]
            steady, e2e, stats = timed_run(runner, plan, res, torch.device("cpu"), 2 if kw else 1)
            ratios[name].append(local / steady)
            line.append(f"{name} ({len(stats)} actor(s)) {steady:.1f} s steady, {e2e:.1f} s end to end")
        print(f"[defaults] run {i + 1}: " + "; ".join(line) + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    for name, r in ratios.items():
        print(f"[defaults] median T_local / T_ray, {name}: {statistics.median(r):.2f} over {repeats} run(s)")


def overhead(root: Path, tasks: int) -> None:
    plan, res = plan_for(root, f"n_examples={tasks}", "perturbation=[clean]", "batch_size=1", "shard_size=1")
    local, _, _ = timed_run(LocalRunner(threads=1), plan, res, torch.device("cpu"), 1)
    runner = RayRunner(num_cpus=2, num_actors=1, threads=1, object_store_memory=100 * 2**20)
    steady, e2e, _ = timed_run(runner, plan, res, torch.device("cpu"), 1)
    per = (steady - local) / len(plan.todo)
    n = len(plan.todo)
    print(f"[overhead] {n} near-empty tasks (clean, 1 sample): local {1000 * local / n:.1f} ms per task, "
          f"ray {1000 * steady / n:.1f} ms per task (steady; {e2e:.1f} s end to end)")
    print(f"[overhead] Ray per-task overhead = {1000 * per:.1f} ms  (target ≤ 50 ms)")


def cluster_balance(root: Path, samples: int, steps: int) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                             "object_store_memory": 80 * 2**20})
    for _ in range(2):
        cluster.add_node(num_cpus=4, num_gpus=4, object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        plan, res = plan_for(root, f"n_examples={samples}", "perturbation=[pgd_linf]",
                             f"perturbation.pgd_linf.steps={steps}",
                             "batch_size=2", "shard_size=2", f"seed={samples}")
        steady, e2e, stats = timed_run(RayRunner(gpus_per_actor=1), plan, res, torch.device("cpu"), 8)
        tasks = [s.tasks for s in stats]
        print(f"[balance] {len(plan.todo)} tasks on {len(stats)} actors (2 nodes × 4 fake GPUs): tasks per actor "
              f"{sorted(tasks)}; busiest / idlest by busy time {balance(stats):.2f}, by tasks "
              f"{max(tasks) / max(1, min(tasks)):.2f}  (target ≤ 1.15); {steady:.1f} s steady, {e2e:.1f} s end to end")
    finally:
        ray.shutdown()
        cluster.shutdown()


def gpu(root: Path, samples: int, steps: int) -> None:
    plan, res = plan_for(root, f"n_examples={samples}", "perturbation=[pgd_linf]",
                         f"perturbation.pgd_linf.steps={steps}", "batch_size=64", "shard_size=64")
    cuda = torch.device("cuda")
    local, _, _ = timed_run(LocalRunner(), plan, res, cuda, 1)
    steady, e2e, stats = timed_run(RayRunner(num_gpus=1, num_actors=1), plan, res, cuda, 1)
    print(f"[gpu] {torch.cuda.get_device_name()}: local {local:.2f} s, ray 1 actor {steady:.2f} s steady "
          f"({e2e:.1f} s end to end): ray/local = {steady / local:.2f}; actor device {stats[0].device}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=448)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tasks", type=int, default=200, help="near-empty tasks for the overhead figure")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved local/ray pairs for the efficiency")
    ap.add_argument("--only", choices=["efficiency", "defaults", "overhead", "balance"], help="run one measurement")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPU(s), torch {torch.__version__}, CUDA {torch.cuda.is_available()}, "
          f"load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.only in (None, "efficiency"):
            efficiency(root, args.samples, args.steps, args.repeats)
        if args.only in (None, "defaults"):
            defaults(root, args.samples, args.steps, args.repeats)
        if args.only in (None, "overhead"):
            overhead(root, args.tasks)
        if not args.skip_cluster and args.only in (None, "balance"):
            cluster_balance(root, 256, args.steps)
        if torch.cuda.is_available():
            gpu(root, 1024, args.steps)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    sys.exit(main())
