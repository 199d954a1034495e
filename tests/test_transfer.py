"""Transfer attacks and ``gauntlet transfer``: a model scored on its own examples reproduces its white-box rows
exactly; the source checkpoint's sha256 is in the task id; the matrix's numbers are the rows' numbers; on the
digits and on a non-digits layout (.npz, CIFAR binary) with tiny models; resume; the report's heat map; bad input.
"""

from __future__ import annotations

import copy
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from engine.errors import ConfigError
from engine.evaluation.resources import Resources, build_perturbation
from engine.models.checkpoint import save_checkpoint
from engine.models.cnn import SmallCNN
from engine.perturbations.base import BatchContext
from engine.planning.plan import make_plan, prepare
from engine.runners.progress import work_per_sample
from engine.store.results import read
from engine.sweep import run_sweep
from engine.transfer.build import TransferSpec, compose_transfer, parse_models
from engine.transfer.cli import main
from tests.conftest import REPO, compose_dict, run_cli
from tests.data_fixtures import write_cifar_binary, write_npz

COMPARED = ("pred", "correct", "margin", "perturbation_size")
TRANSFER = "engine.perturbations.transfer.Transfer"


def _quick(cfg: dict[str, Any], attack: str) -> None:
    """Cut the attack's budget so each sweep takes a second or two."""
    pcfg = cfg["perturbation"][attack]
    if "steps" in pcfg:
        pcfg["steps"] = 3
    for member in pcfg.get("attacks", []):
        member["n_iter"] = 5


def _rows(out: Path, model: str, pert: str) -> dict[str, np.ndarray]:
    t = read(out)
    t = t.filter(np.asarray(t.column("model").to_pylist()) == model)
    t = t.filter(np.asarray(t.column("perturbation").to_pylist()) == pert)
    cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in ("level", "sample_id", *COMPARED)}
    order = np.lexsort((cols["sample_id"], cols["level"]))
    return {k: v[order] for k, v in cols.items()}


def _transfer_cfg(attack_cfg: dict[str, Any], attack: str, source: str, source_cfg: dict[str, Any]) -> dict[str, Any]:
    return {"_target_": TRANSFER, "source": source, "source_model": copy.deepcopy(source_cfg),
            "attack": {**copy.deepcopy(attack_cfg), "name": attack}}


@pytest.mark.parametrize("attack", ["pgd_linf", "apgd_ce_linf"])
def test_a_model_scored_on_its_own_transferred_examples_reproduces_its_white_box_rows(
        tmp_path: Path, embedded_checkpoints: dict[str, str], attack: str) -> None:
    """Two separate sweeps: the white-box attack, and the transfer from the same checkpoint (under another source
    name and another perturbation name). PGD's random start is per batch: three batches of 8 must line up."""
    base = compose_dict(["model=[digits_cnn]", f"perturbation=[{attack}]", "n_examples=24", "batch_size=8",
                         "progress=false", f"perturbation.{attack}.eps=[0,0.1,0.2]"])
    _quick(base, attack)
    white = {**base, "out_dir": str(tmp_path / "white")}
    run_sweep(white)
    xfer = {**base, "out_dir": str(tmp_path / "xfer"), "perturbation": {
        "from_self": _transfer_cfg(base["perturbation"][attack], attack, "surrogate", base["model"]["digits_cnn"])}}
    run_sweep(xfer)
    a, b = _rows(tmp_path / "white", "digits_cnn", attack), _rows(tmp_path / "xfer", "digits_cnn", "from_self")
    assert len(a["pred"]) == 3 * 24
    for col in ("level", "sample_id", *COMPARED):
        assert np.array_equal(a[col], b[col]), col
    broken = (a["level"] > 0) & ~a["correct"].astype(bool)
    assert broken.sum() >= 5  # the attack does break samples: the equality is about real examples


def test_transfer_uses_the_source_model_and_its_sha256_is_in_the_task_id(
        tmp_path: Path, embedded_checkpoints: dict[str, str]) -> None:
    cfg = compose_dict(["model=[digits_cnn]", "perturbation=[clean,pgd_linf]", "n_examples=16", "batch_size=16",
                        "progress=false", "perturbation.pgd_linf.eps=[0,0.2]", "perturbation.pgd_linf.steps=3",
                        f"out_dir={tmp_path / 'run'}"])
    src = tmp_path / "src.safetensors"
    torch.manual_seed(1)
    save_checkpoint(SmallCNN().state_dict(), src, {"model": "other"})
    source = {**cfg["model"]["digits_cnn"], "checkpoint": str(src), "train": None}
    cfg["perturbation"]["from_other"] = _transfer_cfg(cfg["perturbation"]["pgd_linf"], "pgd_linf", "other", source)
    first = make_plan(cfg, lambda _: False)
    again = make_plan(cfg, lambda _: False)
    assert [t.task_id for t in first.tasks] == [t.task_id for t in again.tasks]
    torch.manual_seed(2)
    save_checkpoint(SmallCNN().state_dict(), src, {"model": "other"})  # the same path, other weights
    changed = make_plan(cfg, lambda _: False)
    ids = {t.perturbation_name: t.task_id for t in first.tasks}
    new = {t.perturbation_name: t.task_id for t in changed.tasks}
    assert new["from_other"] != ids["from_other"]
    assert new["clean"] == ids["clean"] and new["pgd_linf"] == ids["pgd_linf"]
    run_sweep(cfg)
    white, other = _rows(tmp_path / "run", "digits_cnn", "pgd_linf"), _rows(tmp_path / "run", "digits_cnn",
                                                                             "from_other")
    # an untrained source crafts other examples than the white-box attack on the model itself
    assert not np.array_equal(white["margin"], other["margin"])


