"""The ``_target_`` policy (engine/compose/targets.py): the whole dotted path is resolved and the object checked.

The five bypasses a hostile run found are end-to-end tests here: a model config naming
``engine.models.convert.torch.load``, timm's ``load_checkpoint`` and ``load_state_dict(weights_only=False)``,
torchvision's ``extract_archive`` as a dataset, and a vendor's claim file whose inline block reaches a
hostile pickle. Each payload would create a marker file (the controls show it does when called
directly); each test asserts exit 2, a message naming the key, and no marker.
"""

from __future__ import annotations

import contextlib
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from engine.compose.config import group_options
from engine.compose.targets import TargetPolicy, check_target, config_file_problems, opt_ins_from_files
from engine.errors import ConfigError
from engine.planning.sweep_targets import MODEL, check_targets
from engine.sweep import run_sweep
from tests.conftest import compose_dict, run_cli, tiny_overrides

ANY_POLICY = TargetPolicy(allow_any=True)
DEFAULT = TargetPolicy()


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code a hostile pickle would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.fixture
def hostile(tmp_path: Path) -> dict[str, Path]:
    """A torch file, a .npy and a tar archive that would each leave a trace if anything loaded them."""
    marker = tmp_path / "pwned"
    torch.save({"state_dict": _Payload(marker)}, tmp_path / "evil.pt")
    np.save(tmp_path / "evil.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    (tmp_path / "inside.txt").write_text("x")
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        tar.add(tmp_path / "inside.txt", arcname="extracted.txt")
    return {"marker": marker, "pt": tmp_path / "evil.pt", "npy": tmp_path / "evil.npy",
            "tar": tmp_path / "evil.tar", "dest": tmp_path / "dest"}


def _bypasses(h: dict[str, Path]) -> dict[str, tuple[str, dict[str, Any], Path]]:
    """name → (config group, the node a config would hold, the file its payload creates)."""
    cnn = {"_target_": "engine.models.cnn.SmallCNN", "in_channels": 1, "num_classes": 10}
    return {
        "convert_torch_load": ("model", {"_target_": "engine.models.convert.torch.load", "f": str(h["pt"]),
                                         "weights_only": False}, h["marker"]),
        "timm_load_checkpoint": ("model", {"_target_": "timm.models.load_checkpoint", "model": cnn,
                                           "checkpoint_path": str(h["pt"]), "weights_only": False}, h["marker"]),
        "timm_load_state_dict": ("model", {"_target_": "timm.models.load_state_dict",
                                           "checkpoint_path": str(h["pt"]), "weights_only": False}, h["marker"]),
        "torchvision_extract_archive": ("dataset", {"_target_": "torchvision.datasets.utils.extract_archive",
                                                    "from_path": str(h["tar"]), "to_path": str(h["dest"])},
                                        h["dest"] / "extracted.txt"),
    }


def _yaml(node: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(node, sort_keys=False)


# -- the payloads are live: called without the policy, each one runs ----------------------------------------------


@pytest.mark.parametrize("name", ["convert_torch_load", "timm_load_checkpoint", "timm_load_state_dict",
                                  "torchvision_extract_archive"])
def test_control_each_payload_runs_when_called_directly(hostile: dict[str, Path], name: str) -> None:
    pytest.importorskip("timm")
    _, node, trace = _bypasses(hostile)[name]
    with contextlib.suppress(Exception):  # the payload runs while loading; what comes back is not a model
        instantiate(node)
    assert trace.exists()


# -- the five bypasses, end to end: refused with exit 2, payload never runs ----------------------------------------


@pytest.mark.parametrize("name", ["convert_torch_load", "timm_load_checkpoint", "timm_load_state_dict",
                                  "torchvision_extract_archive"])
def test_a_config_cannot_reach_a_loader(tiny_checkpoint: Path, tmp_path: Path, hostile: dict[str, Path],
                                        name: str) -> None:
    pytest.importorskip("timm")
    group, node, trace = _bypasses(hostile)[name]
    cd = tmp_path / "configs"
    (cd / group).mkdir(parents=True)
    if group == "model":
        model = {"arch": node, "mean": [0.5], "std": [0.5], "checkpoint": str(tiny_checkpoint)}
        text = f"# @package model.evil\n{_yaml(model)}"
        select = ["model=[evil]"]
    else:
        text = _yaml(node)
        select = ["dataset=evil"]
    (cd / group / "evil.yaml").write_text(text)
    args = [a for a in tiny_overrides(tiny_checkpoint, tmp_path / "out", "perturbation=[clean]")
            if not (group == "model" and a.startswith("model"))]
    proc = run_cli("--config-dir", str(cd), *args, *select)
    assert not trace.exists() and not hostile["marker"].exists()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    key = "model.evil.arch._target_" if group == "model" else "dataset._target_"
    assert f"{key}={node['_target_']!r}" in proc.stderr and "allow_any_target=true" in proc.stderr
    assert not (tmp_path / "out" / "results").exists()


CLAIM = """\
title: vendor datasheet
model:
  name: vendor
  arch: {arch}
  mean: [0.3051]
  std: [0.3237]
  checkpoint: {ckpt}
dataset: {dataset}
n_examples: 4
claims:
  - threat_model: {{norm: linf, eps: 0.1}}
    claimed_accuracy: 0.9
"""


@pytest.mark.parametrize("case", ["model", "dataset"])
def test_a_vendor_claim_file_cannot_reach_a_hostile_pickle(tiny_checkpoint: Path, tmp_path: Path,
                                                           hostile: dict[str, Path], case: str) -> None:
    pytest.importorskip("timm")
    cnn = "{_target_: engine.models.cnn.SmallCNN, in_channels: 1, num_classes: 10}"
    if case == "model":
        arch = f"{{_target_: timm.models.load_state_dict, checkpoint_path: {hostile['pt']}, weights_only: false}}"
        dataset, key = "digits", "model.vendor.arch._target_"
    else:
        arch = cnn
        dataset = f"{{_target_: engine.data.npz.np.load, file: {hostile['npy']}, allow_pickle: true}}"
        key = "dataset._target_"
    claim = tmp_path / "vendor.yaml"
    claim.write_text(CLAIM.format(arch=arch, ckpt=tiny_checkpoint, dataset=dataset))
    proc = run_cli("verify", str(claim), f"out_dir={tmp_path / 'out'}", "progress=false")
    assert not hostile["marker"].exists()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and f"{claim}: {key}=" in proc.stderr
    assert not (tmp_path / "out" / "results").exists()


def test_allow_any_target_is_what_it_says(tiny_checkpoint: Path, tmp_path: Path, hostile: dict[str, Path]) -> None:
    """The opt-in lifts the policy, loaders included; the built object is still checked afterwards."""
    cfg = compose_dict(tiny_overrides(tiny_checkpoint, tmp_path / "out", "perturbation=[clean]"))
    cfg["model"]["digits_cnn"]["arch"] = {"_target_": "engine.models.convert.torch.load", "f": str(hostile["pt"]),
                                          "weights_only": False}
    with pytest.raises(ConfigError, match="allow_any_target=true lets a config call any importable callable"):
        run_sweep(cfg)
    assert not hostile["marker"].exists()
    with pytest.raises(ConfigError):
        run_sweep({**cfg, "allow_any_target": True})
    assert hostile["marker"].exists()  # the user said the config is code: it ran


# -- the rule, one target at a time ---------------------------------------------------------------------------------


def _check(node: dict[str, Any], policy: TargetPolicy = DEFAULT, group: str = "model") -> None:
    cfg = {"model": {"m": {"arch": node}}} if group == "model" else {group: node}
    check_targets(cfg, policy)


@pytest.mark.parametrize(("node", "needle"), [
    # a re-export through an allowed module is the object it names
    ({"_target_": "engine.models.cifar.torch.load"}, "is torch.serialization.load, which loads a pickle"),
    ({"_target_": "engine.data.npz.np.load", "allow_pickle": True}, "is numpy.load, which loads a pickle"),
    ({"_target_": "engine.models.cnn.torch.hub.load"}, "is torch.hub.load, which downloads"),
    ({"_target_": "engine.models.arch.nn.Linear"}, "defined outside the modules configs may call"),
    # known loaders inside allowed packages, refused on the string (never imported)
    ({"_target_": "timm.models._helpers.load_state_dict"}, "loads a pickle"),
    ({"_target_": "timm.models.load_pretrained"}, "loads a pickle"),
    ({"_target_": "torchvision.datasets.CIFAR10", "root": "x"}, "unpickles (CIFAR)"),
    ({"_target_": "torchvision.io.read_file", "path": "x"}, "reads or writes files"),
    ({"_target_": "engine.models.loader.build_model"}, "reads or writes files"),
    ({"_target_": "engine.sweep.run_sweep"}, "runs code or commands"),
    # the positive rule: only builders of the right kind
    ({"_target_": "torchvision.models.get_model", "name": "resnet18"}, "downloads"),
    ({"_target_": "timm.layers.create_conv2d"}, "not a model builder of that library"),
    ({"_target_": "engine.models"}, "names a module, not a class or a function"),
    ({"_target_": "engine.perturbations.autoattack.dlr_loss"}, "returns a Tensor, not an nn.Module"),
    ({"_target_": "engine.claims.subset.subset_of"}, "returns a SampleSet, not an nn.Module"),
    ({"_target_": "engine.data.SampleSet"}, "is a SampleSet, not an nn.Module"),
    # arguments that load files, by name or by position
    ({"_target_": "timm.create_model", "model_name": "resnet18", "checkpoint_path": "x.pth"}, "checkpoint_path="),
    ({"_target_": "timm.create_model", "_args_": ["resnet18", True]}, "pretrained=True"),
    ({"_target_": "timm.models.resnet18", "pretrained": True}, "pretrained=True"),
    ({"_target_": "engine.models.arch.timm_model", "model_name": "resnet18", "num_classes": 10,
      "pretrained_cfg_overlay": {"file": "x.pth"}}, "pretrained_cfg_overlay="),
    ({"_target_": "torchvision.models.resnet18", "weights": "IMAGENET1K_V1"}, "weights='IMAGENET1K_V1'"),
    ({"_target_": "engine..x"}, "is not a dotted Python name"),
])
def test_targets_are_checked_by_what_they_resolve_to(node: dict[str, Any], needle: str) -> None:
    if "timm" in node["_target_"]:
        pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"^model\.m\.arch") as err:
        _check(node)
    assert needle in str(err.value)


def test_nested_targets_are_checked_too() -> None:
    node = {"_target_": "engine.models.testing.InputQuantised", "levels": 16,
            "net": {"_target_": "engine.models.convert.torch.load", "f": "x"}}
    with pytest.raises(ConfigError, match=r"model\.m\.arch\.net\._target_='engine.models.convert.torch.load'"):
        _check(node)


@pytest.mark.parametrize("node", [
    {"_target_": "torchvision.models.resnet18", "num_classes": 10, "weights": None},
    {"_target_": "timm.create_model", "model_name": "resnet18", "num_classes": 10, "pretrained": False},
    {"_target_": "timm.models.resnet18", "num_classes": 10},
    {"_target_": "timm.models.resnet.ResNet", "block": None, "layers": [1, 1, 1, 1]},
    {"_target_": "engine.models.arch.timm_model", "model_name": "resnet18", "num_classes": 10},
    {"_target_": "engine.models.arch.robustbench_model", "model_name": "Standard"},
    {"_target_": "engine.models.testing.InputQuantised", "levels": 16,
     "net": {"_target_": "engine.models.cnn.SmallCNN"}},
])
def test_model_builders_pass(node: dict[str, Any]) -> None:
    if "timm" in node["_target_"]:
        pytest.importorskip("timm")
    _check(node)


def test_every_shipped_config_passes_the_policy() -> None:
    options = group_options([Path(__file__).resolve().parent.parent / "configs"])
    overrides = [[f"model=[{m}]"] for m in options["model"]] + [[f"dataset={d}"] for d in options["dataset"]]
    overrides += [[f"runner={r}"] for r in options["runner"]]
    overrides += [[f"perturbation=[{','.join(options['perturbation'])}]"]]
    for over in overrides:
        cfg = compose_dict(over)
        check_targets(cfg, TargetPolicy.of(cfg))


def test_each_place_needs_its_kind() -> None:
    with pytest.raises(ConfigError, match="is a SmallCNN, not a Perturbation"):
        check_targets({"perturbation": {"p": {"_target_": "engine.models.cnn.SmallCNN"}}}, DEFAULT)
    with pytest.raises(ConfigError, match="returns a SampleSet, not a runner"):
        check_targets({"runner": {"_target_": "engine.data.digits.load_digits"}}, DEFAULT)
    with pytest.raises(ConfigError, match="is a Clean, not a dataset"):
        check_targets({"dataset": {"_target_": "engine.perturbations.clean.Clean"}}, DEFAULT)
    check_targets({"runner": {"_target_": "engine.runners.local.LocalRunner"},
                   "dataset": {"_target_": "engine.claims.subset.subset_of",
                               "base": {"_target_": "engine.data.digits.load_digits"}}}, DEFAULT)


def test_allow_any_lifts_every_rule() -> None:
    for target in ("engine.models.convert.torch.load", "os.system", "timm.models.load_state_dict"):
        check_target({"_target_": target}, "model.m.arch", ANY_POLICY, MODEL)


# -- your own package: listed in target_packages, still resolved and checked ----------------------------------------


@pytest.fixture
def user_package(tmp_path: Path) -> Iterator[str]:
    """``vendorpkg``: a model class, a factory, a function of the wrong kind, and a re-exported loader."""
    pkg = tmp_path / "pkgs" / "vendorpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import pickle\n"
        "from pickle import load\n"
        "import torch\n"
        "from torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width: int = 4) -> None:\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(width, 2)\n\n"
        "def make_net(width=4):\n"
        "    return Net(width)\n\n"
        "def typed_net(width: int = 4) -> Net:\n"
        "    return Net(width)\n\n"
        "def path_of(name: str) -> str:\n"
        "    return name\n\n"
        "def forwarding(**kwargs) -> Net:\n"
        "    return Net()\n"
        "reexported = torch.load\n"
    )
    sys.path.insert(0, str(pkg.parent))
    try:
        yield "vendorpkg"
    finally:
        sys.path.remove(str(pkg.parent))
        for name in [m for m in sys.modules if m == "vendorpkg" or m.startswith("vendorpkg.")]:
            del sys.modules[name]


