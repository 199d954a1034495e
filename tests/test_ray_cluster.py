"""Scheduling and node loss on a simulated Ray cluster (2 nodes × 4 fake GPUs), in its own process.

``ray.cluster_utils.Cluster`` cannot share a process with the session Ray instance of
tests/test_ray_runner.py, so tests/ray_cluster_scenario.py runs both sweeps on one Cluster in a
subprocess and reports JSON; this test checks it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("cluster")
    proc = subprocess.run([sys.executable, "-m", "tests.ray_cluster_scenario", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=1100)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_half_gpu_actors_pack_two_per_fake_gpu_spread_over_both_nodes(scenario: dict) -> None:  # type: ignore[type-arg]
    packed = scenario["packed"]
    workers = packed["workers"]
    assert len(workers) == 16  # 8 fake GPUs / 0.5
    per_gpu = Counter((w["node_id"], tuple(w["gpu_ids"])) for w in workers)
    assert len(per_gpu) == 8 and set(per_gpu.values()) == {2}  # two actors on each of the 8 GPUs
    assert {w["node_id"] for w in workers} == set(scenario["node_ids"])
    assert all(w["device"] == "cpu" for w in workers)  # fake GPUs without CUDA fall back to CPU
    assert all(len(w["runs"]) >= 1 for w in workers)  # tasks spread over all 8 GPUs (all 16 actors)
    assert all(n == 1 for w in workers for n in w["loads"].values())  # each actor loads each model once
    assert packed["rows"] == packed["unique_rows"] == packed["expected_rows"]
    assert packed["task_balance"] == 1.0 and packed["busy_balance"] is not None  # balance is reported


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_node_lost_mid_sweep_costs_retries_not_rows(scenario: dict) -> None:  # type: ignore[type-arg]
    lost = scenario["node_lost"]
    assert lost["removed"] and lost["results"] == lost["tasks"]
    assert lost["rows"] == lost["unique_rows"] == lost["expected_rows"]  # no lost, no duplicated rows
    assert max(lost["attempts"].values()) >= 2  # the lost node's tasks ran again
    survivors = {w["node_id"] for w in lost["workers"]}
    assert survivors and lost["removed"][0] not in survivors
    assert scenario["still_connected"] is False  # joined by address / RAY_ADDRESS, disconnected after


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", ["auto", "client"])
def test_runner_address_auto_and_ray_client_join_the_cluster(scenario: dict, mode: str) -> None:  # type: ignore[type-arg]
    """runner.address=auto (RAY_ADDRESS set, as on a cluster machine) and ray://host:port (Ray Client)."""
    sweep = scenario[mode]
    assert sweep["results"] == sweep["tasks"] and sweep["rows"] == sweep["unique_rows"] == sweep["expected_rows"]
    assert sweep["workers"] and {w["node_id"] for w in sweep["workers"]} <= set(scenario["node_ids"])
    assert all(w["gpu_ids"] for w in sweep["workers"])  # the cluster's (fake) GPUs, not a private instance
    assert sweep["still_connected"] is False
