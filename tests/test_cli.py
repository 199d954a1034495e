"""The ``gauntlet`` command as a user runs it: summary on success; one clear message and exit ≠ 0 on bad input."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest

from engine.models.checkpoint import manifest_path
from tests.conftest import run_cli, tiny_overrides


def test_cli_prints_summary_and_results_path(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli(*tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean,contrast]"))
    assert proc.returncode == 0, proc.stderr
    assert "digits_cnn acc % [95% CI]" in proc.stdout and "contrast" in proc.stdout
    assert f"Results: {tmp_path / 'results'}" in proc.stdout
    assert ds.dataset(tmp_path / "results", format="parquet").count_rows() == 20 * 6
    again = run_cli(*tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean,contrast]"))
    assert again.returncode == 0 and "0 evaluated, 2 reused" in again.stdout
    assert "already have verified results" in again.stderr + again.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=[digits_cnn,resnet9000]", r"unknown model 'resnet9000'; valid choices: .*digits_cnn, digits_cnn_at"),
        ("model=resnet9000", r"unknown model 'resnet9000'; valid choices: .*digits_cnn, digits_cnn_at, .*wrn_70_16"),
        ("perturbation=[clean,pgd_inf]", r"unknown perturbation 'pgd_inf'; valid choices: .*pgd_linf"),
        ("perturbation.pgd_linf.eps=[0.1,-0.2]", r"pgd_linf.*-0.2 is negative"),
        ("perturbation.pgd_linf.eps=[0.1,abc]", r"pgd_linf.*'abc' is not a finite number"),
        ("perturbation.contrast.severities=[1,6]", r"contrast.*severity 6 is outside 1-5"),
        ("n_examples=100000", r"n_examples=100000 .* only 450"),
        ("n_examples=-3", r"n_examples=-3 must be a positive integer"),
        ("device=tpu", r"device='tpu'"),
        ("corruption_baseline=vgg", r"corruption_baseline='vgg' is not a model of this sweep"),
    ],
)
def test_bad_input_fails_with_one_clear_message(tiny_checkpoint: Path, tmp_path: Path, override: str,
                                                message: str) -> None:
    import re

    args = tiny_overrides(tiny_checkpoint, tmp_path, "perturbation=[clean,pgd_linf,contrast]")
    if override.startswith("model="):
        args = [a for a in args if not a.startswith("model")]
    proc = run_cli(*args, override)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr + proc.stdout, re.S), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli(*tiny_overrides(tmp_path / "gone.safetensors", tmp_path, "perturbation=[clean]"))
    assert proc.returncode == 2
    assert "does not exist; set model.digits_cnn.checkpoint=" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_corrupt_checkpoint_is_a_clear_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:4096])
    manifest_path(bad).write_text(manifest_path(tiny_checkpoint).read_text())
    proc = run_cli(*tiny_overrides(bad, tmp_path, "perturbation=[clean]"))
    assert proc.returncode == 2 and "corrupt or was replaced" in proc.stderr
    manifest_path(bad).unlink()
    proc = run_cli(*tiny_overrides(bad, tmp_path, "perturbation=[clean]"))
    assert proc.returncode == 2 and "cannot be read" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("override, words", [
    ("n_examples=abc", "could not be converted to Integer"),
    ("no_such_key=3", "no_such_key"),
    ("n_examples=[1,2", "no viable alternative"),
])
def test_a_value_hydra_cannot_compose_is_one_message_with_exit_2(tmp_path, override, words) -> None:
    """A wrong type, an unknown key or broken override syntax: one line, exit 2 (not Hydra's exit 1)."""
    proc = run_cli(override, f"out_dir={tmp_path / 'run'}", timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
