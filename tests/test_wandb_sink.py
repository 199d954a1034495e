"""The W&B sink: offline runs read back (one per model, keys that overlay across runs, bands, the headline, the
verdicts, a summary that is not the last level's value), nothing written outside its folders; disabled: never
imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from engine.models.checkpoint import save_checkpoint, sha256_of
from engine.models.cnn import SmallCNN
from engine.stats.intervals import wilson_interval
from tests import data_fixtures as fx
from tests.conftest import REPO, tiny_overrides

CURVE_KEYS = {"level/fgsm_linf", "acc/fgsm_linf", "acc/fgsm_linf/ci_low", "acc/fgsm_linf/ci_high"}


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


def _run_record(run_file: Path) -> object:
    """The run record of an offline run file: display name, notes, tags, job type."""
    from engine.sinks.wandb_sink import read_records

    return next(r.run for r in read_records(run_file) if r.WhichOneof("record_type") == "run")


def _curves(history: list[dict[str, str]]) -> list[dict[str, float]]:
    """The history rows of the accuracy curves, W&B's own keys (``_step`` …) left out."""
    return [{k: float(v) for k, v in h.items() if not k.startswith("_")} for h in history
            if any(k.startswith("level/") for k in h)]


def _tables(run_dir: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {p.name.rsplit("_", 2)[0]: json.loads(p.read_text())
            for p in (run_dir / "files/media/table/tables").iterdir()}


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
    assert {p.name for p in out.iterdir()} <= {"results", "report", "wandb", "hydra", "plan.json", "sweep.json",
                                               "summary.txt", "flags.json", "sweeps"}
    rows = ds.dataset(out / "results", format="parquet").to_table().to_pylist()
    report = json.loads((out / "report" / "summary.json").read_text())
    parquet = sorted(p.name for p in (out / "results").glob("*.parquet"))

    def acc(model: str, pert: str, level: float) -> tuple[float, float, float]:
        sel = [r["correct"] for r in rows if (r["model"], r["perturbation"], r["level"]) == (model, pert, level)]
        return (sum(sel) / len(sel), *wilson_interval(sum(sel), len(sel)))

    keys = []
    for model in ("digits_cnn", "digits_cnn_at"):  # one W&B run per model of the sweep
        (run_dir,) = (out / "wandb" / "wandb").glob(f"offline-run-*-gauntlet-{run_id}-{model}")
        run_file = next(run_dir.glob("run-*.wandb"))
        history, summary, config, artifacts = _records(run_file)
        curves = _curves(history)
        keys.append({k for c in curves for k in c})
        assert [c["level/fgsm_linf"] for c in curves] == [0.0, 0.1, 0.2]
        for c in curves:
            want = acc(model, "fgsm_linf", c["level/fgsm_linf"])
            got = (c["acc/fgsm_linf"], c["acc/fgsm_linf/ci_low"], c["acc/fgsm_linf/ci_high"])
            assert got == pytest.approx(want) and got[1] <= got[0] <= got[2]
        assert json.loads(config["model"]) == model and json.loads(config["sweep_run_id"]) == run_id
        assert json.loads(config["checkpoint_sha256"]) == sha256_of(tiny_checkpoint)
        assert json.loads(config["n_samples"]) == 20 and json.loads(config["sweep"])["wandb"]["mode"] == "offline"
        assert _run_record(run_file).display_name == f"{model} · digits · 20 samples · {run_id[:6]}"  # type: ignore[attr-defined]
        assert float(summary["clean/acc"]) == pytest.approx(acc(model, "clean", 0.0)[0])
        assert json.loads(summary["headline"]) == " ".join(report["headline"])
        assert json.loads(summary["run_id"]) == run_id and int(summary["n_rows"]) == len(rows)
        assert any("charts/fgsm_linf_table/_type" in h for h in history)  # the in-run curve with its band edges
        refs = artifacts[f"results-{run_id}"]  # wandb.artifact=reference (the default): file:// URIs
        assert sorted(refs) == parquet and all(refs[n] == (out / "results" / n).resolve().as_uri() for n in parquet)
        tables = _tables(run_dir)
        assert {r[0] for r in tables["accuracy"]["data"]} == {model}  # this model's rows: no double counting
        assert len(tables["accuracy"]["data"]) == len({(r["perturbation"], r["level"]) for r in rows
                                                       if r["model"] == model})
        assert len(tables["comparisons"]["data"]) == 3  # clean + fgsm at 0.1 and 0.2 (ε = 0 repeats clean)
        assert [r[0] for r in tables["headline"]["data"]] == report["headline"]
        images = list((run_dir / "files/media/images/figures").glob("*.png"))
        assert sorted(p.name.rsplit("_", 2)[0] for p in images) == sorted(report["figures"])
    assert keys[0] == keys[1] == CURVE_KEYS  # the same keys for both models: their curves overlay

    # re-running the finished sweep logs nothing new; wandb.new_run=true logs it again on purpose
    again = _gauntlet(args, home)
    assert again.returncode == 0 and "already logged" in again.stderr
    assert len(list((out / "wandb" / "wandb").glob("offline-run-*"))) == 2
    forced = _gauntlet([*args, "wandb.new_run=true", "wandb.artifact=upload"], home)
    assert forced.returncode == 0, forced.stderr[-2000:]
    second = sorted((out / "wandb" / "wandb").glob(f"offline-run-*-gauntlet-{run_id}-*-2"))
    assert [p.name.rsplit("-", 2)[-2] for p in second] == ["digits_cnn", "digits_cnn_at"]
    uploaded = _records(next(second[0].glob("run-*.wandb")))[3][f"results-{run_id}"]
    assert sorted(uploaded) == parquet and not any(uploaded.values())  # the files themselves, no references
    assert _files(home) == [] and _files(tmp_path / "tmpdir") == []


SWEEPS = """
import json, sys
from engine.compose.config import compose_sweep
from engine.sweep import run_sweep
for overrides in json.loads(sys.argv[1]):
    run_sweep(compose_sweep(tuple(overrides)))
"""
N_NPZ = 24


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two sweeps of two checkpoints (two model names) on a .npz data set, each logged offline in one process
    with an empty HOME: the team's case of runs made apart and compared in W&B."""
    root = tmp_path_factory.mktemp("wandb_npz")
    home = root / "home"
    home.mkdir()
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpts.append(root / f"ck{seed}.safetensors")
        save_checkpoint(SmallCNN().state_dict(), ckpts[-1], {"model": "tiny"})
    data = fx.write_npz(root / "data" / "test.npz", fx.smooth_images(N_NPZ, seed=3, channels=1),
                        np.arange(N_NPZ) % 10)
    runs = {"digits_cnn": root / "a", "digits_cnn_at": root / "b", "folder": root / "c"}
    common = ["perturbation=[clean,fgsm_linf]", "perturbation.fgsm_linf.eps=[0,0.1,0.2]", "batch_size=8",
              "progress=false", "device=cpu", "wandb=offline"]
    sweeps = [[f"model=[{m}]", f"model.{m}.checkpoint={ck}", f"model.{m}.train=null", "dataset=npz",
               f"dataset.path={data}", "dataset.num_classes=10", f"n_examples={N_NPZ}", *common, f"out_dir={out}"]
              for (m, out), ck in zip(list(runs.items())[:2], ckpts, strict=True)]
    # a third run on other data: a 16-bit RGB image folder, read by a 3-channel model of the same name
    folder = fx.write_image_folder(root / "folder", fx.smooth_images(12, seed=4), np.arange(12) % 10,
                                   [f"c{i}" for i in range(10)], ".png", bits=16)
    torch.manual_seed(2)
    ckpts.append(root / "rgb.safetensors")
    save_checkpoint(SmallCNN(in_channels=3, image_size=32, width=4).state_dict(), ckpts[-1], {})
    sweeps.append(["model=[digits_cnn]", f"model.digits_cnn.checkpoint={ckpts[-1]}", "model.digits_cnn.train=null",
                   "model.digits_cnn.arch.in_channels=3", "+model.digits_cnn.arch.image_size=32",
                   "model.digits_cnn.arch.width=4", "model.digits_cnn.mean=[0.5,0.5,0.5]",
                   "model.digits_cnn.std=[0.25,0.25,0.25]", "dataset=image_folder", f"dataset.root={folder}",
                   "dataset.name=my_folder", "n_examples=12", *common, f"out_dir={runs['folder']}"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), MPLCONFIGDIR=str(root / "mpl"))
    proc = subprocess.run([sys.executable, "-c", SWEEPS, json.dumps(sweeps)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _files(home) == []
    return {**runs, "ck_digits_cnn": ckpts[0], "ck_digits_cnn_at": ckpts[1], "ck_folder": ckpts[2]}


def _only_run(out: Path) -> Path:
    (run_dir,) = (out / "wandb" / "wandb").glob("offline-run-*")
    return run_dir


def test_runs_of_two_checkpoints_overlay_on_the_same_keys(two_checkpoints: dict[str, Path]) -> None:
    seen = {}
    for model in ("digits_cnn", "digits_cnn_at"):
        out = two_checkpoints[model]
        run_id = json.loads((out / "sweep.json").read_text())["run_id"]
        run_dir = _only_run(out)
        assert run_dir.name.endswith(f"-gauntlet-{run_id}-{model}")
        run_file = next(run_dir.glob("run-*.wandb"))
        history, summary, config, _ = _records(run_file)
        curves = _curves(history)
        seen[model] = {k for c in curves for k in c}
        # the model is in the config, never in a key
        assert json.loads(config["model"]) == model and not any(model in k for k in seen[model] | set(summary))
        assert json.loads(config["checkpoint_sha256"]) == sha256_of(two_checkpoints[f"ck_{model}"])
        assert json.loads(config["dataset"]) == "npz" and json.loads(config["n_samples"]) == N_NPZ
        record = _run_record(run_file)
        assert record.display_name == f"{model} · npz · {N_NPZ} samples · {run_id[:6]}"  # type: ignore[attr-defined]
        report = json.loads((out / "report" / "summary.json").read_text())
        assert record.notes == " ".join(report["headline"]) and report["headline"]  # type: ignore[attr-defined]
        # the band: lower ≤ accuracy ≤ upper at every ε, the Wilson interval of the Parquet counts
        rows = ds.dataset(out / "results", format="parquet").to_table().to_pylist()
        for c in curves:
            sel = [r["correct"] for r in rows if (r["perturbation"], r["level"]) == ("fgsm_linf", c["level/fgsm_linf"])]
            assert len(sel) == N_NPZ
            lo, hi = wilson_interval(sum(sel), len(sel))
            assert (c["acc/fgsm_linf/ci_low"], c["acc/fgsm_linf"], c["acc/fgsm_linf/ci_high"]) == pytest.approx(
                (lo, sum(sel) / len(sel), hi))
        # the summary: worst case over ε > 0 and the area under the curve, not the last ε's value
        attacked = [c["acc/fgsm_linf"] for c in curves if c["level/fgsm_linf"] > 0]
        assert float(summary["worst/fgsm_linf"]) == pytest.approx(min(attacked))
        auc = next(a for a in report["area_under_curve"] if a["perturbation"] == "fgsm_linf")
        assert float(summary["auc/fgsm_linf"]) == pytest.approx(auc["normalised"])
        assert "acc/fgsm_linf" not in summary  # W&B's default summary (the last ε) is switched off
        band = _tables(run_dir)["accuracy"]
        assert band["columns"][-3:] == ["accuracy", "ci_low", "ci_high"] and len(band["data"]) == 4
    assert seen["digits_cnn"] == seen["digits_cnn_at"] == CURVE_KEYS


def test_a_run_on_other_data_overlays_and_says_so(two_checkpoints: dict[str, Path]) -> None:
    """A run of the same model name on other data (a 16-bit image folder) writes the same keys, so its curve lands
    on the same chart: its config and name say which data and how many samples, to filter it out or in."""
    out = two_checkpoints["folder"]
    run_id = json.loads((out / "sweep.json").read_text())["run_id"]
    run_file = next(_only_run(out).glob("run-*.wandb"))
    history, _, config, _ = _records(run_file)
    assert {k for c in _curves(history) for k in c} == CURVE_KEYS
    assert json.loads(config["dataset"]) == "my_folder" and json.loads(config["n_samples"]) == 12
    assert json.loads(config["checkpoint_sha256"]) == sha256_of(two_checkpoints["ck_folder"])
    assert json.loads(config["model_config"])["arch"]["in_channels"] == 3
    assert _run_record(run_file).display_name == f"digits_cnn · my_folder · 12 samples · {run_id[:6]}"  # type: ignore[attr-defined]


def test_a_wandb_failure_is_one_message_and_records_nothing(two_checkpoints: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.sinks.wandb_sink as sink
    from engine.errors import GauntletError
    from engine.store.rundir import load_run

    out = two_checkpoints["digits_cnn"]
    marker = (out / "wandb" / sink.MARKER).read_text()
    run = load_run(out)

    def fail(*args: object) -> None:
        raise RuntimeError("quota exceeded")

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(sink, "_log", fail)
    cfg = {**run.config, "wandb": {**run.config["wandb"], "new_run": True}}
    with pytest.raises(GauntletError, match=r"quota exceeded.*results and report are saved"):
        sink.log_sweep(cfg, out, run.run_id)
    assert (out / "wandb" / sink.MARKER).read_text() == marker  # not recorded: the next try logs every model
    assert len(list((out / "wandb" / "wandb").glob("offline-run-*"))) == 1


def test_verify_logs_one_run_with_its_verdicts_and_headline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gauntlet verify``: the base sweep and its escalations are not logged on their own; once verdict.json is
    written, one W&B run carries the verdict (summary, table, run notes) with the sweep's keys."""
    home, out = tmp_path / "home", tmp_path / "verify"
    home.mkdir()
    claim = tmp_path / "claim.yaml"
    claim.write_text(json.dumps({"title": "wandb", "model": "digits_cnn", "dataset": "digits", "n_examples": 8,
                                 "claims": [{"threat_model": {"norm": "linf", "eps": 0.3}, "claimed_accuracy": 0.9}]}))
    proc = _gauntlet(["verify", str(claim), f"out_dir={out}", "budget=0.05", "progress=false", "batch_size=8"], home)
    assert proc.returncode in (0, 1, 3), proc.stderr[-3000:]
    doc = json.loads((out / "verdict.json").read_text())
    (v,) = doc["claims"]
    (run_dir,) = (out / "wandb" / "wandb").glob("offline-run-*-digits_cnn")
    assert not list(out.glob("escalations/*/wandb"))  # escalation sweeps: no W&B runs of their own
    run_file = next(run_dir.glob("run-*.wandb"))
    _, summary, config, _ = _records(run_file)
    assert json.loads(summary["verdict"]) == json.loads(summary["verdict/1"]) == v["verdict"]
    assert float(summary["verdict/1/measured"]) == pytest.approx(v["measured_accuracy"])
    assert float(summary["verdict/1/claimed"]) == pytest.approx(0.9)
    record = _run_record(run_file)
    assert record.job_type == "verify" and "verify" in record.tags  # type: ignore[attr-defined]
    assert record.notes.startswith(f"{v['verdict']}: {v['claim']} claimed 90.0 %")  # type: ignore[attr-defined]
    headline = json.loads((out / "report" / "summary.json").read_text())["headline"]
    assert json.loads(summary["headline"]) == " ".join(headline) and headline
    table = _tables(run_dir)["verdicts"]
    assert table["columns"][:3] == ["claim", "verdict", "measured"]
    assert [row[:3] for row in table["data"]] == [[v["claim"], v["verdict"], v["measured_accuracy"]]]
    assert table["data"][0][8] == v["rule"] and v["rule"]
    assert json.loads(config["model"]) == "digits_cnn" and json.loads(config["n_samples"]) == 8
    assert "deferred" not in json.loads(config["sweep"])["wandb"]
    assert _files(home) == []

    # the same verdict is not logged twice; a different one (as if re-verified with other settings) is a new run
    from engine.sinks.wandb_sink import log_verify

    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert log_verify(out) == []
    v["measured_accuracy"] = 0.5
    (out / "verdict.json").write_text(json.dumps(doc))
    (second,) = log_verify(out)
    assert second.endswith("-digits_cnn") and not run_dir.name.endswith(second)
    assert len(list((out / "wandb" / "wandb").glob("offline-run-*"))) == 2


def _summary_doc(levels: list[tuple[float, float]], family: str = "attack") -> dict:  # type: ignore[type-arg]
    """A summary.json fragment for one model and one perturbation (accuracy at each level)."""
    acc = [{"model": "m", "perturbation": "p", "family": family, "norm": "linf", "level": lv, "n": 100,
            "n_correct": round(100 * a), "accuracy": a, "wilson": list(wilson_interval(round(100 * a), 100))}
           for lv, a in levels]
    return {"run_id": "0123456789ab", "n_rows": 300, "flags": [], "headline": ["m: its numbers."],
            "datasets": ["cifar10"], "accuracy": acc, "area_under_curve": [], "corruption": [], "verdicts": None,
            "models": [{"name": "m", "checkpoint": "/x/m.pt", "checkpoint_sha256": "ab", "clean": acc[0]}],
            "perturbations": [{"name": "p"}], "leaderboard": {"rows": []}}


def test_summary_is_the_worst_level_not_the_last() -> None:
    from engine.sinks.wandb_sink import curve_rows, run_name, summary_values

    # not monotone (a weak attack at ε = 0.2 found less than at 0.1): the worst case is at 0.1, the last ε is not it
    doc = _summary_doc([(0.0, 0.9), (0.1, 0.2), (0.2, 0.3)])
    values = summary_values(doc, "m")
    assert (values["worst/p"], values["worst/p/level"]) == (0.2, 0.1)
    assert values["worst/p/ci_low"] < 0.2 < values["worst/p/ci_high"] and "acc/p" not in values
    # an attack's ε = 0 is its clean accuracy, never its worst case, even when the attack "raises" accuracy
    assert summary_values(_summary_doc([(0.0, 0.1), (0.1, 0.5)]), "m")["worst/p"] == 0.5
    # corruptions: every severity counts; a single level is reported as that value
    assert summary_values(_summary_doc([(1.0, 0.4), (2.0, 0.6)], "corruption"), "m")["worst/p/level"] == 1.0
    assert summary_values(_summary_doc([(0.0, 0.7)], "clean"), "m")["acc/p"] == 0.7
    assert [r["level/p"] for r in curve_rows(doc, "m")["p"]] == [0.0, 0.1, 0.2]
    assert run_name(doc, "m") == "m · cifar10 · 100 samples · 012345"
    assert summary_values(doc, "other") == {"run_id": "0123456789ab", "n_rows": 300, "n_flags": 0,
                                            "headline": "m: its numbers."}


def test_verdicts_go_to_their_model_only_and_ids_stay_apart() -> None:
    from engine.sinks.wandb_sink import _slug, verdict_rows, verdict_values

    doc = _summary_doc([(0.0, 0.9)])
    claims = [{"claim": "L∞ ε=8/255", "verdict": v, "measured_accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 100,
               "claimed_accuracy": 0.6, "rule": "r"} for v in ("CONSISTENT", "INCONCLUSIVE")]
    doc["verdicts"] = {"model": {"name": "m"}, "claims": claims}
    assert verdict_values(doc, "m")["verdict"] == "INCONCLUSIVE"  # the worst over the claims
    assert verdict_values(doc, "m")["verdict/2"] == "INCONCLUSIVE" and len(verdict_rows(doc, "m")) == 2
    assert verdict_values(doc, "another") == {} and verdict_rows(doc, "another") == []
    # model names that W&B ids cannot hold, or that differ only there, give distinct ids
    assert _slug("digits_cnn-at") == "digits_cnn-at"
    assert len({_slug("a.b"), _slug("a_b"), _slug("a/b")}) == 3 and all(" " not in _slug(n) for n in ("a b", "é"))
    assert _slug("x" * 40) != _slug("x" * 41) and len(_slug("x" * 200)) <= 39


def test_deferred_logs_nothing_until_the_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.sinks.wandb_sink import log_sweep

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = {"wandb": {"mode": "offline", "deferred": True}}
    assert log_sweep(cfg, tmp_path, "0123456789ab") == []
    assert list(tmp_path.iterdir()) == []  # not even the W&B folder


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
    _init(fake, settings_of(cfg), tmp_path, "gauntlet-abc-m", "m · cifar10 · 10 samples · abc", {"model": "m"},
          notes="m is more robust.")
    assert {k: fake.kwargs[k] for k in ("project", "entity", "group", "tags", "id", "resume", "mode", "name",
                                        "notes", "job_type", "config")} == {
        "project": "robust", "entity": "lab", "group": "g1", "tags": ["a", "b"], "id": "gauntlet-abc-m",
        "resume": "allow", "mode": "online", "name": "m · cifar10 · 10 samples · abc", "notes": "m is more robust.",
        "job_type": "sweep", "config": {"model": "m"}}
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    bare = {"wandb": {"mode": "online", "project": None, "tags": []}}
    _init(fake, settings_of(bare), tmp_path, "gauntlet-abc-m", "m", {}, job="verify")
    assert fake.kwargs["project"] == "from-env" and fake.kwargs["entity"] is None and fake.kwargs["tags"] == ["verify"]
    assert fake.kwargs["group"] is None  # never a default group: W&B would average the models' curves
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert settings_of(cfg)["mode"] == "disabled"