def test_a_listed_package_is_resolved_and_checked(user_package: str) -> None:
    mine = TargetPolicy(packages=(user_package,))
    with pytest.raises(ConfigError, match=r"outside the modules configs may call.*target_packages=\[vendorpkg\]"):
        _check({"_target_": "vendorpkg.Net"})
    for ok in ("vendorpkg.Net", "vendorpkg.make_net", "vendorpkg.typed_net"):
        _check({"_target_": ok}, mine)  # an unannotated factory: what it returns is checked before use
    for bad, needle in (("vendorpkg.load", "is _pickle.load, which loads a pickle"),
                        ("vendorpkg.pickle.loads", "is _pickle.loads, which loads a pickle"),
                        ("vendorpkg.reexported", "is torch.serialization.load, which loads a pickle"),
                        ("vendorpkg.path_of", "returns a str, not an nn.Module"),
                        ("vendorpkg.torch.zeros", "not a class or a function")):
        with pytest.raises(ConfigError) as err:
            _check({"_target_": bad}, mine)
        assert needle in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="checkpoint_path="):  # into **kwargs: it could reach a loader
        _check({"_target_": "vendorpkg.forwarding", "checkpoint_path": "x.pth"}, mine)


@pytest.mark.parametrize("target", ["torch.load", "pickle.loads", "numpy.load", "builtins.open", "os.system"])
def test_listing_a_loaders_package_does_not_allow_the_loader(target: str) -> None:
    root = target.split(".")[0]
    with pytest.raises(ConfigError) as err:
        _check({"_target_": target}, TargetPolicy(packages=(root,)))
    assert "which" in str(err.value) or "is refused" in str(err.value)


