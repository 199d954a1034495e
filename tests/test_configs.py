"""Every config file under configs/ composes, validates against its schema, and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from engine.config import CONFIG_DIR
from engine.perturbations.base import Perturbation
from engine.resources import build_perturbation
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
    cfg = compose_dict([f"model=[{name}]"])
    mcfg = cfg["model"][name]
    net = instantiate(mcfg["arch"])
    assert sum(p.numel() for p in net.parameters()) > 0
    assert len(mcfg["mean"]) == len(mcfg["std"])


@pytest.mark.parametrize("name", _group_files("perturbation"))
def test_perturbation_config_composes_and_instantiates(name: str) -> None:
    cfg = compose_dict([f"perturbation=[{name}]"])
    assert cfg["perturbation"], f"perturbation={name} selected nothing"
    for key, pcfg in cfg["perturbation"].items():
        pert = build_perturbation(key, pcfg)
        assert isinstance(pert, Perturbation)
        assert pert.name == key and pert.levels
        assert pert.family in ("clean", "attack", "corruption")


@pytest.mark.parametrize("name", _group_files("dataset"))
def test_dataset_config_composes_and_loads(name: str) -> None:
    cfg = compose_dict([f"dataset={name}"])
    data = instantiate(cfg["dataset"])
    assert len(data) > 0 and data.images.min() >= 0 and data.images.max() <= 1


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
