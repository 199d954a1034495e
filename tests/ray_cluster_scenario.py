"""Run by tests/test_ray_cluster.py in its own process: a simulated Ray cluster with fake GPUs.

One ``ray.cluster_utils.Cluster`` (a CPU-only head for the driver, two nodes × 4 fake GPUs × 8
logical CPUs) serves four sweeps that join it as a user's would: ``runner.address=<host:port>`` with
0.5 GPU per actor (16 actors: packing, spread, model loads, balance); ``runner.address=env`` with
RAY_ADDRESS and 1 GPU per actor, one node removed mid-sweep (retries, exactly-once rows); then small
sweeps through ``runner.address=auto`` (RAY_ADDRESS set, as on a cluster machine) and through Ray
Client, ``runner.address=ray://127.0.0.1:<port>`` (the head runs a client server, as KubeRay's does).
Prints one JSON document on stdout. Usage: python -m tests.ray_cluster_scenario OUT_DIR
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, before ray is imported

import ray
import torch
from ray.cluster_utils import Cluster

from engine.evaluation.resources import Resources
from engine.models.checkpoint import save_checkpoint
from engine.models.cnn import SmallCNN
from engine.planning.plan import Plan, make_plan
from engine.runners.base import RunContext
from engine.runners.progress import SweepProgress, balance, work_per_sample
from engine.runners.ray import RayRunner
from engine.store.parquet import ResultStore
from tests.conftest import compose_dict

NODE = {"num_cpus": 8, "num_gpus": 4, "object_store_memory": 80 * 2**20}


def _plan(root: Path, out: str, *extra: str) -> tuple[Plan, ResultStore, Resources]:
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = root / f"tiny{seed}.safetensors"
        if not path.exists():
            save_checkpoint(SmallCNN().state_dict(), path, {"model": f"tiny{seed}"})
        ckpts.append(path)
    cfg = compose_dict([
        "model=[digits_cnn,digits_cnn_at]", f"model.digits_cnn.checkpoint={ckpts[0]}", "model.digits_cnn.train=null",
        f"model.digits_cnn_at.checkpoint={ckpts[1]}", "model.digits_cnn_at.train=null", f"out_dir={root / out}",
        "progress=false", "batch_size=4", "shard_size=4", *extra])
    store = ResultStore(str(cfg["out_dir"]))
    return make_plan(cfg, store.has, progress=False), store, Resources(torch.device("cpu"))


def _sweep(runner: RayRunner, plan: Plan, store: ResultStore, res: Resources, after: Any = None) -> dict[str, Any]:
    work = {t.task_id: work_per_sample(res.perturbation(t.perturbation_name, t.perturbation)) for t in plan.todo}
    tracker = SweepProgress(plan.todo, work, live=False)
    ctx = RunContext(torch.device("cpu"), tracker.work, res, events=tracker)
    n = 0
    try:
        for result in runner.run(plan.todo, ctx):
            store.write(result)
            tracker.finished(result)
            n += 1
            if after is not None:
                after(n)
    finally:
        stats = tracker.close()
    table = store.read(t.task_id for t in plan.tasks)
    keys = list(zip(table["task_id"].to_pylist(), table["level"].to_pylist(), table["sample_id"].to_pylist(),
                    strict=True))
    expected = sum(t.n_samples * len(res.perturbation(t.perturbation_name, t.perturbation).levels)
                   for t in plan.tasks)
    tasks_by_worker = {s.name: s.tasks for s in stats}
    return {"rows": len(keys), "unique_rows": len(set(keys)), "expected_rows": expected, "results": n,
            "tasks": len(plan.todo), "workers": runner.worker_info, "tasks_by_worker": tasks_by_worker,
            "busy_balance": balance(stats), "attempts": runner.attempts,
            "task_balance": max(tasks_by_worker.values()) / max(1, min(tasks_by_worker.values()))}


def _wait_for_free_gpus(n: float, timeout_s: float = 60.0) -> None:
    """Between sweeps: the last driver's actors free their GPUs asynchronously once it disconnects."""
    ray.init(address=CLUSTER_ADDRESS[0], log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while ray.available_resources().get("GPU", 0.0) < n and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        ray.shutdown()


CLUSTER_ADDRESS: list[str] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join_modes(root: Path, cluster: Cluster, client_port: int) -> dict[str, Any]:
    """A small sweep through runner.address=auto, then one through Ray Client (ray://)."""
    out: dict[str, Any] = {}
    os.environ["RAY_ADDRESS"] = cluster.address
    for mode, address in (("auto", "auto"), ("client", f"ray://127.0.0.1:{client_port}")):
        _wait_for_free_gpus(4)
        plan, store, res = _plan(root, mode, "n_examples=16", "perturbation=[clean,fgsm_linf]")
        out[mode] = _sweep(RayRunner(address=address, gpus_per_actor=1, start_grace_s=600), plan, store, res)
        out[mode]["still_connected"] = ray.is_initialized()
    return out


def main(root: Path) -> dict[str, Any]:
    """Every sweep joins the cluster itself: by address, RAY_ADDRESS (env), auto, and ray://."""
    client_port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                             "object_store_memory": 80 * 2**20,
                                                             "ray_client_server_port": client_port})
    nodes = [cluster.add_node(**NODE) for _ in range(2)]
    cluster.wait_for_nodes()
    CLUSTER_ADDRESS.append(cluster.address)
    try:
        out: dict[str, Any] = {}
        plan, store, res = _plan(root, "packed", "n_examples=64", "perturbation=[pgd_linf]",
                                 "perturbation.pgd_linf.steps=5")
        runner = RayRunner(address=cluster.address, gpus_per_actor=0.5, start_grace_s=600)
        out["packed"] = _sweep(runner, plan, store, res)
        _wait_for_free_gpus(8)
        plan, store, res = _plan(root, "node_lost", "n_examples=32", "perturbation=[pgd_linf]",
                                 "perturbation.pgd_linf.steps=10")
        os.environ["RAY_ADDRESS"] = cluster.address
        runner = RayRunner(address="env", gpus_per_actor=1, start_grace_s=600, start_timeout_s=300)
        removed: list[str] = []

        def lose_node(n_done: int) -> None:
            if n_done == 2 and not removed:
                removed.append(nodes[1].node_id)
                cluster.remove_node(nodes[1])

        out["node_lost"] = _sweep(runner, plan, store, res, after=lose_node)
        out["node_lost"]["removed"] = removed
        out["node_ids"] = [n.node_id for n in nodes]
        out["still_connected"] = ray.is_initialized()  # a runner that joined disconnects when done
        out.update(_join_modes(root, cluster, client_port))
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    print(json.dumps(main(Path(sys.argv[1])), default=str))
