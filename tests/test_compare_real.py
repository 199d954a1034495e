"""``gauntlet compare`` on real runs over a .npz dataset: two checkpoints of one config, a run with itself,
labels, order, one sign, primary endpoints, and the refusals — each number checked against the Parquet rows."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models.checkpoint import save_checkpoint
from engine.models.cnn import SmallCNN
from engine.stats import compare
from engine.stats.compare import parse_endpoints
from engine.store.results import read
from tests import data_fixtures as fx
from tests.conftest import run_cli

N = 48
RIGHT_FOR_A = 36  # the labels are checkpoint A's own predictions on the first 36 samples, wrong on the rest


def _sweep(out: Path, ckpt: Path, data: Path, fgsm: bool = True) -> None:
    perturbations = ["perturbation=[clean,fgsm_linf]", "perturbation.fgsm_linf.eps=[0.1]"] if fgsm else [
        "perturbation=[clean]"]
    proc = run_cli("model=[digits_cnn]", f"model.digits_cnn.checkpoint={ckpt}", "model.digits_cnn.train=null",
                   "dataset=npz", f"dataset.path={data}", "dataset.num_classes=10", *perturbations,
                   f"n_examples={N}", "batch_size=16", "progress=false", "wandb=disabled", "device=cpu",
                   f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two untrained checkpoints of the ``digits_cnn`` config (seeds 0 and 1) run on one .npz; both run
    folders are named ``run`` (in ``ck0/`` and ``ck1/``), as two checkpoints' folders often are."""
    root = tmp_path_factory.mktemp("compare")
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpts.append(root / f"ck{seed}.safetensors")
        save_checkpoint(SmallCNN().state_dict(), ckpts[-1], {"model": "tiny"})
    images = fx.smooth_images(N, seed=7, channels=1)
    data = fx.write_npz(root / "data" / "test.npz", images, np.zeros(N, dtype=np.int64))
    _sweep(root / "scratch", ckpts[0], data, fgsm=False)
    pred = read(root / "scratch").sort_by("sample_id")["pred"].to_numpy()
    labels = np.where(np.arange(N) < RIGHT_FOR_A, pred, (pred + 1) % 10)
    fx.write_npz(data, images, labels)
    shutil.rmtree(root / "scratch")
    out = {"root": root, "data": data, "a": root / "ck0" / "run", "b": root / "ck1" / "run"}
    for key, ckpt in (("a", ckpts[0]), ("b", ckpts[1])):
        _sweep(out[key], ckpt, data)
    return out


