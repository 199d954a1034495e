"""Every config file under configs/ composes, validates against its schema, and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from engine.compose.config import CONFIG_DIR
from engine.evaluation.resources import build_perturbation
from engine.perturbations.base import Perturbation
from tests.conftest import compose_dict

CONFIGS = Path(CONFIG_DIR)


def _group_files(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_primary_config_composes_with_the_documented_defaults() -> None:
    cfg = compose_dict()
    assert set(cfg["model"]) == {"digits_cnn", "digits_cnn_at"}
    assert {"clean", "fgsm_linf", "pgd_linf", "pgd_l2"} <= set(cfg["perturbation"])
    assert cfg["device"] == "auto" and cfg["seed"] == 0
    assert {"seed", "n_examples", "out_dir", "batch_size", "device"} <= set(cfg)


@pytest.mark.parametrize("name", _group_files("model"))
def test_model_config_composes_and_arch_instantiates(name: str) -> None:
    from engine.models.arch import instantiate_arch
    from engine.models.loader import build_model, checkpoint_path

    cfg = compose_dict([f"model=[{name}]"])
    mcfg = cfg["model"][name]
    if mcfg.get("remote") is not None:  # a deployed model: its contract builds an oracle (no network yet)
        from engine.remote.model import build_oracle

        oracle = build_oracle(name, mcfg)
        assert oracle.num_classes >= 2 and oracle.endpoint.startswith("http")
        return
    net = instantiate_arch(name, mcfg["arch"])
    assert sum(p.numel() for p in net.parameters()) > 0
    assert len(mcfg["mean"]) == len(mcfg["std"])
    if mcfg["checkpoint"] != "???" and not mcfg.get("train") and checkpoint_path(mcfg, name).is_file():
        # a shipped checkpoint (e.g. AutoAttack's example in the pyautoattack wheel) loads strictly
        model = build_model(name, mcfg, torch.device("cpu"))
        assert model(torch.rand(1, len(mcfg["mean"]), 32, 32)).shape[1] == mcfg["arch"]["num_classes"]


@pytest.mark.parametrize("name", _group_files("perturbation"))
def test_perturbation_config_composes_and_instantiates(name: str) -> None:
    cfg = compose_dict([f"perturbation=[{name}]"])
    assert cfg["perturbation"], f"perturbation={name} selected nothing"
    for key, pcfg in cfg["perturbation"].items():
        pert = build_perturbation(key, pcfg)
        assert isinstance(pert, Perturbation)
        assert pert.name == key and pert.levels
        assert pert.family in ("clean", "attack", "corruption")


def _dataset_overrides(name: str, root: Path) -> list[str]:
    """Overrides pointing a dataset config at a generated fixture in its layout (none for embedded data)."""
    import numpy as np

    from tests import data_fixtures as fx

    images, labels = fx.smooth_images(12, seed=1), np.arange(12) % 10
    if name in ("cifar10", "cifar100"):
        fx.write_cifar_python(root, images, labels, cifar100=name == "cifar100")
        return [f"dataset.root={root}"]
    if name == "image_folder":
        fx.write_image_folder(root, images, labels, [f"class_{i}" for i in range(10)])
        return [f"dataset.root={root}"]
    if name == "npz":
        return [f"dataset.path={fx.write_npz(root / 'x.npz', images, labels)}"]
    if name == "cifar10_c":
        np.save(root / "gaussian_noise.npy", np.concatenate([images] * 5))
        np.save(root / "labels.npy", np.tile(labels, 5))
        return [f"dataset.root={root}"]
    return []


@pytest.mark.parametrize("name", _group_files("dataset"))
def test_dataset_config_composes_and_loads(name: str, tmp_path: Path) -> None:
    from engine.data import Dataset

    cfg = compose_dict([f"dataset={name}", *_dataset_overrides(name, tmp_path)])
    assert all(v != "???" for v in cfg["dataset"].values()), f"dataset={name} needs a fixture in _dataset_overrides"
    data = instantiate(cfg["dataset"], _convert_="all")
    assert isinstance(data, Dataset) and len(data) > 0 and len(data.labels) == len(data) == len(data.sample_ids)
    rows = data.slice(0, 5)
    assert rows.images.shape[:2] == (5, data.image_shape[0]) and tuple(rows.images.shape[1:]) == data.image_shape
    assert rows.images.min() >= 0 and rows.images.max() <= 1 and int(data.labels.max()) < data.num_classes


@pytest.mark.parametrize("name", _group_files("runner"))
def test_runner_config_composes_and_instantiates(name: str) -> None:
    cfg = compose_dict([f"runner={name}"])
    assert hasattr(instantiate(cfg["runner"]), "run")


def test_several_models_and_perturbations_in_one_run() -> None:
    cfg = compose_dict(["model=[digits_cnn,digits_cnn_at]", "perturbation=[clean,pgd_linf,contrast]"])
    assert list(cfg["model"]) == ["digits_cnn", "digits_cnn_at"]
    assert list(cfg["perturbation"]) == ["clean", "pgd_linf", "contrast"]


@pytest.mark.parametrize(
    "override",
    ["n_examples=abc", "seed=1.5", "batch_size=[1]", "model.digits_cnn.mean=[x]", "nonexistent_key=1"],
)
def test_schema_rejects_bad_types_and_unknown_keys_at_compose_time(override: str) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_dict([override])


def test_a_config_in_two_of_the_users_folders_is_refused_not_taken_from_the_first(tmp_path: Path) -> None:
    """``--config-dir a`` and ``hydra.searchpath=[file://b]`` both holding model/net.yaml: Hydra would silently use
    a's; the command refuses, naming both files, and writes nothing."""
    from engine.compose.config import shadowed_configs
    from tests.conftest import run_cli

    for d, ckpt in (("a", "one.safetensors"), ("b", "two.safetensors")):
        (tmp_path / d / "model").mkdir(parents=True)
        (tmp_path / d / "model" / "net.yaml").write_text(f"# @package model.net\narch: x\ncheckpoint: {ckpt}\n")
    (tmp_path / "b" / "model" / "other.yaml").write_text("# @package model.other\narch: x\n")
    found = shadowed_configs([tmp_path / "a", tmp_path / "b"])
    assert len(found) == 1 and "model config 'net' is in 2" in found[0] and str(tmp_path / "b") in found[0]
    assert shadowed_configs([tmp_path / "a", tmp_path / "a"]) == []  # one folder named twice is one folder
    out = tmp_path / "out"
    proc = run_cli("--config-dir", str(tmp_path / "a"), f"hydra.searchpath=[file://{tmp_path / 'b'}]",
                   "model=[net]", "perturbation=[clean]", f"out_dir={out}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "is in 2 --config-dir folders" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
