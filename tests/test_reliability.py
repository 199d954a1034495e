"""Issue 8 from the outside: no silent replacement, verified resume, exactly-once rows, safe targets, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import engine.store.results
from engine.compose.config import CONFIG_DIR
from engine.errors import ConfigError, ThreatModelViolation
from engine.evaluation.checks import verify_batch
from engine.perturbations.base import Perturbation
from engine.store.parquet import SCHEMA, ResultIntegrityError, ResultStore, check_unique_keys
from engine.sweep import run_sweep
from tests.conftest import compose_dict, run_cli, tiny_overrides

PERTS = "perturbation=[clean,contrast]"


def _cli_ok(*args: str) -> subprocess.CompletedProcess[str]:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    text = proc.stderr + proc.stdout
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert n in text, text[-3000:]


def _sweep(ckpt: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_sweep(compose_dict(tiny_overrides(ckpt, out, PERTS, *extra)))


def _user_dir(tmp_path: Path, group: str, src: str, dst: str, header: str | None) -> Path:
    """A user's --config-dir holding a copy of ``configs/<group>/<src>.yaml`` as ``<dst>.yaml``."""
    folder = tmp_path / "cfg" / group
    folder.mkdir(parents=True, exist_ok=True)
    lines = (Path(CONFIG_DIR) / group / f"{src}.yaml").read_text().splitlines()
    lines = [line for line in lines if not line.startswith("# @package")]
    (folder / f"{dst}.yaml").write_text("\n".join(([header] if header else []) + lines) + "\n")
    return tmp_path / "cfg"


# 1. no silent replacement ----------------------------------------------------------------------

@pytest.mark.parametrize("group, src, select", [
    ("model", "digits_cnn_at", "model=[digits_cnn_at,my_model]"),
    ("perturbation", "pgd_linf", "perturbation=[pgd_linf,my_model]"),
])
def test_a_copied_config_that_keeps_its_header_is_refused_naming_both_files(
        tmp_path: Path, group: str, src: str, select: str) -> None:
    user = _user_dir(tmp_path, group, src, "my_model", f"# @package {group}.{src}")
    proc = run_cli(f"--config-dir={user}", select, f"out_dir={tmp_path / 'out'}")
    _refused(proc, f"{user / group / 'my_model.yaml'}", f"{Path(CONFIG_DIR) / group / src}.yaml",
             f"'# @package {group}.my_model'")
    assert not (tmp_path / "out" / "results").exists()


def test_a_copied_config_with_its_own_header_is_its_own_entry(tiny_checkpoint: Path, tmp_path: Path) -> None:
    user = _user_dir(tmp_path, "perturbation", "contrast", "my_contrast", "# @package perturbation.my_contrast")
    args = tiny_overrides(tiny_checkpoint, tmp_path / "out", "perturbation=[contrast,my_contrast]",
                          "perturbation.my_contrast.severities=[1]")
    for flag in ([f"--config-dir={user}"], ["-cd", str(user)], [f"-cd={user}"],
                 [f"hydra.searchpath=[file://{user}]"]):
        proc = _cli_ok(*flag, *args)
        assert "my_contrast" in proc.stdout
    table = engine.store.results.read(tmp_path / "out")
    assert sorted(set(table["perturbation"].to_pylist())) == ["contrast", "my_contrast"]


# 2. resume reuses only what it can prove --------------------------------------------------------

