"""Corruptions as engine perturbations: configs, seeding, shapes and channels, metrics, precomputed sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.data.precomputed import available_corruptions, load_all_severities, load_precomputed
from engine.errors import ConfigError
from engine.perturbations.base import BatchContext
from engine.perturbations.corruptions import ALL, COMMON, CORRUPTIONS, GROUPS, HELD_OUT, PRESETS, Corruption
from engine.stats.corruption import (
    ALEXNET_IMAGENET_C,
    ce_table,
    corruption_error,
    error_by_severity,
    mean_corruption_accuracy,
    mean_corruption_error,
    relative_corruption_error,
    relative_mean_corruption_error,
    strip_preset_prefix,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PERTURBATIONS = CONFIGS / "perturbation"
SUITES = {"imagenet_c": 15, "cifar10_c": 15, "imagenet_c_extra": 4, "cifar10_c_extra": 4}
CORRUPTION_CONFIGS = sorted(
    p.stem for p in PERTURBATIONS.glob("*.yaml") if "engine.perturbations.corruptions." in p.read_text()
)


def ctx(ids: list[int], seed: int = 0) -> BatchContext:
    return BatchContext(model=torch.nn.Identity(), seed=seed, sample_ids=torch.tensor(ids, dtype=torch.int64))


def images(n: int, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, c, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def compose():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from engine.compose.config import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        yield hydra_compose


def _instantiate(cfg, key: str):
    import hydra.utils

    return hydra.utils.instantiate(cfg.perturbation[key], name=key, _convert_="all")


def test_every_corruption_has_both_presets_as_configs() -> None:
    assert set(CORRUPTION_CONFIGS) == set(ALL) | {f"ic_{k}" for k in ALL}


@pytest.mark.parametrize("name", CORRUPTION_CONFIGS)
def test_corruption_config_composes_and_instantiates(compose, name: str) -> None:
    cfg = compose("sweep", overrides=[f"perturbation=[{name}]"])
    assert list(cfg.perturbation) == [name]
    p = _instantiate(cfg, name)
    assert isinstance(p, Corruption) and p.family == "corruption" and not p.needs_model
    assert p.preset == ("imagenet_c" if name.startswith("ic_") else "cifar10_c")
    assert p.levels == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert {"natural-shift", "non-adversarial", p.group} <= set(p.tags)
    assert (p.kind in HELD_OUT) == ("held-out" in p.tags)
    out = p.perturb_level(images(2), torch.zeros(2, dtype=torch.int64), 3.0, ctx([0, 1]))
    assert out.x.shape == (2, 3, 32, 32)


@pytest.mark.parametrize(("suite", "size"), sorted(SUITES.items()))
def test_suites_compose_into_one_node_per_corruption(compose, suite: str, size: int) -> None:
    cfg = compose("sweep", overrides=[f"perturbation=[clean,{suite}]"])
    keys = [k for k in cfg.perturbation if k != "clean"]
    assert len(keys) == size
    kinds = {_instantiate(cfg, k).kind for k in keys}
    assert kinds == set(HELD_OUT if suite.endswith("extra") else COMMON)


def test_default_sweep_keeps_the_first_three_names(compose) -> None:
    cfg = compose("sweep", overrides=[])
    for key in ("gaussian_noise", "gaussian_blur", "contrast"):
        assert _instantiate(cfg, key).preset == "cifar10_c"


def test_groups_partition_the_nineteen() -> None:
    members = [k for g in GROUPS.values() for k in g]
    assert sorted(members) == sorted(ALL) and len(ALL) == 19
    assert set(PRESETS["imagenet_c"]) == set(PRESETS["cifar10_c"]) == set(ALL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"preset": "imagenet"},
        {"backend": "cuda"},
        {"params": [1, 2]},
        {"severities": [0, 1]},
        {"params": [float("nan")] * 5},
    ],
)
def test_bad_settings_fail_naming_the_key(kwargs) -> None:
    with pytest.raises(ConfigError, match="gaussian_noise"):
        CORRUPTIONS["gaussian_noise"](name="gaussian_noise", **kwargs)


def test_params_override_the_preset() -> None:
    p = CORRUPTIONS["contrast"](name="contrast", params=[0.5] * 5)
    x = images(1)
    mean = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(p.corrupt(x, 2), ((x - mean) * 0.5 + mean).clamp(0, 1))


@pytest.mark.parametrize("kind", ALL)
def test_sample_output_independent_of_batch(kind: str) -> None:
    p = CORRUPTIONS[kind](name=kind, preset="cifar10_c")
    x = images(4, seed=1)
    y = torch.zeros(4, dtype=torch.int64)
    full = p.perturb_level(x, y, 4.0, ctx([10, 11, 12, 13], seed=3)).x
    alone = p.perturb_level(x[2:3], y[:1], 4.0, ctx([12], seed=3)).x
    shuffled = p.perturb_level(x[[3, 2]], y[:2], 4.0, ctx([13, 12], seed=3)).x
    torch.testing.assert_close(alone[0], full[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(shuffled[1], full[2], rtol=0, atol=1e-6)
    other_seed = p.perturb_level(x, y, 4.0, ctx([10, 11, 12, 13], seed=4)).x
    assert torch.equal(other_seed, full) != p.stochastic


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_in_range_same_shape(kind: str, channels: int) -> None:
    x = images(3, c=channels, size=32)
    for preset in ("cifar10_c", "imagenet_c"):
        p = CORRUPTIONS[kind](name=kind, preset=preset)
        for out in p.run(x, torch.zeros(3, dtype=torch.int64), ctx([0, 1, 2])):
            assert out.x.shape == x.shape and out.x.dtype == x.dtype
            assert torch.isfinite(out.x).all() and out.x.min() >= 0 and out.x.max() <= 1


def test_grey_input_of_a_colour_corruption_is_the_luma_of_its_rgb() -> None:
    x = images(2, c=1)
    p = CORRUPTIONS["frost"](name="frost", preset="cifar10_c")
    grey = p.corrupt(x, 3, seed=1, sample_ids=[4, 5])
    rgb = p.corrupt(x.expand(-1, 3, -1, -1), 3, seed=1, sample_ids=[4, 5])
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(grey, luma.clamp(0, 1), rtol=0, atol=1e-6)


def test_grey_brightness_is_the_reference_grey_branch() -> None:
    x = images(2, c=1)
    p = CORRUPTIONS["brightness"](name="brightness", preset="imagenet_c")
    torch.testing.assert_close(p.corrupt(x, 2), (x + 0.2).clamp(0, 1))


def test_frost_textures_are_read_without_importing_imagecorruptions() -> None:
    code = (
        "import sys; from engine.perturbations.corruptions import textures;"
        "t = textures.rescaled_texture(0, 32, 32, 0.2); assert t.shape[2] == 3, t.shape;"
        "assert 'imagecorruptions' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(CONFIGS.parent), env=dict(os.environ))


# ------------------------------------------------------------------------------------------- metrics


def test_error_by_severity_from_rows() -> None:
    errs = error_by_severity(
        correct=[True, False, False, True, True, False],
        corruption=["fog", "fog", "fog", "snow", "snow", "snow"],
        severity=[1, 1, 2, 1, 5, 5],
    )
    np.testing.assert_allclose(errs["fog"], [0.5, 1.0, np.nan, np.nan, np.nan])
    np.testing.assert_allclose(errs["snow"], [0.0, np.nan, np.nan, np.nan, 0.5])


def test_corruption_error_and_mce() -> None:
    model = {"fog": [0.1, 0.2, 0.3, 0.4, 0.5], "snow": [0.2] * 5}
    base: dict[str, Any] = {"fog": [0.2, 0.4, 0.6, 0.8, 1.0], "snow": 0.4}
    assert corruption_error(model["fog"], base["fog"]) == pytest.approx(0.5)
    assert ce_table(model, base) == pytest.approx({"fog": 0.5, "snow": 0.5})
    assert mean_corruption_error(model, base) == pytest.approx(0.5)
    # relative: (Σ E − 5·clean) / (Σ E_base − 5·clean_base)
    assert relative_corruption_error(model["fog"], 0.1, base["fog"], 0.2) == pytest.approx(
        (1.5 - 0.5) / (3.0 - 1.0)
    )
    assert relative_mean_corruption_error(model, 0.1, base, 0.2) == pytest.approx(
        np.mean([(1.5 - 0.5) / (3.0 - 1.0), (1.0 - 0.5) / (2.0 - 1.0)])
    )
    assert mean_corruption_accuracy(model) == pytest.approx(
        1 - np.mean([0.1, 0.2, 0.3, 0.4, 0.5, 0.2, 0.2, 0.2, 0.2, 0.2])
    )


def test_alexnet_is_its_own_unit_baseline() -> None:
    errors = strip_preset_prefix({f"ic_{k}": [v] * 5 for k, v in ALEXNET_IMAGENET_C.items()})
    assert mean_corruption_error(errors, "alexnet") == pytest.approx(1.0)
    assert relative_mean_corruption_error(errors, 0.435, "alexnet") == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="unknown mCE baseline"):
        mean_corruption_error(errors, "vgg")
    with pytest.raises(ConfigError, match="no error for speckle_noise"):
        mean_corruption_error({"speckle_noise": [0.1] * 5}, "alexnet")


# ---------------------------------------------------------------------------------- precomputed sets


def _write_set(root: Path, n: int = 6, size: int = 32, repeat_labels: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (5 * n, size, size, 3), dtype=np.uint8)
    np.save(root / "fog.npy", blocks)
    np.save(root / "snow.npy", blocks[::-1].copy())
    labels = rng.integers(0, 10, n).astype(np.uint8)
    np.save(root / "labels.npy", np.tile(labels, 5) if repeat_labels else labels)
    return blocks


@pytest.mark.parametrize("repeat_labels", [True, False])
def test_precomputed_loader_reads_blocks(tmp_path: Path, repeat_labels: bool) -> None:
    blocks = _write_set(tmp_path, repeat_labels=repeat_labels)
    assert available_corruptions(tmp_path) == ["fog", "snow"]
    s3 = load_precomputed(tmp_path, "fog", 3, dataset="cifar10")
    assert s3.images.shape == (6, 3, 32, 32) and s3.images.dtype == torch.float32
    np.testing.assert_array_equal((s3.images * 255).round().byte().permute(0, 2, 3, 1).numpy(), blocks[12:18])
    assert (
        s3.sample_ids.tolist() == list(range(6)) and s3.num_classes == 10 and s3.labels.dtype == torch.int64
    )
    assert s3.name == "cifar10/fog/s3"
    every = load_all_severities(tmp_path, "snow", dataset="cifar100")
    assert sorted(every) == [1, 2, 3, 4, 5] and every[1].num_classes == 100
    assert torch.equal(every[1].labels, s3.labels)


def test_precomputed_loader_errors_name_the_problem(tmp_path: Path) -> None:
    _write_set(tmp_path)
    with pytest.raises(ConfigError, match=r"no frost.npy \(available: fog, snow\)"):
        load_precomputed(tmp_path, "frost", 1)
    with pytest.raises(ConfigError, match="severity 6"):
        load_precomputed(tmp_path, "fog", 6)
    np.save(tmp_path / "labels.npy", np.zeros(7, dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"labels\.npy has 7 entries"):
        load_precomputed(tmp_path, "fog", 1)
