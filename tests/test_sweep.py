"""The sweep end to end, in-process: Parquet rows, resume, determinism, sharding, no half-written results."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest
import torch

from engine.errors import ConfigError, ModelOutputError
from engine.models.checkpoint import save_checkpoint
from engine.models.cnn import SmallCNN
from engine.store.parquet import SCHEMA
from engine.sweep import run_sweep
from tests.conftest import compose_dict, tiny_overrides

PERTS = "perturbation=[clean,fgsm_linf,pgd_linf,gaussian_noise,contrast]"
REQUIRED = ["run_id", "task_id", "model", "dataset", "sample_id", "label", "perturbation", "family",
            "norm", "level", "pred", "correct", "margin"]


def _sweep(ckpt: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_sweep(compose_dict(tiny_overrides(ckpt, out, PERTS, "perturbation.pgd_linf.steps=2", *extra)))


def _rows(out: Path) -> list[dict]:  # type: ignore[type-arg]
    table = ds.dataset(out / "results", format="parquet").to_table()
    rows = table.drop_columns(["run_id", "task_id"]).to_pylist()
    return sorted(rows, key=lambda r: (r["perturbation"], r["level"], r["sample_id"]))


def test_sweep_writes_one_parquet_per_task_with_the_schema(tiny_checkpoint: Path, tmp_path: Path) -> None:
    outcome = _sweep(tiny_checkpoint, tmp_path)
    files = sorted((tmp_path / "results").glob("*.parquet"))
    assert len(files) == len(outcome.plan.tasks) == 5
    assert not list((tmp_path / "results").glob(".*"))  # no temporaries left behind
    table = ds.dataset(tmp_path / "results", format="parquet").to_table()
    assert table.schema.equals(SCHEMA) and set(REQUIRED) <= set(table.column_names)
    # clean 1 level, fgsm/pgd 7 levels, corruptions 5 levels; 20 samples each
    assert table.num_rows == 20 * (1 + 7 + 7 + 5 + 5)
    fam = dict(zip(table["perturbation"].to_pylist(), table["family"].to_pylist(), strict=True))
    assert fam == {"clean": "clean", "fgsm_linf": "attack", "pgd_linf": "attack",
                   "gaussian_noise": "corruption", "contrast": "corruption"}
    pgd = table.filter(ds.field("perturbation") == "pgd_linf").to_pylist()
    assert all(r["perturbation_size"] <= r["level"] + 1e-6 for r in pgd)
    assert all(r["correct"] == (r["pred"] == r["label"]) for r in pgd)
    assert all((r["margin"] > 0) == r["correct"] for r in pgd if abs(r["margin"]) > 1e-9)
    assert (tmp_path / "summary.txt").read_text().startswith("perturbation")


def test_rerun_skips_finished_tasks_and_recomputes_a_deleted_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    first = _sweep(tiny_checkpoint, tmp_path)
    rows = _rows(tmp_path)
    second = _sweep(tiny_checkpoint, tmp_path)
    assert first.evaluated == 5 and second.evaluated == 0
    assert _rows(tmp_path) == rows  # same rows, no duplicates
    victim = sorted((tmp_path / "results").glob("*.parquet"))[2]
    victim.unlink()
    third = _sweep(tiny_checkpoint, tmp_path)
    assert third.evaluated == 1 and victim.exists()
    assert _rows(tmp_path) == rows


def test_second_run_does_no_evaluation_work(tiny_checkpoint: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _sweep(tiny_checkpoint, tmp_path)
    import engine.runners.local as local

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluate() called on a finished sweep")

    monkeypatch.setattr(local, "evaluate", forbidden)
    assert _sweep(tiny_checkpoint, tmp_path).evaluated == 0


def test_same_seed_same_rows_other_seed_other_noise(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _sweep(tiny_checkpoint, tmp_path / "a")
    _sweep(tiny_checkpoint, tmp_path / "b")
    _sweep(tiny_checkpoint, tmp_path / "c", "seed=1")
    a, b, c = _rows(tmp_path / "a"), _rows(tmp_path / "b"), _rows(tmp_path / "c")
    assert a == b
    noisy = [r["margin"] for r in a if r["perturbation"] == "gaussian_noise"]
    assert noisy != [r["margin"] for r in c if r["perturbation"] == "gaussian_noise"]


def test_sharding_aligned_with_batches_gives_the_same_rows(tiny_checkpoint: Path, tmp_path: Path) -> None:
    whole = _sweep(tiny_checkpoint, tmp_path / "whole")
    sharded = _sweep(tiny_checkpoint, tmp_path / "sharded", "shard_size=8")
    assert len(sharded.plan.tasks) == 3 * len(whole.plan.tasks)  # 20 samples → 8 + 8 + 4
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seed"} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "whole")) == strip(_rows(tmp_path / "sharded"))


def test_task_ids_ignore_run_order_and_unrelated_sweep_members(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from engine.planning.plan import make_plan

    def ids(*extra: str) -> dict[str, str]:
        plan = make_plan(compose_dict(tiny_overrides(tiny_checkpoint, tmp_path, *extra)), lambda _: False)
        return {t.perturbation_name: t.task_id for t in plan.tasks}

    a = ids("perturbation=[clean,contrast]")
    b = ids("perturbation=[contrast,clean,fgsm_linf]")
    assert a["clean"] == b["clean"] and a["contrast"] == b["contrast"]
    assert ids("perturbation=[clean]", "seed=5")["clean"] != a["clean"]


def test_n_examples_larger_than_the_dataset_fails_before_writing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"n_examples=5000 .* only 450"):
        _sweep(tiny_checkpoint, tmp_path, "n_examples=5000")
    assert not (tmp_path / "results").exists()


def test_nan_logits_stop_the_sweep_with_a_clear_error(tmp_path: Path) -> None:
    state = SmallCNN().state_dict()
    state["head.3.bias"] = torch.full_like(state["head.3.bias"], float("nan"))
    ckpt = tmp_path / "nan.safetensors"
    save_checkpoint(state, ckpt, {})
    with pytest.raises(ModelOutputError, match="NaN/inf logits"):
        run_sweep(compose_dict(tiny_overrides(ckpt, tmp_path / "out", "perturbation=[clean]")))
    assert sorted((tmp_path / "out" / "results").glob("*")) == []