def test_resume_sets_aside_foreign_tampered_and_other_schema_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    first = _sweep(tiny_checkpoint, tmp_path)
    good = engine.store.results.read(tmp_path).sort_by([("task_id", "ascending"), ("level", "ascending"),
                                                  ("sample_id", "ascending")])
    clean_t, contrast_t = (next(t for t in first.plan.tasks if t.perturbation_name == p) for p in ("clean", "contrast"))
    res = tmp_path / "results"
    # (a) another task's file copied under this task's name
    shutil.copy(res / f"{contrast_t.task_id}.parquet", res / f"{clean_t.task_id}.parquet")
    second = _sweep(tiny_checkpoint, tmp_path)
    assert second.evaluated == 1
    assert len(list((tmp_path / "quarantine").iterdir())) == 1
    # (b) one value changed in a data page, footer intact
    path = res / f"{contrast_t.task_id}.parquet"
    table = pq.read_table(path)
    flipped = table.set_column(table.schema.get_field_index("correct"), "correct",
                               pa.array([not v for v in table["correct"].to_pylist()]))
    pq.write_table(flipped.replace_schema_metadata(table.schema.metadata), path)
    assert _sweep(tiny_checkpoint, tmp_path).evaluated == 1
    # (c) a valid Parquet file with another schema under a task's name
    pq.write_table(pa.table({"x": [1, 2]}), res / f"{clean_t.task_id}.parquet")
    # (d) foreign files in results/
    pq.write_table(pa.table({"y": [3]}), res / "notes.parquet")
    (res / "README.txt").write_text("mine")
    proc = _cli_ok(*tiny_overrides(tiny_checkpoint, tmp_path, PERTS))
    assert "1 evaluated, 1 reused" in proc.stdout
    assert "ignoring" in proc.stderr and "notes.parquet" in proc.stderr
    assert "moved to" in proc.stderr and "quarantine" in proc.stderr
    assert len(list((tmp_path / "quarantine").iterdir())) == 3  # moved aside, never deleted
    again = engine.store.results.read(tmp_path).sort_by([("task_id", "ascending"), ("level", "ascending"),
                                                   ("sample_id", "ascending")])
    assert again.drop_columns(["run_id"]).equals(good.drop_columns(["run_id"]))


def test_reader_filters_by_run_and_seed_and_skips_damaged_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    a = _sweep(tiny_checkpoint, tmp_path)
    b = _sweep(tiny_checkpoint, tmp_path, "seed=1")
    assert engine.store.results.read(tmp_path).num_rows == 2 * 20 * 6
    assert set(engine.store.results.read(tmp_path, run_id=b.plan.run_id)["seed"].to_pylist()) == {1}
    assert engine.store.results.read(tmp_path, seed=0)["run_id"].unique().to_pylist() == [a.plan.run_id]
    victim = next(iter(sorted((tmp_path / "results").glob("*.parquet"))))
    lost = pq.read_metadata(victim).num_rows
    pq.write_table(pa.table({"x": [1]}), victim)
    (tmp_path / "results" / "other.parquet").write_bytes(b"not parquet")
    assert engine.store.results.read(tmp_path).num_rows == 2 * 20 * 6 - lost
    assert victim.exists()  # the reader never moves files; the next run sets it aside


def test_compacted_tasks_are_recognised_by_resume(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _sweep(tiny_checkpoint, tmp_path, "shard_size=5")
    before = engine.store.results.read(tmp_path).sort_by([("task_id", "ascending"), ("level", "ascending"),
                                                    ("sample_id", "ascending")])
    proc = _cli_ok("compact", str(tmp_path))
    assert "compacted 8 task file(s) into 1 file(s)" in proc.stdout
    assert [p.name[:8] for p in (tmp_path / "results").glob("*.parquet")] == ["compact-"]
    after = engine.store.results.read(tmp_path).sort_by([("task_id", "ascending"), ("level", "ascending"),
                                                   ("sample_id", "ascending")])
    assert after.equals(before)
    assert _sweep(tiny_checkpoint, tmp_path, "shard_size=5").evaluated == 0
    assert run_cli("compact", str(tmp_path / "nowhere")).returncode == 2


# 3. exactly-once rows ----------------------------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("perturbation.pgd_linf.eps=[0.1,0.1]", "perturbation.pgd_linf.eps lists 0.1 more than once"),
    ("perturbation.contrast.severities=[2,2]", "perturbation.contrast.severities lists 2 more than once"),
    ("perturbation.pgd_linf.eps=[0.1,1/10]", "lists 0.1 more than once"),
])
def test_repeated_levels_are_refused(tiny_checkpoint: Path, tmp_path: Path, override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        run_sweep(compose_dict(tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[pgd_linf,contrast]",
                                              override)))
    assert not (tmp_path / "results").exists()


