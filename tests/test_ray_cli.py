"""runner=ray through the `gauntlet` command: same rows as local, and a SIGKILLed driver resumes exactly once.

Each CLI run starts its own private Ray instance (2 CPUs, 100 MiB object store, dashboard off), so these
tests do not share the in-process session instance of tests/test_ray_runner.py.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.conftest import REPO, run_cli, tiny_overrides

RAY = ("runner=ray", "runner.num_cpus=2", "runner.object_store_memory=100000000")
KEY = [("task_id", "ascending"), ("level", "ascending"), ("sample_id", "ascending")]


def _table(out: Path):  # type: ignore[no-untyped-def]
    return ds.dataset(out / "results", format="parquet").to_table().sort_by(KEY)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_ray_and_local_write_identical_rows(embedded_checkpoints: dict[str, str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's acceptance commands, literally: the default sweep, each runner at its defaults.

    Both resolve a null runner.threads to torch's default, so CPU float reductions match bit for bit. That
    default is one thread here (OMP_NUM_THREADS=1, as `make test` runs): on a loaded 2-core machine two-thread
    OpenMP teams made this 64-sample sweep take 9 minutes per runner (docs/BENCHMARKS.md, "Ray under
    contention"); two-thread rows are checked on a smaller sweep in tests/test_ray_runner.py.
    RAY_ADDRESS points nowhere: with runner.address=null the private instance must ignore it.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torch's default thread count in both runners, whatever the shell has
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    ray_run = run_cli("n_examples=64", "runner=ray", f"out_dir={tmp_path / 'A'}", timeout=600)
    assert ray_run.returncode == 0, ray_run.stderr[-3000:]
    assert re.search(r"worker ray-\d on cpu: \d+ task\(s\)", ray_run.stderr)
    assert re.search(r"starting 2 actor\(s\) of 1 CPU \+ 0 GPU \(1 thread\(s\)\)", ray_run.stderr)  # local's 1
    assert "RAY_ADDRESS is set but runner.address is null" in ray_run.stderr
    monkeypatch.delenv("RAY_ADDRESS")
    local = run_cli("n_examples=64", "runner=local", f"out_dir={tmp_path / 'B'}", timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    a, b = _table(tmp_path / "A"), _table(tmp_path / "B")
    # 2 models × (clean 1 + fgsm 7 + pgd_linf 7 + pgd_l2 6 + 3 corruptions × 5 severities) levels × 64
    assert a.num_rows == b.num_rows == 2 * 64 * (1 + 7 + 7 + 6 + 15)
    for name in a.column_names:
        assert a[name].equals(b[name]), f"column {name} differs"


def _files(out: Path) -> list[Path]:
    return sorted((out / "results").glob("*.parquet")) if (out / "results").exists() else []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkilled_driver_resumes_with_exactly_once_rows(tiny_checkpoint: Path, tmp_path: Path) -> None:
    args = [*tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[pgd_linf]", "n_examples=64",
                            "shard_size=8", "batch_size=8"), *RAY]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    driver = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while len(_files(tmp_path)) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep finished before it could be killed; make it longer"
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    done_before = len(_files(tmp_path))
    assert 2 <= done_before < 8
    again = run_cli(*args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    m = re.search(r"(\d+) task\(s\), (\d+) evaluated, (\d+) reused", again.stdout)
    assert m is not None, again.stdout
    assert (int(m[1]), int(m[2]), int(m[3])) == (8, 8 - done_before, done_before)
    table = _table(tmp_path)
    keys = list(zip(table["task_id"].to_pylist(), table["level"].to_pylist(), table["sample_id"].to_pylist(),
                    strict=True))
    assert len(keys) == len(set(keys)) == 64 * 7  # every (task, level, sample) exactly once


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("runner", "sig"), [("ray", signal.SIGTERM), ("ray", signal.SIGINT),
                                             ("local", signal.SIGINT), ("local", signal.SIGTERM)],
                         ids=["ray-SIGTERM", "ray-SIGINT", "local-SIGINT", "local-SIGTERM"])
def test_a_signalled_driver_says_in_one_line_what_it_kept_and_resumes(
        runner: str, sig: signal.Signals, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """SIGTERM (a scheduler, `kill`) or SIGINT (Ctrl-C: the whole foreground process group) once the first task
    file is written: exit 128 + the signal, one line saying what is kept and how to resume, no traceback or
    native stack dump, the finished rows kept; the same command then resumes from them."""
    out = tmp_path / "out"
    args = [*tiny_overrides(tiny_checkpoint, out, "perturbation=[pgd_linf]", "n_examples=64", "shard_size=8",
                            "batch_size=8"), *(RAY if runner == "ray" else ("runner=local", "runner.threads=1"))]
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=err, env={**os.environ, "HYDRA_FULL_ERROR": "0"}, start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            while not _files(out) and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert driver.poll() is None, "the sweep ended before it could be signalled; make it longer"
            (os.killpg if sig == signal.SIGINT else os.kill)(driver.pid, sig)
            code = driver.wait(timeout=120)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=60)
    text = log.read_text()
    kept = len(_files(out))
    lines = [line for line in text.splitlines() if "interrupted by" in line]
    assert code == 128 + sig, text[-3000:]
    assert len(lines) == 1, text[-3000:]
    assert text.rstrip().splitlines()[-1] == lines[0]  # the last line
    m = re.search(r"interrupted by (SIG\w+): (\d+) of 8 task\(s\) of this sweep have verified results in (\S+) "
                  r"\(kept\); resume with: cd (\S+) && gauntlet (.*)$", lines[0])
    assert m is not None, lines[0]
    assert m[4] == shlex.quote(str(Path(REPO).resolve())) and m[5] == shlex.join(args)  # the exact command
    assert (m[1], int(m[2]), m[3]) == (sig.name, kept, str(out / "results")) and 1 <= kept < 8
    for noise in ("Traceback", "received at time", "KeyboardInterrupt", "Error"):
        assert noise not in text.replace(lines[0], ""), text[-3000:]
    again = run_cli(*args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    m = re.search(r"(\d+) task\(s\), (\d+) evaluated, (\d+) reused", again.stdout)
    assert m is not None and (int(m[1]), int(m[2]), int(m[3])) == (8, 8 - kept, kept), again.stdout