# -- config files cannot grant themselves the opt-ins, nor hand Hydra code to call ----------------------------------


def test_config_files_cannot_grant_the_opt_ins(tmp_path: Path) -> None:
    root = tmp_path / "cd"
    (root / "dataset").mkdir(parents=True)
    cases = {
        ("dataset/a.yaml", "# @package _global_"): {"allow_any_target": True},
        ("dataset/b.yaml", "# @package _global_"): {"target_packages": ["os"]},
        ("dataset/c.yaml", "# @package _global_"): {"hydra": {"callbacks": {"x": {"_target_": "os.system"}}}},
        ("dataset/d.yaml", "# @package _global_"): {"hydra": {"job_logging": {"handlers": {"h": {"()": "os.system"}}}}},
        ("dataset/e.yaml", "# @package hydra.callbacks"): {"x": {"_target_": "os.system"}},
        ("dataset/f.yaml", None): {"defaults": [{"runner@_global_.hydra.callbacks": "local"}]},
        ("dataset/g.yaml", "# @package _global_"): {"hydra": {"searchpath": ["file:///elsewhere"]}},
    }
    for (rel, header), doc in cases.items():
        path = root / rel
        problems = config_file_problems(path, root, doc, None if header is None else header.split()[-1])
        assert problems and str(path) in problems[0], (rel, problems)
    ok = {"_target_": "engine.data.digits.load_digits", "hydra": {"job": {"name": "x"}}}
    assert config_file_problems(root / "dataset" / "ok.yaml", root, ok, None) == []