def test_duplicate_keys_can_never_be_written_or_read() -> None:
    table = pa.table({f.name: pa.array([], f.type) for f in SCHEMA}, schema=SCHEMA)
    row = {"run_id": "r", "task_id": "t", "model": "m", "dataset": "d", "sample_id": 1, "label": 0,
           "perturbation": "p", "family": "clean", "norm": None, "level": 0.0, "pred": 0, "correct": True,
           "margin": 1.0, "perturbation_size": 0.0, "broken_by": "", "grad_evals": 0, "queries": 0, "seed": 0}
    table = pa.Table.from_pylist([row, dict(row)], schema=SCHEMA)
    with pytest.raises(ResultIntegrityError, match="appear more than once"):
        check_unique_keys(table, "here")


# 4. configs are code: the allow-list ------------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("model.digits_cnn.arch._target_=builtins.open", "model.digits_cnn.arch._target_='builtins.open' is outside"),
    ("model.digits_cnn.arch._target_=torch.load", "target_packages=[torch]"),
    ("model.digits_cnn.arch._target_=engine.data.SampleSet", "is a SampleSet, not an nn.Module"),
    ("perturbation.contrast._target_=engine.models.cnn.SmallCNN", "is a SmallCNN, not a Perturbation"),
    ("runner._target_=os.system", "runner._target_='os.system' is outside"),
])
def test_targets_outside_the_allow_list_or_of_the_wrong_kind_are_refused(
        tiny_checkpoint: Path, tmp_path: Path, override: str, needle: str) -> None:
    marker = tmp_path / "pwned"
    proc = run_cli(*tiny_overrides(tiny_checkpoint, tmp_path / "out", PERTS), override,
                   f"+model.digits_cnn.arch.file={marker}" if "open" in override else "seed=0")
    _refused(proc, needle)
    assert not marker.exists() and not (tmp_path / "out" / "results").exists()


def test_allow_any_target_is_an_explicit_opt_in(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cfg = compose_dict(tiny_overrides(tiny_checkpoint, tmp_path, PERTS, "runner._target_=collections.OrderedDict"))
    with pytest.raises(ConfigError, match="outside the modules"):
        run_sweep(cfg)
    with pytest.raises(ConfigError, match="must build a runner"):  # allowed, then its result is checked
        run_sweep({**cfg, "allow_any_target": True})


# 5. plain mistakes: one message, exit 2, nothing written ----------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("+foo=1", "unknown key 'foo'; valid top-level keys:"),
    ("+model.digits_cnn.colour=red", "model.digits_cnn: unknown key(s) ['colour']; valid keys:"),
    ("perturbation.pgd_linf.eps=[8]", "L∞ ε is in pixel units on the [0, 1] scale, at most 1 (write 8/255"),
    ("perturbation.pgd_l2.eps=[40]", "√1024 = 32"),
    ("device=meta", "device='meta': Gauntlet evaluates on cpu or cuda only"),
    ("device=mps", "device='mps'"),
])
def test_plain_mistakes_get_one_message(tiny_checkpoint: Path, tmp_path: Path, override: str, needle: str) -> None:
    proc = run_cli(*tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean,pgd_linf,pgd_l2]"), override)
    _refused(proc, needle)
    assert not (tmp_path / "results").exists()


