"""The embedded digits_cnn served by a real model server (Ray Serve, examples/targets/serve_oip.py) on 127.0.0.1.

A tiny remote sweep (clean and score-based Square through the Open Inference Protocol) answers row for row what
the same sweep on the model in-process answers, and Gauntlet's ledger equals the server's own count (its
``/stats`` through Serve and its count file). The server runs its own Ray instance and leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from engine.data.digits import load_digits
from engine.remote.ledger import RunLedger
from engine.remote.local import LocalOracle
from engine.store.results import read
from engine.sweep import run_sweep
from examples.targets.common import load_model
from tests.conftest import compose_dict
from tests.remote_servers import Server, count_file_totals, free_port

pytestmark = pytest.mark.timeout(400)
N = 8
TOKEN = "tok-ray-serve-3d9a-never-written"
SQUARE = ("perturbation.square_linf_remote.eps=[0.1,0.2]", "perturbation.square_linf_remote.budget=25")


@pytest.fixture(scope="module")
def served(embedded_checkpoints: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    count = tmp_path_factory.mktemp("ray_serve") / "count.jsonl"
    # RAY_ADDRESS set as a test session's Ray would: the server must start its own instance regardless.
    server = Server("ray_serve", free_port(), ("--models", "digits_cnn", "--count-file", str(count)),
                    env={"RAY_ADDRESS": "127.0.0.1:1", "TARGET_TOKEN": TOKEN})
    server.start(timeout=240)
    server.count_file = count  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        pid = server.proc.pid if server.proc else None
        server.stop()
        if pid is not None:
            _assert_group_gone(pid)


def _assert_group_gone(pgid: int, wait: float = 20.0) -> None:
    """The server's process group (driver, raylet, GCS) is gone after stop()."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    raise AssertionError(f"processes of the Ray Serve server's group {pgid} still run")


def _sweep(model: str, out: Path, *extra: str) -> list[str]:
    return [f"model=[{model}]", f"out_dir={out}", f"n_examples={N}", "batch_size=8", "progress=false",
            "perturbation=[clean,square_linf_remote]", *SQUARE, *extra]


def _preds(out: Path) -> dict[tuple[str, float], np.ndarray]:
    rows = read(out).to_pandas().sort_values(["perturbation", "level", "sample_id"])
    return {(str(p), float(lv)): g["pred"].to_numpy() for (p, lv), g in rows.groupby(["perturbation", "level"])}


def test_a_sweep_through_ray_serve_matches_the_model_in_process_and_the_servers_count(
        served: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    infer = f"{served.url}/v2/models/digits_cnn/infer"
    assert httpx.post(infer, json={"inputs": []}, timeout=10).status_code == 401  # the token holds through Serve
    monkeypatch.setenv("DIGITS_API_TOKEN", TOKEN)
    before = served.stats()
    remote_out, local_out = tmp_path / "remote", tmp_path / "local"
    run_sweep(compose_dict(_sweep("remote_digits_cnn", remote_out, f"model.remote_digits_cnn.remote.url={served.url}",
                                  "+model.remote_digits_cnn.remote.auth={env: DIGITS_API_TOKEN}")))
    run_sweep(compose_dict(_sweep("digits_cnn", local_out)))
    remote, local = _preds(remote_out), _preds(local_out)
    assert set(remote) == {("clean", 0.0), ("square_linf_remote", 0.1), ("square_linf_remote", 0.2)}
    assert set(local) == set(remote)
    for key in remote:  # the same answers through Ray Serve as in-process, row for row (Square is seeded)
        assert np.array_equal(remote[key], local[key]), key
    want = LocalOracle(load_model("digits_cnn"), num_classes=10).query(load_digits().images[:N], torch.arange(N))
    assert np.array_equal(remote[("clean", 0.0)], want.labels.numpy())
    after = served.stats()
    (target,) = RunLedger(remote_out).targets().values()
    assert target["spent"] == after["images"] - before["images"] > N  # the plan's fit check (one image) included
    assert target["sent"] == target["spent"] - 1
    assert target["calls"] == after["requests"] - before["requests"] - 1
    assert count_file_totals(served.count_file) == {**after, "throttled": 0}  # type: ignore[attr-defined]
    for path in remote_out.rglob("*"):  # the token is nowhere in the run folder
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_a_busy_port_or_an_unknown_model_is_refused_before_any_ray_instance_starts(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(tmp_path)}  # a started instance would show
        return subprocess.run([sys.executable, str(REPO / "examples/targets/serve_oip.py"), *args], env=env,
                              capture_output=True, text=True, timeout=120)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        taken = run("--port", port, "--models", "digits_cnn")
    assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    bad = run("--port", str(free_port()), "--models", "digits_cnn,no_such_model,../model/digits_cnn")
    assert bad.returncode == 1, bad.stderr[-500:]
    assert "no embedded model config for ['no_such_model', '../model/digits_cnn']" in bad.stderr
    assert not list(tmp_path.iterdir())  # no Ray session was started
