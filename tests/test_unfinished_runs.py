"""Unfinished runs say so, and a sweep writes nothing outside its out_dir.

A sweep killed with SIGKILL is reported as unfinished (N of M tasks) by ``gauntlet report`` and
``gauntlet compare`` with the exact command that resumes it, and that command completes it; an
``out_dir`` that is empty or resolves to a file through an interpolation is refused before Hydra
creates anything; a sweep or multirun started in an empty folder leaves nothing there but out_dir.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.store import rundir
from engine.store.outdir import LOCK_NAME
from tests.conftest import REPO, run_cli, tiny_overrides


def _gauntlet(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``gauntlet ARGS`` started in ``cwd`` (not the repository), as a user in their own folder would."""
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"})


def _without_out_dir(ckpt: Path, *extra: str) -> list[str]:
    """A tiny sweep's overrides (untrained model, 20 digits) with ``out_dir`` left to the caller."""
    return [a for a in tiny_overrides(ckpt, Path("unused"), "wandb=disabled", *extra) if not a.startswith("out_dir=")]


def _shim(folder: Path) -> dict[str, str]:
    """An environment whose ``gauntlet`` on PATH is this checkout's entry point (``python -m engine.cli``)."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "gauntlet"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m engine.cli \"$@\"\n")
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}


def _kill_after_first_result(cwd: Path, args: list[str], results: Path) -> None:
    """Start the sweep and SIGKILL it as soon as one task file exists (no handler runs, like an OOM kill)."""
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 300
        while not list(results.glob("*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_killed_sweep_is_reported_unfinished_and_its_command_resumes_it(tiny_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    args = tiny_overrides(tiny_checkpoint, Path("out"), "perturbation=[clean,pgd_linf]",
                          "perturbation.pgd_linf.steps=60", "n_examples=32", "shard_size=4", "batch_size=4",
                          "wandb=disabled")
    out = cwd / "out"
    _kill_after_first_result(cwd, args, out / "results")
    assert not (out / "sweep.json").exists(), "the sweep finished before it could be killed"
    done = len(list((out / "results").glob("*.parquet")))
    assert 1 <= done < 16
    command = f"cd {shlex.quote(str(cwd.resolve()))} && {shlex.join(['gauntlet', *args])}"

    proc = run_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"is UNFINISHED: {done} of 16 task(s) have verified results" in proc.stderr
    assert f"resume with: {command} — finished tasks are reused" in proc.stderr
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["tasks"] == {"planned": 16, "finished": done} and command in summary["unfinished"]
    assert summary["n_rows"] == sum(a["n"] for a in summary["accuracy"]) == 4 * done  # only the finished tasks
    assert f"Unfinished run: {done} of 16 task(s) have results." in (out / "report" / "index.html").read_text()
    proc = run_cli("compare", f"X={out}", f"Y={out}")
    assert proc.returncode == 0 and f"UNFINISHED: {done} of 16" in proc.stderr and "Traceback" not in proc.stderr
    assert f"note: {out} is UNFINISHED" in proc.stdout

    resumed = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600,
                             env=_shim(tmp_path / "bin"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{done} of 16 task(s) already have verified results" in resumed.stderr
    proc = run_cli("report", str(out))
    assert proc.returncode == 0 and "UNFINISHED" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["unfinished"] is None and summary["tasks"] == {"planned": 16, "finished": 16}
    assert summary["command"] == command


def _plan(out: Path, run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan of two tasks recorded by a sweep started from Python (no command), with no result yet."""
    monkeypatch.setattr(rundir, "_LAUNCH", {})
    out.mkdir(parents=True, exist_ok=True)
    tasks = [{"task_id": f"{run_id}{i}", "model": "m", "perturbation": "clean", "rows": [0, 8]} for i in range(2)]
    rundir.record_plan(out, run_id, {"dataset": {"name": "digits"}}, tasks)