def test_a_source_model_that_does_not_fit_the_data_is_refused_before_compute(tmp_path: Path) -> None:
    cfg = compose_dict(["model=[digits_cnn]", "perturbation=[pgd_linf]", f"out_dir={tmp_path}"])
    rgb = tmp_path / "rgb.safetensors"
    save_checkpoint(SmallCNN(in_channels=3).state_dict(), rgb, {"model": "rgb"})
    source = {"arch": {"_target_": "engine.models.cnn.SmallCNN", "in_channels": 3}, "mean": MEAN, "std": STD,
              "checkpoint": str(rgb)}
    cfg["perturbation"]["from_rgb"] = _transfer_cfg(cfg["perturbation"]["pgd_linf"], "pgd_linf", "rgb", source)
    res = Resources(torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"rgb \(source of from_rgb\)"):
        make_plan(cfg, lambda _: False, check_model=res.model, progress=False)


def test_transfer_config_errors_are_one_clear_message() -> None:
    inner = dict(compose_dict(["perturbation=[pgd_linf,gaussian_noise]"])["perturbation"]["pgd_linf"])
    model = compose_dict(["model=[digits_cnn]"])["model"]["digits_cnn"]
    with pytest.raises(ConfigError, match="inner attack needs a name"):
        build_perturbation("x", {"_target_": TRANSFER, "source": "m", "source_model": model, "attack": inner})
    noise = compose_dict(["perturbation=[gaussian_noise]"])["perturbation"]["gaussian_noise"]
    with pytest.raises(ConfigError, match="must be an attack"):
        build_perturbation("x", {"_target_": TRANSFER, "source": "m", "source_model": model,
                                 "attack": {**noise, "name": "gaussian_noise"}})
    with pytest.raises(ConfigError, match="'source_model' must be"):
        build_perturbation("x", {"_target_": TRANSFER, "source": "m", "attack": {**inner, "name": "pgd_linf"}})
    pert = build_perturbation("x", {"_target_": TRANSFER, "source": "m", "source_model": model,
                                    "attack": {**inner, "name": "pgd_linf"}})
    assert pert.source_model["arch"]["_target_"] == "engine.models.cnn.SmallCNN"  # data, never instantiated
    assert pert.levels == tuple(inner["eps"]) and pert.norm == "linf" and pert.threat_model.knowledge == ("black-box",)
    assert work_per_sample(pert) == len(inner["eps"]) * inner["steps"]  # the progress bar counts the inner budget
    ctx = BatchContext(model=SmallCNN(), seed=0, sample_ids=torch.arange(2))
    with pytest.raises(ConfigError, match="source model 'm' was not provided"):
        list(pert.run(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]), ctx))


def test_the_source_models_arch_goes_through_the_target_policy_as_a_model(tmp_path: Path) -> None:
    cfg = compose_dict(["model=[digits_cnn]", "perturbation=[pgd_linf]", f"out_dir={tmp_path}"])
    source = copy.deepcopy(cfg["model"]["digits_cnn"])
    cfg["perturbation"]["t"] = _transfer_cfg(cfg["perturbation"]["pgd_linf"], "pgd_linf", "s", source)
    prepare(cfg)  # an allowed architecture passes
    for target, match in (("os.system", "perturbation.t.source_model.arch"),
                          ("engine.perturbations.attacks.PGD", "is a PGD, not an nn.Module")):
        cfg["perturbation"]["t"]["source_model"]["arch"] = {"_target_": target}
        with pytest.raises(ConfigError, match=match):
            prepare(cfg)


