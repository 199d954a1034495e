"""The scenario matrix for the commands added after tests/test_scenarios.py: ``gauntlet transfer``, ``gauntlet
extract`` and remote targets, on every dataset layout (tests/scenario_fixtures.py), at tiny sizes.

- transfer: per layout, the two models trained for it (digits: the embedded CNN and the user's package;
  elsewhere torchvision's ViT and the user's package) as sources and targets, from model and dataset configs in
  a ``--config-dir`` as a user writes them; the diagonal equals the white-box rows; a re-run reuses every task;
  the data file rewritten at the same path is recomputed, never answered from the old rows.
- extract: the built-in architecture that takes the layout's images (digits: ``digits_cnn``; 32×32 RGB:
  ``preact_resnet18`` with a checkpoint trained here) runs to fidelity and transfer numbers, or is refused with
  one message (exit 2): CIFAR-100 (the built-in CIFAR configs have 10 outputs) and a user's own model config
  (``gauntlet extract`` reads configs/model only). A re-run reuses everything; a changed data file is refused.
- remote: a sweep of each layout's model served through the OIP server (digits: the real command line serving
  the embedded ``digits_cnn``; the others: the same server's app serving the layout's checkpoint,
  tests/scenario_oip.py) gives the local model's predictions, counts what the server received, reuses on a
  re-run, recomputes on changed data, and never reuses a local model's rows under the same name.

Each layout's runs share one module-scoped ``Scenarios`` (tests/test_scenarios.py): a cell trains nothing
another one already trained. KNOWN_BROKEN lists known failures as strict xfails; it is empty.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from engine.models.loader import build_model
from engine.remote.ledger import RunLedger
from engine.store.results import read
from engine.sweep import run_sweep
from tests.conftest import REPO
from tests.data_fixtures import write_cifar_binary, write_cifar_python, write_image_folder, write_npz
from tests.scenario_fixtures import (
    N_EVAL,
    USER_PACKAGE,
    Layout,
    make_layouts,
    reference_predictions,
    train_briefly,
    write_png16,
)
from tests.test_scenarios import LAYOUTS, Scenarios, rows_of

KNOWN_BROKEN: dict[tuple[str, str], str] = {}  # (job, layout) → why it fails: a strict xfail


def cells(job: str) -> list[Any]:
    out = []
    for layout in LAYOUTS:
        reason = KNOWN_BROKEN.get((job, layout))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(layout, id=layout, marks=marks))
    return out


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory, embedded_checkpoints: dict[str, str],
              user_package_root: Path) -> Iterator[Scenarios]:
    root = tmp_path_factory.mktemp("scenarios_new")
    with torch.random.fork_rng():
        yield Scenarios(root, make_layouts(root / "data"))


def write_layout(layout: Layout, dest: Path, images: np.ndarray) -> dict[str, Any]:
    """``images`` written at ``dest`` in ``layout``'s on-disk format; its dataset config, pointed there."""
    cfg, y, classes = dict(layout.dataset), layout.labels, [f"c{i}" for i in range(10)]
    if layout.name == "npz":
        cfg["path"] = str(write_npz(dest / "set.npz", images, y))
        return cfg
    if layout.name.endswith("_python"):
        write_cifar_python(dest, images, y, cifar100=layout.num_classes == 100)
    elif layout.name == "cifar10_binary":
        write_cifar_binary(dest, images, y)
    elif layout.name == "png8":
        write_image_folder(dest, images, y, classes)
    else:  # 16-bit grey PNGs, the values of the 8-bit ones (v · 257)
        for i, (img, label) in enumerate(zip(images, y, strict=True)):
            (dest / classes[int(label)]).mkdir(parents=True, exist_ok=True)
            write_png16(dest / classes[int(label)] / f"{i:05d}.png", img[..., 0].astype(np.uint16) * 257)
    cfg["root"] = str(dest)
    return cfg


def changed(layout: Layout) -> np.ndarray:
    """The layout's images with the first one inverted: the same files, names and sizes, other pixels."""
    images = layout.images.copy()
    images[0] = 255 - images[0]
    return images