def test_no_rows_yet_a_live_holder_and_a_stale_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from engine.sinks.report import main as report_main

    out = tmp_path / "run"
    _plan(out, "new", monkeypatch)
    assert report_main([str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} has no result rows yet; {out} is UNFINISHED: 0 of 2 task(s)")
    assert "resume by re-running the same gauntlet command (it was not recorded" in err
    (out / "sweep.json").write_text(json.dumps({"run_id": "old", "config": {}, "tasks": []}))
    assert rundir.load_run(out).run_id == "new"  # the plan of a later invocation wins over an older summary
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    status = rundir.load_run(out).status()
    assert status is not None and f"is still running (pid {os.getpid()}, started now): 0 of 2" in status
    (out / "plan.json").write_text("[1, 2]")
    with pytest.raises(rundir.GauntletError, match=r"plan\.json is not a Gauntlet record"):
        rundir.load_run(out)


BAD_OUT_DIRS = [
    ("out_dir=", "out_dir= is empty"),
    ("out_dir=''", "is empty: results would land in the current folder"),
    ("out_dir=${oc.env:GAUNTLET_TEST_EMPTY,''}", "(resolves to '') is empty"),
    ("out_dir=${oc.env:GAUNTLET_TEST_FILE}", "(resolves to '{file}'): {file} is a file, not a folder"),
    ("out_dir=${oc.env:GAUNTLET_TEST_FILE}/sub", "{file} is a file, not a folder"),
    ("out_dir=${oc.env:GAUNTLET_TEST_UNSET_X}", "cannot be resolved: "),
]


@pytest.mark.parametrize(("arg", "message"), BAD_OUT_DIRS)
def test_bad_out_dir_is_refused_before_anything_is_written(tiny_checkpoint: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, arg: str,
                                                           message: str) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    victim = tmp_path / "bashrc"
    victim.write_text("export KEEP=1\n")
    monkeypatch.setenv("GAUNTLET_TEST_FILE", str(victim))
    hydra_at_root = Path("/hydra").exists()
    proc = _gauntlet(cwd, *_without_out_dir(tiny_checkpoint, "perturbation=[clean]"), arg)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out_dir=") and "Traceback" not in proc.stderr
    assert message.format(file=victim) in lines[0]
    assert list(cwd.iterdir()) == [] and victim.read_text() == "export KEEP=1\n"
    assert Path("/hydra").exists() == hydra_at_root


def test_a_multirun_with_one_bad_out_dir_runs_no_job(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = _gauntlet(tmp_path, "-m", *_without_out_dir(tiny_checkpoint, "perturbation=[clean]"), "out_dir=ok,''")
    assert proc.returncode == 2 and "is empty" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_and_a_multirun_write_only_inside_their_out_dirs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    single, multi = tmp_path / "single", tmp_path / "multi"
    for cwd in (single, multi):
        cwd.mkdir()
    proc = _gauntlet(single, *tiny_overrides(tiny_checkpoint, Path("o"), "perturbation=[clean]", "wandb=disabled"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in single.iterdir()] == ["o"]
    (job,) = (single / "o" / "hydra").iterdir()
    assert (job / "gauntlet.log").is_file() and (job / ".hydra" / "overrides.yaml").is_file()

    # out_dir interpolates the swept key, whose config default (0) is no job's: Hydra alone would put the
    # sweep's multirun.yaml in r/s0
    proc = _gauntlet(multi, "-m", *_without_out_dir(tiny_checkpoint, "perturbation=[clean]"), "seed=1,2",
                     "out_dir=r/s${seed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in multi.iterdir()] == ["r"]
    assert sorted(p.name for p in (multi / "r").iterdir()) == ["s1", "s2"]
    for num, seed in enumerate((1, 2)):
        logs = list((multi / "r" / f"s{seed}" / "hydra" / "multirun").glob(f"*/{num}/.hydra/overrides.yaml"))
        assert len(logs) == 1 and f"seed={seed}" in logs[0].read_text()
        assert json.loads((multi / "r" / f"s{seed}" / "sweep.json").read_text())["config"]["seed"] == seed
    assert len(list((multi / "r" / "s1" / "hydra" / "multirun").glob("*/multirun.yaml"))) == 1