def _compare(*args: str, json_path: Path | None = None) -> tuple[str, list[dict]]:  # type: ignore[type-arg]
    extra = ["--json", str(json_path)] if json_path else []
    proc = run_cli("compare", *args, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout, json.loads(json_path.read_text()) if json_path else []


def _refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``gauntlet compare ARGS`` in this process (the console entry calls the same ``main``): exit 2, one line."""
    assert compare.main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def _by_hand(a: Path, b: Path, perturbation: str) -> tuple[int, int, int, int]:
    """(both right, only A right, only B right, both wrong) from the two runs' Parquet rows."""
    ra, rb = ({r["sample_id"]: r["correct"] for r in read(d).to_pylist() if r["perturbation"] == perturbation}
              for d in (a, b))
    cells = [0, 0, 0, 0]
    for s in ra.keys() & rb.keys():
        cells[(0 if ra[s] else 2) + (0 if rb[s] else 1)] += 1
    return tuple(cells)  # type: ignore[return-value]


def test_two_checkpoints_of_one_config_in_the_order_given(runs: dict[str, Path], tmp_path: Path) -> None:
    text, rows = _compare(f"A={runs['a']}", f"B={runs['b']}", json_path=tmp_path / "ab.json")
    clean = next(r for r in rows if r["perturbation"] == "clean")
    assert (clean["model_a"], clean["model_b"]) == ("A", "B")
    both, only_a, only_b, neither = _by_hand(runs["a"], runs["b"], "clean")
    assert clean["counts"] == {"both": both, "only_a": only_a, "only_b": only_b, "neither": neither}
    assert clean["n"] == N
    assert clean["accuracy_a"] == RIGHT_FOR_A / N and clean["difference"] == (only_a - only_b) / N > 0.4
    cell = f"{100 * clean['difference']:+.1f} [{100 * clean['ci_low']:.1f}, {100 * clean['ci_high']:.1f}]"
    line = next(x for x in text.splitlines() if re.match(r"A\s+B\s+clean\s", x))
    assert cell in line  # the table's sign and the sentence's are the same
    assert f"A is more accurate than B on clean inputs: A − B = {cell.replace(' [', ' pp [')}" in text
    assert clean["decision"] == "a" and clean["p_adjusted"] < 0.05 and clean["ci_low"] > 0

    text_ba, rows_ba = _compare(f"B={runs['b']}", f"A={runs['a']}", json_path=tmp_path / "ba.json")
    clean_ba = next(r for r in rows_ba if r["perturbation"] == "clean")
    assert (clean_ba["model_a"], clean_ba["model_b"]) == ("B", "A")
    assert clean_ba["difference"] == -clean["difference"]
    assert (clean_ba["ci_low"], clean_ba["ci_high"]) == pytest.approx((-clean["ci_high"], -clean["ci_low"]))
    assert "A is more accurate than B on clean inputs: B − A = -" in text_ba

    by_flag, _ = _compare("--label", "A", "--label", "B", str(runs["a"]), str(runs["b"]))
    assert by_flag == text


def test_unlabelled_runs_with_the_same_model_and_folder_name_stay_apart(runs: dict[str, Path]) -> None:
    text, _ = _compare(str(runs["a"]), str(runs["b"]))
    assert "digits_cnn@run#1 is more accurate than digits_cnn@run#2 on clean inputs: digits_cnn@run#1 − " \
           "digits_cnn@run#2 = +" in text


def test_a_run_compared_with_itself_differs_by_nothing(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("compare", str(runs["a"]), str(runs["a"]), "--json", str(tmp_path / "aa.json"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "is given more than once: its rows are compared with themselves (every difference is 0)" in proc.stderr
    rows = json.loads((tmp_path / "aa.json").read_text())
    assert {r["perturbation"] for r in rows} == {"clean", "fgsm_linf"}
    for r in rows:
        assert (r["difference"], r["counts"]["only_a"], r["counts"]["only_b"], r["p_value"]) == (0, 0, 0, 1.0)
        assert r["ci_low"] < 0 < r["ci_high"] and r["decision"] == "none"
        assert r["sentence"].startswith("no significant difference between digits_cnn@run#1 and digits_cnn@run#2")


def test_primary_endpoints_carry_the_correction_and_the_rest_are_secondary(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, every = _compare(f"A={runs['a']}", f"B={runs['b']}", json_path=tmp_path / "all.json")
    assert {(r["primary"], r["n_primary"], r["ci_level"]) for r in every} == {(True, 2, 1 - 0.05 / 2)}
    for r in every:
        assert r["p_adjusted"] == pytest.approx(min(1.0, 2 * r["p_value"]))
        assert (r["ci_low"] > 0 or r["ci_high"] < 0) == (r["p_adjusted"] < 0.05)  # the interval agrees with p adj.
    for spec in ("fgsm_linf@0.1", "fgsm_linf", "fgsm_linf@1/10"):
        text, rows = _compare(f"A={runs['a']}", f"B={runs['b']}", "--primary", spec, json_path=tmp_path / "p.json")
        fgsm, clean = (next(r for r in rows if r["perturbation"] == p) for p in ("fgsm_linf", "clean"))
        assert (fgsm["primary"], fgsm["n_primary"], fgsm["ci_level"]) == (True, 1, 0.95)
        assert fgsm["p_adjusted"] == fgsm["p_value"]
        assert (clean["primary"], clean["p_adjusted"], clean["ci_level"]) == (False, None, 0.95)
        assert clean["sentence"].startswith("secondary (A vs B on clean inputs, descriptive, not in the "
                                            "multiplicity correction): A − B = +")
        assert "one primary row: 95 % interval and p, no adjustment needed" in text
    for spec, message in (("pgd_linf", "--primary names pgd_linf, which no compared row has; rows: clean, "
                                       "fgsm_linf@0.1"),
                          ("fgsm_linf@0.2", "--primary names fgsm_linf@0.2"),
                          ("fgsm_linf@abc", "level 'abc' of fgsm_linf is not a number"),
                          ("@0.1", "'@0.1' is not PERTURBATION or PERTURBATION@LEVEL")):
        assert message in _refused(capsys, str(runs["a"]), str(runs["b"]), "--primary", spec)
    assert parse_endpoints("pgd_linf@8/255, contrast@3,clean") == [("pgd_linf", 8 / 255), ("contrast", 3.0),
                                                                    ("clean", None)]


def test_labels_paths_and_other_data_refused_or_read_as_meant(runs: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    a, b = str(runs["a"]), str(runs["b"])
    for args, message in (((f"A={a}", f"A={b}"), "label 'A' is given to two runs"),
                          (("--label", "A", a, b), "--label given 1 time(s) for 2 run(s)"),
                          (("--label", "A", "--label", "B", f"X={a}", b), "has a label both as LABEL=OUT_DIR"),
                          ((a,), "need at least two models to compare"),
                          ((a, str(tmp_path)), "is not a Gauntlet run folder"),
                          ((a, b, "--baseline", "digits_cnn"), "--baseline 'digits_cnn' is not among the models")):
        assert message in _refused(capsys, *args)
    odd = tmp_path / "lr=0.1"  # a folder whose name holds '=' is a path, not LABEL=OUT_DIR
    shutil.copytree(runs["a"], odd)
    text, _ = _compare(str(odd), b)
    assert "digits_cnn@lr=0.1 is more accurate than digits_cnn@run on clean inputs" in text
    text, _ = _compare(a, b, "--baseline", "digits_cnn@run#1")  # baseline is B: the other model is A
    assert "digits_cnn@run#1 is more accurate than digits_cnn@run#2 on clean inputs: digits_cnn@run#2 − " \
           "digits_cnn@run#1 = -" in text
    copy = runs["root"] / "elsewhere" / "test.npz"  # the same file at another path: another dataset config
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(runs["data"], copy)
    other = tmp_path / "other"
    _sweep(other, runs["root"] / "ck1.safetensors", copy, fgsm=False)
    proc = run_cli("compare", a, str(other))  # through the console entry point: exit 2, no traceback
    assert proc.returncode == 2 and "cannot pair runs over different datasets" in proc.stderr
    assert str(copy) in proc.stderr and "Traceback" not in proc.stderr


def test_the_same_dataset_config_over_changed_data_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    """A file regenerated at the same path between two runs: same config, other samples — never paired."""
    data = tmp_path / "data" / "test.npz"
    data.parent.mkdir()
    shutil.copy(runs["data"], data)
    _sweep(tmp_path / "before", runs["root"] / "ck0.safetensors", data, fgsm=False)
    images = fx.smooth_images(N, seed=8, channels=1)  # other pixels, same shape, same path
    fx.write_npz(data, images, np.zeros(N, dtype=np.int64))
    _sweep(tmp_path / "after", runs["root"] / "ck1.safetensors", data, fgsm=False)
    proc = run_cli("compare", str(tmp_path / "before"), str(tmp_path / "after"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "its content differs" in proc.stderr and "Traceback" not in proc.stderr