def test_out_dir_that_is_a_file_is_refused_before_anything(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    _refused(run_cli(*tiny_overrides(tiny_checkpoint, tmp_path / "afile", PERTS)), "is a file, not a folder")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results").write_text("x")
    _refused(run_cli(*tiny_overrides(tiny_checkpoint, tmp_path / "o", PERTS)), "results is a file")


def test_scalar_and_fractional_eps_and_tilde_out_dir(tiny_checkpoint: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        args = [a for a in tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[fgsm_linf]")
                if not a.startswith("out_dir")]
        proc = _cli_ok(*args, "out_dir=~/runs/x", "perturbation.fgsm_linf.eps=[0,8/255]")
        assert "ε=8/255" in proc.stdout
        assert (home / "runs" / "x" / "results").is_dir() and (home / "runs" / "x" / "hydra").is_dir()
        assert not (Path.cwd() / "~").exists()
        proc = _cli_ok(*args, "out_dir=~/runs/x", "perturbation.fgsm_linf.eps=0.0313725490196078")
        table = engine.store.results.read(home / "runs" / "x")
        assert sorted(set(table["level"].to_pylist()))[-1] == pytest.approx(8 / 255)
    finally:
        os.environ["HOME"] = env_home or ""


# 6. errors keep finished tasks and say so ---------------------------------------------------------

def test_a_runtime_error_keeps_finished_tasks_and_says_how_many(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from engine.models.checkpoint import save_checkpoint
    from engine.models.cnn import SmallCNN

    state = SmallCNN().state_dict()
    state["head.3.bias"] = torch.full_like(state["head.3.bias"], float("nan"))
    nan = tmp_path / "nan.safetensors"
    save_checkpoint(state, nan, {})
    args = [*tiny_overrides(tiny_checkpoint, tmp_path / "out", PERTS), "model=[digits_cnn,digits_cnn_at]",
            "model.digits_cnn_at.train=null"]
    proc = run_cli(*args, f"model.digits_cnn_at.checkpoint={nan}")
    _refused(proc, "NaN/inf logits", "2 of 4 task(s) of this sweep have verified results", "re-running")
    assert len(list((tmp_path / "out" / "results").glob("*.parquet"))) == 2
    proc = _cli_ok(*args, f"model.digits_cnn_at.checkpoint={tiny_checkpoint}")
    assert "2 evaluated, 2 reused" in proc.stdout


# 8. multirun keeps each job's sidecars -------------------------------------------------------------

def test_multirun_keeps_every_jobs_summary_and_flags(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _cli_ok("-m", *tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean]"), "seed=0,1")
    runs = sorted((tmp_path / "sweeps").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert {p.name for p in run.iterdir()} == {"sweep.json", "summary.txt", "flags.json"}
        assert json.loads((run / "sweep.json").read_text())["run_id"] == run.name
    assert {json.loads((r / "sweep.json").read_text())["config"]["seed"] for r in runs} == {0, 1}


# 9. one run per out_dir -----------------------------------------------------------------------------

def test_a_second_run_on_a_held_out_dir_is_refused_and_a_stale_lock_taken_over(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    lock = tmp_path / ".gauntlet.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
                                "command": "gauntlet test"}))
    _refused(run_cli(*tiny_overrides(tiny_checkpoint, tmp_path, PERTS)), f"pid {os.getpid()}", "in use")
    assert not (tmp_path / "results").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    proc = _cli_ok(*tiny_overrides(tiny_checkpoint, tmp_path, PERTS))
    assert "taking over" in proc.stderr and not lock.exists()


# 10. verification cannot be skipped ---------------------------------------------------------------

class _Sneaky(Perturbation):
    family = "attack"

    @property
    def levels(self) -> tuple[float, ...]:
        return (0.1,)


def test_an_attack_without_a_norm_or_an_unconfigured_level_is_an_error() -> None:
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ThreatModelViolation, match="must declare its norm"):
        verify_batch(_Sneaky(name="sneaky"), 0.1, x, x.clone())
    with pytest.raises(ThreatModelViolation, match=r"0\.5 is not one of its configured levels"):
        verify_batch(_Sneaky(name="sneaky", norm="linf"), 0.5, x, (x + 0.4).clamp(0, 1))


# 11. stray temporaries ------------------------------------------------------------------------------

def test_stray_temporaries_of_dead_processes_are_removed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    res = tmp_path / "results"
    res.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = res / f".0123456789abcdef0123.parquet.{dead.pid}.tmp"
    live = res / f".0123456789abcdef0123.parquet.{os.getpid()}.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    _sweep(tiny_checkpoint, tmp_path)
    assert not stale.exists() and live.exists()
    assert ResultStore(tmp_path).foreign_files() == []


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs, where no one may create folders")
def test_an_out_dir_that_cannot_be_written_is_refused_before_any_compute(tiny_checkpoint: Path) -> None:
    from engine.store.outdir import check_out_dir

    with pytest.raises(ConfigError, match=r"out_dir=/sys/gauntlet-test: .* not writable .*choose a writable"):
        check_out_dir("/sys/gauntlet-test")
    _refused(run_cli(*tiny_overrides(tiny_checkpoint, Path("/sys/gauntlet-test"), PERTS)), "not writable")