@pytest.mark.parametrize(("given", "labels", "match"), [
    (["digits_cnn"], None, "at least two models"),
    (["digits_cnn", "digits_cnn"], None, "given twice"),
    (["a=digits_cnn", "b=digits_cnn"], None, "model config 'digits_cnn' is given twice"),
    (["a=digits_cnn", "a=digits_cnn_at"], None, "label 'a' is given twice"),
    (["digits_cnn", "digits_cnn_at"], ["x"], "1 --label value"),
    (["a b=digits_cnn", "digits_cnn_at"], None, "is not a name"),
])
def test_models_are_each_given_once_under_their_own_label(given: list[str], labels: list[str] | None,
                                                           match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_models(given, labels)


def test_the_composed_sweep_labels_models_and_names_one_transfer_per_source(tmp_path: Path) -> None:
    spec = TransferSpec((("cnn", "digits_cnn"), ("at", "digits_cnn_at")), "pgd_linf", "~/runs/x",
                        ("model.digits_cnn.checkpoint=~/elsewhere.safetensors", "n_examples=7"), (), ("0", "8/255"))
    cfg = compose_transfer(spec)
    assert list(cfg["model"]) == ["cnn", "at"] and cfg["out_dir"] == "~/runs/x" and cfg["n_examples"] == 7
    assert cfg["model"]["cnn"]["checkpoint"] == "~/elsewhere.safetensors"  # a bare ~ reaches Hydra quoted
    assert list(cfg["perturbation"]) == ["clean", "pgd_linf", "transfer_from_cnn", "transfer_from_at"]
    xfer = cfg["perturbation"]["transfer_from_at"]
    assert xfer["source"] == "at" and xfer["source_model"] == cfg["model"]["at"]
    assert xfer["attack"]["name"] == "pgd_linf" and xfer["attack"]["eps"] == [0.0, 8 / 255]
    assert cfg["perturbation"]["pgd_linf"]["eps"] == [0.0, 8 / 255]


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("extra", "match"), [
    (["--attack", "gaussian_noise"], "not an attack with an ε list"),
    (["model=[digits_cnn]"], "the command decides model"),
    (["out_dir=/tmp/x"], "the command decides out_dir"),
    (["--attack", "no_such_attack"], "no_such_attack"),
])
def test_bad_transfer_commands_fail_with_one_message_and_write_nothing(tmp_path: Path, extra: list[str],
                                                                      match: str) -> None:
    rc, _, err = _cli("--models", "digits_cnn", "digits_cnn_at", "--out", str(tmp_path / "run"), *extra)
    assert rc == 2 and match in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_model_file_named_like_another_model_is_refused_not_merged(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    text = (REPO / "configs" / "model" / "digits_cnn_at.yaml").read_text()
    (conf / "my_cnn.yaml").write_text(text.replace("# @package model.digits_cnn_at", "# @package model.digits_cnn"))
    rc, _, err = _cli("--models", "digits_cnn", "my_cnn", "--config-dir", str(tmp_path / "conf"), "--out",
                      str(tmp_path / "run"))
    assert rc == 2 and "my_cnn.yaml" in err and "model.digits_cnn" in err, err
    assert not (tmp_path / "run").exists()


# -- a non-digits layout, end to end ------------------------------------------------------------------------------

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×32×32×3 colour-block prototypes plus noise: a tiny CNN learns them in a few steps."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).integers(40, 216, size=(10, 4, 4, 3))
    y = rng.permutation(np.arange(n) % 10)
    img = np.repeat(np.repeat(protos[y] + rng.normal(0, 12, (n, 4, 4, 3)), 8, 1), 8, 2)
    return np.clip(img + rng.normal(0, 6, (n, 32, 32, 3)), 0, 255).astype(np.uint8), y.astype(np.int64)


def _train(images: np.ndarray, labels: np.ndarray, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    net = SmallCNN(in_channels=3, width=8)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    y = torch.from_numpy(labels)
    for _ in range(30):
        i = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(net(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 48-image test set as .npz and CIFAR binary, two tiny models trained on other images (config folder)."""
    root = tmp_path_factory.mktemp("transfer_world")
    train_x, train_y = _images(300, seed=1)
    test_x, test_y = _images(48, seed=2)
    conf = root / "conf" / "model"
    conf.mkdir(parents=True)
    for name, seed in (("tiny_a", 0), ("tiny_b", 5)):
        save_checkpoint(_train(train_x, train_y, seed).state_dict(), root / f"{name}.safetensors", {"model": name})
        (conf / f"{name}.yaml").write_text(
            f"# @package model.{name}\narch: {{_target_: engine.models.cnn.SmallCNN, in_channels: 3, "
            f"num_classes: 10, width: 8}}\nmean: {MEAN}\nstd: {STD}\ncheckpoint: {root / name}.safetensors\n"
            "sha256: null\ntrain: null\n")
    write_npz(root / "npz" / "test.npz", test_x, test_y)
    write_cifar_binary(root / "cifar_bin", test_x, test_y)
    return {"root": root, "conf": root / "conf"}


DATASETS = {"npz": lambda r: ["dataset=npz", f"dataset.path={r / 'npz' / 'test.npz'}"],
            "cifar_binary": lambda r: ["dataset=cifar10", f"dataset.root={r / 'cifar_bin'}"]}


@pytest.mark.parametrize("layout", sorted(DATASETS))
def test_gauntlet_transfer_matrix_on_a_non_digits_layout(tmp_path: Path, tiny_world: dict[str, Any],
                                                         layout: str) -> None:
    out = tmp_path / "run"
    args = ("--models", "a=tiny_a", "tiny_b", "--config-dir", str(tiny_world["conf"]), "--attack", "pgd_linf",
            "--eps", "0", "0.02", "8/255", "--out", str(out), *DATASETS[layout](tiny_world["root"]),
            "n_examples=40", "batch_size=16", "progress=false", "perturbation.pgd_linf.steps=3")
    rc, text, err = _cli(*args)
    assert rc == 0, err[-3000:]
    assert "Transfer matrix (pgd_linf)" in text and "equals its white-box rows exactly" in text
    matrix = pq.read_table(out / "transfer.parquet")
    cells = matrix.to_pylist()
    assert matrix.schema.metadata[b"models"] == b"a,tiny_b"
    assert {(c["source"], c["target"]) for c in cells} == {(s, t) for s in ("a", "tiny_b") for t in ("a", "tiny_b")}
    assert sorted({c["level"] for c in cells}) == [0.02, 8 / 255]
    for c in cells:  # every number is the rows' number, recomputed here from the Parquet rows
        pert = "pgd_linf" if c["source"] == c["target"] else f"transfer_from_{c['source']}"
        assert c["perturbation"] == pert and c["white_box"] == (c["source"] == c["target"])
        clean = _rows(out, c["target"], "clean")
        ok = set(clean["sample_id"][clean["correct"].astype(bool)].tolist())
        rows = _rows(out, c["target"], pert)
        at = rows["level"] == c["level"]
        fooled = {int(i) for i, k in zip(rows["sample_id"][at], rows["correct"][at], strict=True) if not k} & ok
        assert (c["n"], c["fooled"], c["n_all"]) == (len(ok), len(fooled), 40)
        assert c["success"] == pytest.approx(len(fooled) / len(ok))
        assert c["accuracy"] == pytest.approx(rows["correct"][at].mean())
        assert c["success_low"] <= c["success"] <= c["success_high"]
        assert c["diagonal_matches"] is (True if c["white_box"] else None)
    assert len(ok) >= 30 and any(c["fooled"] for c in cells)  # models worth attacking, attacks that break some
    rc, again, err = _cli(*args)  # resume: nothing recomputed, the same matrix
    assert rc == 0 and "8 task(s), 0 evaluated, 8 reused" in again, err[-2000:]
    assert pq.read_table(out / "transfer.parquet").to_pylist() == cells
    from engine.sinks.report import write_report

    files = write_report(out)
    assert "transfer" in files.figures and "crafted on the source" in files.html.read_text()


@pytest.mark.timeout(300)
def test_runner_ray_gives_the_local_transfer_rows_and_matrix(ray_instance: Any, tmp_path: Path,
                                                              tiny_world: dict[str, Any]) -> None:
    """The source model is built inside each Ray actor (engine/evaluation/resources.py) from its config."""
    def run(runner: str) -> Path:
        out = tmp_path / runner
        rc, _, err = _cli("--models", "tiny_a", "tiny_b", "--config-dir", str(tiny_world["conf"]), "--attack",
                          "pgd_linf", "--eps", "0.03", "--out", str(out), *DATASETS["npz"](tiny_world["root"]),
                          "n_examples=24", "batch_size=8", "shard_size=8", "progress=false", f"runner={runner}",
                          "runner.threads=1", "perturbation.pgd_linf.steps=3")
        assert rc == 0, err[-3000:]
        return out

    ray_out, local_out = run("ray"), run("local")
    a = read(ray_out).sort_by([("task_id", "ascending"), ("level", "ascending"), ("sample_id", "ascending")])
    b = read(local_out).sort_by([("task_id", "ascending"), ("level", "ascending"), ("sample_id", "ascending")])
    assert a.num_rows == b.num_rows == 2 * 24 * 4  # models × samples × (clean, attack, 2 transfers), one level each
    for name in ("task_id", "model", "perturbation", "level", "sample_id", *COMPARED, "broken_by"):
        assert a[name].equals(b[name]), name
    assert pq.read_table(ray_out / "transfer.parquet").to_pylist() == pq.read_table(
        local_out / "transfer.parquet").to_pylist()


def test_gauntlet_dispatches_transfer_and_a_bad_command_exits_2(tmp_path: Path) -> None:
    proc = run_cli("transfer", "--models", "digits_cnn", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "error: a transfer matrix needs at least two models" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
