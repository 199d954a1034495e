"""The W&B sink: an offline run read back, nothing written outside its folders; disabled: never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.conftest import REPO, tiny_overrides


def _two_tiny_models(ckpt: Path) -> list[str]:
    return ["model=[digits_cnn,digits_cnn_at]", f"model.digits_cnn_at.checkpoint={ckpt}",
            "model.digits_cnn_at.train=null", "perturbation=[clean,fgsm_linf]",
            "perturbation.fgsm_linf.eps=[0,0.1,0.2]"]


def _gauntlet(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI with a private, empty HOME (and matplotlib's cache outside it), W&B mode from the config only."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    tmp = home.parent / "tmpdir"
    tmp.mkdir(exist_ok=True)
    base.update(HOME=str(home), TMPDIR=str(tmp), MPLCONFIGDIR=str(home.parent / "mpl"), HYDRA_FULL_ERROR="0", **env)
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=base)


def _records(run_file: Path) -> tuple[list[dict[str, str]], dict[str, str], dict[str, str], dict[str, dict[str, str]]]:
    """History rows, final summary, config and artifacts (name → {path: reference}) of an offline run file."""
    from engine.sinks.wandb_sink import read_records

    history: list[dict[str, str]] = []
    summary: dict[str, str] = {}
    config: dict[str, str] = {}
    artifacts: dict[str, dict[str, str]] = {}
    for rec in read_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): i.value_json for i in rec.summary.update})
        elif kind in ("config", "run"):  # the initial config travels in the run record
            items = rec.config.update if kind == "config" else rec.run.config.update
            config.update({i.key or "/".join(i.nested_key): i.value_json for i in items})
        elif kind == "artifact":
            artifacts[rec.artifact.name] = {c.path: c.ref for c in rec.artifact.manifest.contents}
    return history, summary, config, artifacts


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_offline_run_is_logged_inside_the_run_folder_and_reads_back(tiny_checkpoint: Path, tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    args = tiny_overrides(tiny_checkpoint, out, *_two_tiny_models(tiny_checkpoint), "wandb=offline")
    proc = _gauntlet(args, home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # HOME and TMPDIR untouched: W&B's dir, cache, data and config dirs are all under out/wandb
    assert _files(home) == [] and _files(tmp_path / "tmpdir") == []
    run_id = json.loads((out / "sweep.json").read_text())["run_id"]
    (run_dir,) = (out / "wandb" / "wandb").glob(f"offline-run-*-gauntlet-{run_id}")
    assert {p.name for p in out.iterdir()} <= {"results", "report", "wandb", "hydra", "plan.json", "sweep.json",
                                               "summary.txt", "flags.json", "sweeps"}
    history, summary, config, artifacts = _records(next(run_dir.glob("run-*.wandb")))

    rows = ds.dataset(out / "results", format="parquet").to_table().to_pylist()
    def acc(model: str, pert: str, level: float) -> float:
        sel = [r["correct"] for r in rows if (r["model"], r["perturbation"], r["level"]) == (model, pert, level)]
        return sum(sel) / len(sel)

    fgsm = [h for h in history if "level/fgsm_linf" in h]
    assert [float(h["level/fgsm_linf"]) for h in fgsm] == [0.0, 0.1, 0.2]
    for h in fgsm:
        for model in ("digits_cnn", "digits_cnn_at"):
            level = float(h["level/fgsm_linf"])
            assert float(h[f"acc/fgsm_linf/{model}"]) == pytest.approx(acc(model, "fgsm_linf", level))
    assert any("charts/fgsm_linf_table/_type" in h for h in history)  # the line chart (one series per model)
    assert float(summary["clean/digits_cnn"]) == pytest.approx(acc("digits_cnn", "clean", 0.0))
    assert json.loads(summary["run_id"]) == run_id and int(summary["n_rows"]) == len(rows)
    assert json.loads(config["n_examples"]) == 20 and json.loads(config["wandb"])["mode"] == "offline"
    parquet = sorted(p.name for p in (out / "results").glob("*.parquet"))
    refs = artifacts[f"results-{run_id}"]  # wandb.artifact=reference (the default): file:// URIs
    assert sorted(refs) == parquet and all(refs[n] == (out / "results" / n).resolve().as_uri() for n in parquet)

    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in (run_dir / "files/media/table/tables").iterdir()}
    assert len(tables["accuracy"]["data"]) == len({(r["model"], r["perturbation"], r["level"]) for r in rows})
    assert tables["comparisons"]["columns"][:3] == ["model_a", "model_b", "perturbation"]
    assert len(tables["comparisons"]["data"]) == 3  # clean + fgsm at 0.1 and 0.2 (ε = 0 repeats clean)
    images = list((run_dir / "files/media/images/figures").glob("*.png"))
    figures = json.loads((out / "report" / "summary.json").read_text())["figures"]
    assert sorted(p.name.rsplit("_", 2)[0] for p in images) == sorted(figures) == ["eps_fgsm_linf", "heatmap"]

    # re-running the finished sweep logs nothing new; wandb.new_run=true logs a second run on purpose
    again = _gauntlet(args, home)
    assert again.returncode == 0 and "already logged" in again.stderr
    assert len(list((out / "wandb" / "wandb").glob("offline-run-*"))) == 1
    forced = _gauntlet([*args, "wandb.new_run=true", "wandb.artifact=upload"], home)
    assert forced.returncode == 0, forced.stderr[-2000:]
    (second,) = (out / "wandb" / "wandb").glob(f"offline-run-*-gauntlet-{run_id}-2")
    uploaded = _records(next(second.glob("run-*.wandb")))[3][f"results-{run_id}"]
    assert sorted(uploaded) == parquet and not any(uploaded.values())  # the files themselves, no references
    assert _files(home) == [] and _files(tmp_path / "tmpdir") == []


@pytest.mark.slow
def test_disabled_never_imports_wandb(tiny_checkpoint: Path, tmp_path: Path) -> None:
    code = (
        "import sys, json; from engine.compose.config import compose_sweep; from engine.sweep import run_sweep; "
        "run_sweep(compose_sweep(tuple(json.loads(sys.argv[1])))); print('wandb' in sys.modules)"
    )
    for extra, env in ((["wandb=disabled"], {}), (["wandb=offline"], {"WANDB_MODE": "disabled"})):
        out = tmp_path / extra[0].replace("=", "_")
        args = tiny_overrides(tiny_checkpoint, out, "perturbation=[clean]", *extra)
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env={**{k: v for k, v in os.environ.items() if k != "WANDB_MODE"}, **env})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1] == "False"
        assert not (out / "wandb").exists() and (out / "results").is_dir()


def test_bad_wandb_value_fails_before_any_compute(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = _gauntlet(tiny_overrides(tiny_checkpoint, tmp_path / "run", "wandb.mode=sometimes"), tmp_path)
    assert proc.returncode == 2 and "wandb.mode='sometimes' is not one of offline, online, disabled" in proc.stderr
    assert not (tmp_path / "run" / "results").exists()


class _FakeWandb:
    """Stands in for the wandb module: records what ``init`` was called with."""

    def __init__(self) -> None:
        self.kwargs: dict[str, object] = {}

    def Settings(self, **kw: object) -> dict[str, object]:  # wandb spells it so
        return kw

    def init(self, **kw: object) -> str:
        self.kwargs = kw
        return "run"


def test_online_settings_come_from_config_or_wandb_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.sinks.wandb_sink import _init, settings_of

    fake = _FakeWandb()
    cfg = {"wandb": {"mode": "online", "project": "robust", "entity": "lab", "group": "g1", "tags": ["a", "b"]}}
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _init(fake, settings_of(cfg), cfg, tmp_path, "gauntlet-abc")
    assert {k: fake.kwargs[k] for k in ("project", "entity", "group", "tags", "id", "resume", "mode")} == {
        "project": "robust", "entity": "lab", "group": "g1", "tags": ["a", "b"], "id": "gauntlet-abc",
        "resume": "allow", "mode": "online"}
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    bare = {"wandb": {"mode": "online", "project": None, "tags": []}}
    _init(fake, settings_of(bare), bare, tmp_path, "gauntlet-abc")
    assert fake.kwargs["project"] == "from-env" and fake.kwargs["entity"] is None and fake.kwargs["tags"] is None
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert settings_of(cfg)["mode"] == "disabled"