def test_opt_ins_in_a_composed_config_must_come_from_the_command_line() -> None:
    """However Hydra placed them (a package override, a pkg:// search path), file-set opt-ins are refused."""
    cfg = {"allow_any_target": True, "target_packages": ["os"]}
    problems = opt_ins_from_files(cfg, ["dataset@_global_=evil"])
    assert len(problems) == 2 and "comes from a config file, not from your command line" in problems[0]
    assert opt_ins_from_files(cfg, ["allow_any_target=true", "+target_packages=[os]"]) == []
    assert opt_ins_from_files({"allow_any_target": False, "target_packages": []}, []) == []


def test_hydra_callbacks_in_a_config_folder_never_run(tiny_checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cd = tmp_path / "cd"
    (cd / "dataset").mkdir(parents=True)
    (cd / "dataset" / "evil.yaml").write_text(
        "# @package _global_\ndataset:\n  _target_: engine.data.digits.load_digits\n"
        f"hydra:\n  callbacks:\n    pwn:\n      _target_: builtins.open\n      file: {marker}\n      mode: w\n")
    proc = run_cli("--config-dir", str(cd), *tiny_overrides(tiny_checkpoint, tmp_path / "out", "perturbation=[clean]"),
                   "dataset=evil")
    assert not marker.exists()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "evil.yaml sets hydra.callbacks" in proc.stderr
    assert not marker.exists()