def _cli(main: Any, args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue(), err.getvalue()


def _one_message(rc: int, err: str, match: str) -> None:
    """A refusal: exit 2, one ``error:`` line naming the problem, no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and match in lines[0] and "Traceback" not in err, err[-3000:]


# -- gauntlet transfer --------------------------------------------------------------------------------------------

def transfer_models(scenarios: Scenarios, layout: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(label, model config name, config to write or None for a built-in one): two sources per layout."""
    if layout == "digits":
        return [("cnn", "digits_cnn", None), ("user", "scen_user_digits", scenarios.model(layout, "user_package"))]
    return [("vit", f"scen_tv_{layout}", scenarios.model(layout, "torchvision")),
            ("user", f"scen_user_{layout}", scenarios.model(layout, "user_package"))]


def write_conf(conf: Path, models: list[tuple[str, str, dict[str, Any] | None]],
               dataset: dict[str, Any] | None) -> None:
    """Model files with their own ``# @package model.<name>``, and the layout as dataset/scen_data.yaml."""
    (conf / "model").mkdir(parents=True, exist_ok=True)
    for _, name, cfg in models:
        if cfg is not None:
            (conf / "model" / f"{name}.yaml").write_text(f"# @package model.{name}\n" + yaml.safe_dump(cfg))
    if dataset is not None:
        (conf / "dataset").mkdir(parents=True, exist_ok=True)
        (conf / "dataset" / "scen_data.yaml").write_text(yaml.safe_dump(dataset))


def transfer_args(models: list[tuple[str, str, Any]], conf: Path, out: Path, digits: bool) -> list[str]:
    return ["--models", *(f"{label}={name}" for label, name, _ in models), "--config-dir", str(conf),
            "--attack", "fgsm_linf", "--eps", "0.03", "--out", str(out), f"n_examples={N_EVAL}", "batch_size=4",
            "progress=false", "wandb=disabled", "runner.threads=1", f"target_packages=[{USER_PACKAGE}]",
            *([] if digits else ["dataset=scen_data"])]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", cells("transfer"))
def test_transfer(scenarios: Scenarios, layout: str, tmp_path: Path) -> None:
    """The matrix over the layout's two models; the diagonal is the white-box rows; a re-run reuses every task;
    the data rewritten at the same path is recomputed (new task ids), not answered from the old rows."""
    from engine.transfer.cli import main

    lay, models = scenarios.layout(layout), transfer_models(scenarios, layout)
    dataset = None if layout == "digits" else write_layout(lay, tmp_path / "data", lay.images)
    write_conf(tmp_path / "conf", models, dataset)
    args = transfer_args(models, tmp_path / "conf", tmp_path / "run", layout == "digits")
    rc, text, err = _cli(main, args)
    assert rc == 0, err[-3000:]
    assert "8 task(s), 8 evaluated, 0 reused" in text  # 2 models × (clean, FGSM, 2 transfers)
    matrix = pq.read_table(tmp_path / "run" / "transfer.parquet").to_pylist()
    labels = [label for label, _, _ in models]
    assert {(c["source"], c["target"]) for c in matrix} == {(s, t) for s in labels for t in labels}
    for c in matrix:
        assert c["level"] == pytest.approx(0.03) and c["n_all"] == N_EVAL and c["white_box"] == (c["source"] ==
                                                                                                   c["target"])
        assert c["diagonal_matches"] is (True if c["white_box"] else None), c
        assert c["n"] > 0 and 0 <= c["fooled"] <= c["n"] and c["success"] == pytest.approx(c["fooled"] / c["n"])
    if layout != "digits":  # the rows were read from the layout's pixels: the clean predictions are the model's
        table = read(tmp_path / "run")
        keep = (np.asarray(table["model"].to_pylist()) == "user") & (np.asarray(table["perturbation"].to_pylist())
                                                                      == "clean")
        clean = table.filter(keep).sort_by("sample_id")
        model = build_model("user", scenarios.model(layout, "user_package"), torch.device("cpu"))
        pred, margin = reference_predictions(model, scenarios.pixels(layout))
        got = np.asarray(clean["pred"].to_pylist())
        assert np.all((got == pred) | (margin < 1e-4))
    rc, again, err = _cli(main, args)
    assert rc == 0 and "8 task(s), 0 evaluated, 8 reused" in again, err[-3000:]
    assert pq.read_table(tmp_path / "run" / "transfer.parquet").to_pylist() == matrix
    if layout != "digits":
        write_layout(lay, tmp_path / "data", changed(lay))  # the same files, other pixels
        rc, third, err = _cli(main, args)
        assert rc == 0 and "8 task(s), 8 evaluated, 0 reused" in third, err[-3000:]


def test_transfer_models_named_alike_are_refused(scenarios: Scenarios, tmp_path: Path) -> None:
    """Two layouts' models under one file name in two folders (given twice, or once: Hydra would take the first
    folder's silently), and a file claiming another's name: refused by name, nothing written."""
    from engine.transfer.cli import main

    npz, png = scenarios.model("npz", "user_package"), scenarios.model("png8", "user_package")
    write_conf(tmp_path / "a", [("x", "scen_net", npz)], scenarios.layouts["npz"].dataset)
    write_conf(tmp_path / "b", [("y", "scen_net", png), ("z", "scen_other", png)], None)
    base = ["--config-dir", str(tmp_path / "a"), "--config-dir", str(tmp_path / "b"), "--out", str(tmp_path / "run"),
            "dataset=scen_data", f"target_packages=[{USER_PACKAGE}]"]
    rc, _, err = _cli(main, ["--models", "x=scen_net", "y=scen_net", *base])
    _one_message(rc, err, "model config 'scen_net' is given twice")
    rc, _, err = _cli(main, ["--models", "scen_net", "scen_other", *base])  # once, but which of the two files?
    _one_message(rc, err, f"is in 2 --config-dir folders ({tmp_path / 'a' / 'model' / 'scen_net.yaml'}")
    text = (tmp_path / "b" / "model" / "scen_other.yaml").read_text()
    (tmp_path / "b" / "model" / "scen_other.yaml").write_text(text.replace("model.scen_other", "model.scen_net"))
    rc, _, err = _cli(main, ["--models", "scen_net", "scen_other", *base[2:]])  # folder b alone
    _one_message(rc, err, "scen_other.yaml")
    assert not (tmp_path / "run").exists()


# -- gauntlet extract ---------------------------------------------------------------------------------------------

FAST = ["budgets=[20,40]", "n_test=8", "train_steps=1", "batch_size=8", "attack_steps=1", "eps=0.1"]


def preact_checkpoint(scenarios: Scenarios) -> Path:
    """configs/model/preact_resnet18.yaml's architecture, briefly trained on the 10-class layouts' templates (in
    colour and in grey): one target for every 32×32 RGB layout of 10 classes."""
    def make() -> Path:
        from engine.models.checkpoint import save_checkpoint
        from engine.models.cifar import PreActResNet18
        from engine.models.wrapper import NormalizedModel
        from tests.scenario_fixtures import class_images

        lay = scenarios.layouts["cifar10_python"]
        torch.manual_seed(0)
        net = PreActResNet18(num_classes=10)
        cfg = yaml.safe_load((REPO / "configs" / "model" / "preact_resnet18.yaml").read_text())
        wrapped = NormalizedModel(net, cfg["mean"], cfg["std"])
        grey = np.repeat(class_images(lay.labels, 10, 1, seed=101), 3, axis=-1)  # for the 16-bit grey layout
        images, labels = np.concatenate([class_images(lay.labels, 10, 3, seed=100), grey]), np.tile(lay.labels, 2)
        train_briefly(_Raw(wrapped), images, labels, 3, seed=0, steps=8)
        settle_batch_norm(wrapped, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
        path = scenarios.root / "ckpt" / "preact.safetensors"
        save_checkpoint(net.state_dict(), path, {"model": "preact-scenario"})
        return path
    return scenarios._once(("preact",), make)


def settle_batch_norm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Running statistics = the training images' (8 steps of momentum 0.1 leave them far off: an eval-mode model
    then answers one class, and no test sample is left to attack)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass gives the batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


class _Raw(torch.nn.Module):
    """train_briefly feeds (x − 0.5)/0.25; the wrapped model takes [0, 1] pixels and normalises itself."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * 0.25 + 0.5)


def extract_args(scenarios: Scenarios, layout: str, dataset: dict[str, Any] | None, out: Path) -> list[str]:
    if layout == "digits":
        return ["target=digits_cnn", "queries=train", f"out_dir={out}", *FAST]
    kind = {"npz": "npz", "png8": "image_folder", "png16": "image_folder"}.get(layout)
    kind = kind or ("cifar100" if layout.startswith("cifar100") else "cifar10")
    assert dataset is not None
    where = f"dataset.path={dataset['path']}" if kind == "npz" else f"dataset.root={dataset['root']}"
    return ["target=preact_resnet18", f"model.preact_resnet18.checkpoint={preact_checkpoint(scenarios)}",
            f"dataset={kind}", where, "queries=synthetic", f"out_dir={out}", *FAST]


# What extract does per layout: "runs" to numbers, or the one message it refuses with (exit 2).
EXTRACT_EXPECTED = {layout: "runs" for layout in LAYOUTS} | {
    "cifar100_python": "has 10 outputs but dataset 'cifar100' has 100 classes"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", cells("extract"))
def test_extract(scenarios: Scenarios, layout: str, tmp_path: Path) -> None:
    """Budgets 20 and 40 to fidelity and transfer numbers (or one refusal, before any query); a re-run reuses every
    answer and copy; the test data rewritten at the same path is refused by name, never mixed with the rows."""
    from engine.extraction.cli import main

    lay = scenarios.layout(layout)
    dataset = None if layout == "digits" else write_layout(lay, tmp_path / "data", lay.images)
    args = extract_args(scenarios, layout, dataset, tmp_path / "run")
    rc, text, err = _cli(main, args)
    expected = EXTRACT_EXPECTED[layout]
    if expected != "runs":
        _one_message(rc, err, expected)
        assert not (tmp_path / "run" / "label").exists()
        return
    assert rc == 0 and "label      copy" in text, err[-3000:]  # the printed table
    rows = pq.read_table(tmp_path / "run" / "extraction.parquet").to_pylist()
    copies = [r for r in rows if r["role"] == "copy"]
    assert [(r["budget"], r["queries"]) for r in copies] == [(20, 20), (40, 40)]
    for r in rows:
        assert r["n_test"] == 8 and 0.0 <= r["fidelity"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["transfer_attacked"] == round(r["target_accuracy"] * 8)
        assert (r["transfer_attacked"] > 0) == math.isfinite(r["transfer_success"]), r
    assert any(r["transfer_attacked"] > 0 for r in copies)  # a target worth attacking: transfer is a number
    assert [r["role"] for r in rows].count("baseline") == (1 if layout == "digits" else 0)  # needs a train split
    answers = tmp_path / "run" / "label" / "answers"
    assert pq.read_table(answers / "steal.parquet").num_rows == 40 and pq.read_table(
        answers / "test.parquet").num_rows == 8
    rc, again, err = _cli(main, args)
    assert rc == 0 and "queries sent now: 0 " in again, err[-3000:]
    assert pq.read_table(tmp_path / "run" / "extraction.parquet").to_pylist() == rows
    if layout != "digits":
        write_layout(lay, tmp_path / "data", changed(lay))
        rc, _, err = _cli(main, args)
        _one_message(rc, err, "changed: test")
        assert pq.read_table(tmp_path / "run" / "extraction.parquet").to_pylist() == rows  # the finished rows stay


def test_extract_a_users_own_model_is_refused_by_name(scenarios: Scenarios, tmp_path: Path) -> None:
    """``gauntlet extract`` reads model configs from configs/model only (no --config-dir, no target_packages): a
    user's own architecture is refused with one message, not run under another config of that name."""
    from engine.extraction.cli import main

    lay = scenarios.layouts["npz"]
    rc, _, err = _cli(main, ["target=scen_user_npz", "dataset=npz", f"dataset.path={lay.dataset['path']}",
                             "queries=synthetic", f"out_dir={tmp_path / 'run'}", *FAST])
    _one_message(rc, err, "scen_user_npz")
    # a built-in name with another layout's checkpoint: the architecture does not take these images
    rc, _, err = _cli(main, ["target=digits_cnn", "dataset=npz", f"dataset.path={lay.dataset['path']}",
                             "queries=synthetic", f"out_dir={tmp_path / 'run2'}", *FAST])
    _one_message(rc, err, "dataset 'npz' has 3 channel(s)")
    assert not (tmp_path / "run" / "label").exists() and not (tmp_path / "run2" / "label").exists()


# -- remote targets -------------------------------------------------------------------------------------------------

def remote_block(url: str, served: str, num_classes: int) -> dict[str, Any]:
    cfg = yaml.safe_load((REPO / "configs" / "model" / "remote_digits_cnn.yaml").read_text())
    return {"remote": {**cfg["remote"], "url": url, "model_name": served, "num_classes": num_classes,
                       "output": "probs", "run_budget": 10_000}}


class Servers:
    """The digits server (the real command line, the embedded digits_cnn) and one server of every other layout's
    user-package checkpoint (tests/scenario_oip.py), started on first use, stopped at the end of the module."""

    def __init__(self, scenarios: Scenarios, stack: Any) -> None:
        self.scenarios, self.stack = scenarios, stack
        self.running: dict[str, Any] = {}

    def get(self, layout: str) -> Any:
        from tests import remote_servers
        from tests.conftest import REPO as root

        kind = "oip" if layout == "digits" else "scenario_oip"
        if kind not in self.running:
            if kind == "oip":
                args: tuple[str, ...] = ("--models", "digits_cnn")
            else:
                remote_servers.SCRIPTS.setdefault(kind, (root / "tests" / "scenario_oip.py", "/v2/health/ready"))
                served = {name: self.scenarios.model(name, "user_package") for name in LAYOUTS if name != "digits"}
                path = self.scenarios.root / "served.json"
                path.write_text(json.dumps(served))
                args = ("--configs", str(path))
            env = {"PYTHONPATH": f"{root}:{_user_root()}"}
            self.running[kind] = self.stack.enter_context(remote_servers.serve(kind, *args, env=env))
        return self.running[kind]


def _user_root() -> str:
    import gauntlet_scenario_models  # type: ignore[import-not-found]

    return str(Path(gauntlet_scenario_models.__file__).parents[1])


@pytest.fixture(scope="module")
def servers(scenarios: Scenarios) -> Iterator[Servers]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield Servers(scenarios, stack)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", cells("remote"))
def test_remote(scenarios: Scenarios, servers: Servers, layout: str, tmp_path: Path) -> None:
    """The served model's clean rows are the local model's predictions on the layout's pixels; the server received
    exactly what the ledger says; a re-run sends nothing; rewritten data is asked again; a local model's rows under
    the same name are never reused for the remote one."""
    lay = scenarios.layout(layout)
    server = servers.get(layout)
    served = "digits_cnn" if layout == "digits" else layout
    local_cfg = scenarios.model(layout, "embedded" if layout == "digits" else "user_package")
    name = "net"  # the local and the remote model, named alike, one after the other in one out_dir
    out = tmp_path / "run"

    def sweep(model: dict[str, Any], data: dict[str, Any] | None) -> Any:
        cfg = scenarios.config(layout, {name: model}, out)
        cfg["perturbation"] = {"clean": cfg["perturbation"]["clean"]}
        if data is not None:
            cfg["dataset"] = data
        return run_sweep(cfg)

    data = None if layout == "digits" else write_layout(lay, tmp_path / "data", lay.images)
    local = sweep(local_cfg, data)
    before = server.stats()["images"]
    remote = sweep(remote_block(server.url, served, lay.num_classes), data)
    assert remote.evaluated == len(remote.plan.tasks) > 0  # not the local model's rows, though named alike
    assert not {t.task_id for t in remote.plan.tasks} & {t.task_id for t in local.plan.tasks}
    (target,) = RunLedger(out).targets().values()
    assert target["spent"] == server.stats()["images"] - before  # every image the endpoint received
    assert target["sent"] == N_EVAL == target["spent"] - 1  # each sample once; the plan's fit check one grey image
    table = rows_of(remote, name)
    table = table.filter(np.isin(np.asarray(table["task_id"].to_pylist()), [t.task_id for t in remote.plan.tasks]))
    clean = table.sort_by("sample_id")
    assert clean.num_rows == N_EVAL and clean["label"].to_pylist() == lay.labels[:N_EVAL].tolist()
    pred, margin = reference_predictions(build_model(name, local_cfg, torch.device("cpu")), scenarios.pixels(layout))
    got = np.asarray(clean["pred"].to_pylist())
    assert np.all((got == pred) | (margin < 1e-3)), f"served {got.tolist()} != local {pred.tolist()}"
    again = sweep(remote_block(server.url, served, lay.num_classes), data)
    assert again.evaluated == 0 and server.stats()["images"] - before == target["spent"]  # nothing sent again
    if data is not None:
        shutil.rmtree(tmp_path / "data")
        third = sweep(remote_block(server.url, served, lay.num_classes), write_layout(lay, tmp_path / "data",
                                                                                      changed(lay)))
        assert third.evaluated == len(third.plan.tasks)  # other pixels: asked again, not answered from the old rows
        (total,) = RunLedger(out).targets().values()
        assert server.stats()["images"] - before == total["spent"] == target["spent"] + N_EVAL + 1  # + its fit check


# -- the ε ball of a remote target on every layout ------------------------------------------------------------------

BALL_EPS = 0.05  # 12.75 grey levels: on images off the 8-bit grid the two possible centres differ


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", [*cells("remote_ball"), "npz_float"])
def test_remote_attacks_keep_the_ball_around_the_image_as_sent(scenarios: Scenarios, layout: str,
                                                               tmp_path: Path) -> None:
    """Square, RayS and a transfer against the layout's model reached only through an oracle (in process, PNG
    contract), on the pixels the layout's loader returns (``npz_float``: the .npz layout stored as float pixels off
    the 8-bit grid): the evaluator accepts every example and every recorded size, measured on the pixels sent
    against the clean image as sent, is within ε."""
    from types import SimpleNamespace

    from engine.evaluation.evaluate import _batch_rows
    from engine.evaluation.resources import build_dataset, build_perturbation
    from engine.perturbations.base import BatchContext
    from engine.remote.local import LocalOracle
    from engine.remote.model import RemoteModel
    from tests.conftest import compose_dict

    base = "npz" if layout == "npz_float" else layout
    lay = scenarios.layout(base)
    if base == "digits":
        data_cfg = compose_dict()["dataset"]
    elif layout == "npz_float":  # floats off the grid: the uint8 pixels plus a third of a grey level, clipped
        off = np.clip(lay.images.astype(np.float32) / 255 + np.float32(1 / 765), 0, 1)
        data_cfg = {**lay.dataset, "path": str(write_npz(tmp_path / "float.npz", off, lay.labels)), "layout": "nhwc"}
    else:
        data_cfg = write_layout(lay, tmp_path / "data", lay.images)
    data = build_dataset(data_cfg).slice(0, N_EVAL)
    x, y, ids = data.images, data.labels, data.sample_ids
    net = build_model("net", scenarios.model(base, "embedded" if base == "digits" else "user_package"),
                      torch.device("cpu"))
    target = RemoteModel("target", LocalOracle(net, output="probs", num_classes=lay.num_classes))
    cfg = compose_dict(["perturbation=[square_linf_remote,rays_linf,pgd_linf]"])["perturbation"]
    perts = [build_perturbation("sq", {**cfg["square_linf_remote"], "name": "sq", "eps": [BALL_EPS], "budget": 150}),
             build_perturbation("rays", {**cfg["rays_linf"], "name": "rays", "eps": [BALL_EPS], "budget": 150}),
             build_perturbation("xfer", {"_target_": "engine.perturbations.transfer.Transfer", "source": "src",
                                         "source_model": {"arch": "unused"},
                                         "attack": {**cfg["pgd_linf"], "name": "pgd_linf", "eps": [BALL_EPS],
                                                    "steps": 5}})]
    task = SimpleNamespace(quantize="none", model_name="target")
    centre = target.oracle.sent(x)
    for pert in perts:
        ctx = BatchContext(model=target, seed=0, sample_ids=ids, surrogates={"src": net})
        ((row, x_pert),) = _batch_rows(task, target, pert, ctx, x, y, lay.num_classes, pert.name)  # type: ignore[arg-type]
        sizes = (target.oracle.sent(x_pert) - centre).abs().flatten(1).amax(1).double().numpy()
        assert np.array_equal(row["perturbation_size"], sizes), pert.name
        assert float(sizes.max()) <= BALL_EPS + 1e-6, (pert.name, float(sizes.max()))
    if layout in ("digits", "npz_float"):  # the premise: these pixels are off the grid
        assert float((x - centre).abs().max()) > 0.25 / 255
