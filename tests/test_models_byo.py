"""Bring your own checkpoint: architectures, checkpoint layouts and options, hostile pickles, fit checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.errors import CheckpointError, ConfigError
from engine.models.arch import instantiate_arch, timm_model
from engine.models.checkpoint import manifest_path, save_checkpoint, sha256_of
from engine.models.cifar import DMWideResNet, PreActResNet18, WideResNet
from engine.models.cnn import SmallCNN
from engine.models.convert import convert
from engine.models.convert import main as convert_main
from engine.models.fit import check_fits
from engine.models.loader import build_model, ensure_checkpoint
from tests.conftest import run_cli

CPU = torch.device("cpu")
ARCH = {"_target_": "engine.models.cnn.SmallCNN", "in_channels": 1, "num_classes": 10}


def _cfg(path: Path, **kw: object) -> dict[str, object]:
    return {"arch": ARCH, "mean": [0.3], "std": [0.3], "checkpoint": str(path), "sha256": None, "train": None, **kw}


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SmallCNN().state_dict()


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    got = model.net.state_dict()  # type: ignore[union-attr]
    return all(torch.equal(got[k], v) for k, v in state.items())


# ------------------------------------------------------------------------------------ nested layouts
@pytest.mark.parametrize("layout", ["flat", "state_dict", "model", "net", "model_state_dict"])
def test_nested_torch_layouts_load(tmp_path: Path, small_state, layout: str) -> None:
    obj = small_state if layout == "flat" else {layout: small_state, "epoch": 7, "best_acc": 0.9}
    path = tmp_path / "m.pth"
    torch.save(obj, path)
    assert _same(build_model("m", _cfg(path), CPU), small_state)


def test_dataparallel_prefix_is_stripped_and_state_key_reaches_deep(tmp_path: Path, small_state) -> None:
    path = tmp_path / "dp.pt"
    torch.save({"checkpoint": {"ema": {f"module.{k}": v for k, v in small_state.items()}}}, path)
    model = build_model("dp", _cfg(path, state_key="checkpoint.ema"), CPU)
    assert _same(model, small_state)
    with pytest.raises(CheckpointError, match=r"strip_prefix='net\.': no key has it"):
        build_model("dp", _cfg(path, state_key="checkpoint.ema", strip_prefix="net."), CPU)


def test_no_state_dict_found_lists_the_top_level_keys(tmp_path: Path, small_state) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"weights_ema": small_state, "optimizer": {"lr": torch.tensor(0.1)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"top-level keys found: weights_ema, optimizer, epoch\); "
                                              r"set model\.odd\.state_key"):
        build_model("odd", _cfg(path), CPU)
    with pytest.raises(CheckpointError, match=r"state_key='model': .* has no 'model' \(keys found: weights_ema"):
        build_model("odd", _cfg(path, state_key="model"), CPU)
    assert _same(build_model("odd", _cfg(path, state_key="weights_ema"), CPU), small_state)


def test_strict_is_the_default_and_can_be_relaxed(tmp_path: Path, small_state) -> None:
    path = tmp_path / "partial.safetensors"
    save_checkpoint({k: v for k, v in small_state.items() if not k.startswith("head.3")}, path, {})
    with pytest.raises(CheckpointError, match=r"does not fit model\.p\.arch .*Missing key.*strict=false"):
        build_model("p", _cfg(path), CPU)
    build_model("p", _cfg(path, strict=False), CPU)


def test_torchscript_loads_only_when_the_config_says_so(tmp_path: Path) -> None:
    import warnings

    torch.manual_seed(0)
    net = SmallCNN().eval()
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.rand(1, 1, 32, 32)), str(path))
    with pytest.raises(CheckpointError, match=r"is a TorchScript archive; set model\.ts\.format=torchscript"):
        build_model("ts", _cfg(path), CPU)
    model = build_model("ts", _cfg(path, format="torchscript", arch=None), CPU)
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(model(x), net((x - 0.3) / 0.3), atol=1e-5)


# ------------------------------------------------------------------------------------ hostile pickles
class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.bin", "evil.safetensors"])
def test_hostile_pickle_is_refused_on_every_model_path_and_never_runs(tmp_path: Path, small_state, name) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"state_dict": {**small_state, "extra": _Payload(marker)}}, path)
    expected = (r"named \.safetensors but is a torch zip file .* not unpickled" if name.endswith(".safetensors")
                else r"is a pickle that needs code to load \(it references .*\).*safetensors.*"
                     r"gauntlet convert-checkpoint .* --trust-pickle")
    cfg = _cfg(path)
    sha = ensure_checkpoint("evil", cfg)  # hashing reads bytes only
    assert sha == sha256_of(path)
    with pytest.raises(CheckpointError, match=expected):
        build_model("evil", cfg, CPU)
    with pytest.raises(CheckpointError):
        build_model("evil", _cfg(path, format="torch"), CPU)
    assert not marker.exists()


def test_hostile_pickle_through_the_cli_exits_2_and_never_runs(tmp_path: Path, small_state) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**small_state, "x": _Payload(marker)}, path)
    proc = run_cli("model=[digits_cnn]", f"model.digits_cnn.checkpoint={path}", "model.digits_cnn.train=null",
                   f"out_dir={tmp_path / 'out'}", "n_examples=4", "perturbation=[clean]", "progress=false")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "needs code to load" in proc.stderr and "convert-checkpoint" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out" / "results").exists()


def test_convert_checkpoint_refuses_code_unless_trusted(tmp_path: Path, small_state, capsys) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "full.pt"
    torch.save({"model": {f"module.{k}": v for k, v in small_state.items()}, "note": _Payload(marker)}, path)
    out = tmp_path / "clean.safetensors"
    assert convert_main([str(path), str(out)]) == 2
    assert "needs code to load" in capsys.readouterr().err and not marker.exists() and not out.exists()
    assert convert_main([str(path), str(out), "--trust-pickle"]) == 0  # the user vouched for this file
    assert marker.exists()  # ... and only then did its code run
    digest = json.loads(manifest_path(out).read_text())["sha256"]
    assert digest == sha256_of(out) and f"sha256 {digest}" in capsys.readouterr().out
    assert _same(build_model("c", _cfg(out), CPU), small_state)  # module. stripped, nested key found
    with pytest.raises(CheckpointError, match="exists; pass --force"):
        convert(path, out, trust_pickle=True)


def test_convert_checkpoint_is_a_gauntlet_subcommand(tmp_path: Path, small_state) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": small_state}, path)
    proc = run_cli("convert-checkpoint", str(path), str(tmp_path / "plain.safetensors"))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (tmp_path / "plain.safetensors").is_file()
    bad = run_cli("convert-checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and "is not a file" in bad.stderr


# ------------------------------------------------------------------------------------ item 8.5 errors
def test_sha256_prefix_directory_and_bad_manifest_are_clear(tmp_path: Path, small_state) -> None:
    path = tmp_path / "m.safetensors"
    digest = save_checkpoint(small_state, path, {})
    with pytest.raises(ConfigError, match=r"model\.m\.sha256='.{12}' is not a sha256 .*give the full 64-hex sha256"):
        ensure_checkpoint("m", _cfg(path, sha256=digest[:12]))
    assert ensure_checkpoint("m", _cfg(path, sha256=digest.upper())) == digest
    with pytest.raises(CheckpointError, match=r"model\.m\.checkpoint=.* is a directory \(it holds m\.safetensors\)"):
        ensure_checkpoint("m", _cfg(tmp_path))
    manifest_path(path).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"manifest .* is not a JSON object with a \"sha256\" string"):
        ensure_checkpoint("m", _cfg(path))


RECIPE = {"epochs": 1, "lr": 1e-3, "batch_size": 64, "adv_eps": 0.0, "adv_steps": 0, "seed": 0}


def test_mistyped_path_with_a_train_recipe_does_not_train(tmp_path: Path) -> None:
    typo = tmp_path / "models" / "mine.safetensor"
    with pytest.raises(CheckpointError, match=r"does not exist\. Its config has a train: recipe.*outside the "
                                              r"embedded default location .*train_if_missing=true"):
        ensure_checkpoint("mine", _cfg(typo, train=RECIPE), cache_dir=tmp_path / "cache")
    assert not typo.exists()
    with pytest.raises(CheckpointError, match=r"this path is train_if_missing=false"):
        ensure_checkpoint("mine", _cfg(tmp_path / "cache" / "checkpoints" / "x.safetensors", train=RECIPE,
                                       train_if_missing=False), cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_train_if_missing_trains_into_the_given_path(tmp_path: Path) -> None:
    path = tmp_path / "fresh.safetensors"
    cfg = _cfg(path, train=RECIPE, train_if_missing=True, arch={**ARCH, "width": 4})
    assert ensure_checkpoint("fresh", cfg, progress=False, cache_dir=tmp_path / "cache") == sha256_of(path)


def _fit(net: nn.Module, shape: tuple[int, int, int], classes: int, mean: list[float] | None = None) -> None:
    from engine.models.wrapper import NormalizedModel

    m = mean or [0.5] * shape[0]
    check_fits("m", NormalizedModel(net, m, [0.5] * len(m)).eval(), shape, classes, "data", CPU)


class _ArgmaxNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10, dtype=torch.int64)


def test_model_that_does_not_fit_the_dataset_is_named() -> None:
    _fit(SmallCNN(in_channels=3), (3, 32, 32), 10)
    with pytest.raises(ConfigError, match=r"cannot classify dataset 'data''s 3×32×32 images .*input channel"):
        _fit(SmallCNN(in_channels=1), (3, 32, 32), 10)
    with pytest.raises(ConfigError, match=r"cannot classify dataset 'data''s 3×64×64"):
        _fit(SmallCNN(in_channels=3, image_size=32), (3, 64, 64), 10)
    with pytest.raises(ConfigError, match=r"has 10 outputs but dataset 'data' has 100 classes; set "
                                          r"model\.m\.arch\.num_classes=100"):
        _fit(SmallCNN(in_channels=3), (3, 32, 32), 100)
    with pytest.raises(ConfigError, match=r"returned torch.int64 logits; attacks need float logits"):
        _fit(_ArgmaxNet(), (3, 32, 32), 10)
    with pytest.raises(ConfigError, match=r"model\.m\.mean/std have 1 value\(s\) but dataset 'data' has 3"):
        _fit(SmallCNN(in_channels=3), (3, 32, 32), 10, mean=[0.5])


def test_class_count_mismatch_stops_the_cli_before_any_result(tmp_path: Path) -> None:
    seven = tmp_path / "seven.safetensors"
    save_checkpoint(SmallCNN(num_classes=7).state_dict(), seven, {})
    proc = run_cli("model=[digits_cnn]", f"model.digits_cnn.checkpoint={seven}", "model.digits_cnn.train=null",
                   "model.digits_cnn.arch.num_classes=7", f"out_dir={tmp_path}", "n_examples=4",
                   "perturbation=[clean]", "progress=false")
    assert proc.returncode == 2 and "has 7 outputs but dataset 'digits' has 10 classes" in proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


# ------------------------------------------------------------------------------------ architectures
def test_torchvision_and_timm_architectures_never_download() -> None:
    net = instantiate_arch("tv", {"_target_": "torchvision.models.resnet18", "num_classes": 10})
    assert net.fc.out_features == 10
    with pytest.raises(ConfigError, match=r"model\.tv\.arch\.weights='IMAGENET1K_V1' would fetch weights"):
        instantiate_arch("tv", {"_target_": "torchvision.models.resnet18", "weights": "IMAGENET1K_V1"})
    with pytest.raises(ConfigError, match=r"arch\.pretrained=True would fetch weights"):
        instantiate_arch("t", {"_target_": "timm.create_model", "model_name": "resnet18", "pretrained": True})
    small = timm_model("resnet10t", num_classes=5).eval()
    assert small(torch.rand(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ConfigError, match=r"'resnet_nonsense' is not a timm model"):
        timm_model("resnet_nonsense", num_classes=5)
    with pytest.raises(ConfigError, match=r"model\.x\.arch needs a _target_"):
        instantiate_arch("x", {"num_classes": 3})
    with pytest.raises(ConfigError, match=r"built a Tensor, not an nn\.Module"):
        instantiate_arch("x", {"_target_": "torch.zeros", "size": [2]})


def test_literature_architectures_options() -> None:
    x = torch.rand(2, 3, 32, 32)
    silu = WideResNet(depth=16, widen_factor=1, activation="silu")
    assert any(isinstance(m, nn.SiLU) for m in silu.modules()) and silu(x).shape == (2, 10)
    normed = WideResNet(depth=16, widen_factor=1, mean=[0.5] * 3, std=[0.25] * 3)
    plain = WideResNet(depth=16, widen_factor=1)
    plain.load_state_dict(normed.state_dict(), strict=True)  # normalisation adds no checkpoint keys
    normed.eval()
    plain.eval()
    assert torch.allclose(normed(x), plain((x - 0.5) / 0.25), atol=1e-5)
    dm = DMWideResNet(depth=16, width=1, activation="swish")
    assert "mean" not in dm.state_dict() and dm(x).shape == (2, 10)
    assert PreActResNet18(num_classes=100)(x).shape == (2, 100)
    with pytest.raises(ConfigError, match=r"depth is 6·n \+ 4"):
        WideResNet(depth=30)
    with pytest.raises(ConfigError, match=r"activation='gelu' is not one of relu, silu, swish"):
        DMWideResNet(depth=16, width=1, activation="gelu")


def test_robustbench_architectures_need_the_optional_extra(tmp_path: Path) -> None:
    import importlib.util

    from engine.models.arch import robustbench_model

    try:
        net = robustbench_model("Carmon2019Unlabeled", "cifar10", "Linf")  # architecture only, no download
    except ConfigError as exc:  # the extra is absent (or broken: robustbench 1.1.1 needs pkg_resources)
        assert "pip install 'gauntlet[robustbench]'" in str(exc)
        assert importlib.util.find_spec("robustbench") is None or "not importable" in str(exc)
        return
    # Gauntlet's own WideResNet takes RobustBench's weights strictly and computes the same logits
    for rb, mine in ((net, WideResNet(depth=28, widen_factor=10, sub_block1=True)),
                     (robustbench_model("Rebuffi2021Fixing_28_10_cutmix_ddpm", "cifar10", "L2"),
                      DMWideResNet(depth=28, width=10, activation="swish"))):
        mine.load_state_dict(rb.state_dict(), strict=True)
        x = torch.rand(2, 3, 32, 32)
        assert torch.allclose(rb.eval()(x), mine.eval()(x), atol=1e-4)
    with pytest.raises(ConfigError, match=r"'Nope2000' is not a RobustBench cifar10/Linf entry"):
        robustbench_model("Nope2000")
    # a config naming the entry builds its architecture and loads the weights from a local file
    path = tmp_path / "carmon.safetensors"
    save_checkpoint(net.state_dict(), path, {})
    arch = {"_target_": "engine.models.arch.robustbench_model", "model_name": "Carmon2019Unlabeled",
            "dataset": "cifar10", "threat_model": "Linf"}
    model = build_model("rb", {**_cfg(path), "arch": arch, "mean": [0.0] * 3, "std": [1.0] * 3}, CPU)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), net(x), atol=1e-5)


def test_checkpoint_option_errors(tmp_path: Path, small_state) -> None:
    safe = tmp_path / "m.safetensors"
    save_checkpoint(small_state, safe, {})
    with pytest.raises(ConfigError, match=r"model\.m\.format='onnx' is not one of auto, safetensors, torch"):
        build_model("m", _cfg(safe, format="onnx"), CPU)
    with pytest.raises(ConfigError, match=r"model\.m\.state_key is for torch files"):
        build_model("m", _cfg(safe, state_key="model"), CPU)
    with pytest.raises(ConfigError, match=r"model\.m\.strict='yes' must be true or false"):
        build_model("m", _cfg(safe, strict="yes"), CPU)
    with pytest.raises(CheckpointError, match=r"is not a loadable TorchScript archive"):
        build_model("m", _cfg(safe, format="torchscript"), CPU)
    with pytest.raises(ConfigError, match=r"model\.m\.checkpoint is not set; pass model\.m\.checkpoint="):
        ensure_checkpoint("m", _cfg(Path("???")))
    with pytest.raises(CheckpointError, match=r"checkpoint=pkg://no_such_pkg_xyz/w\.pt: package 'no_such_pkg_xyz'"):
        ensure_checkpoint("m", {**_cfg(safe), "checkpoint": "pkg://no_such_pkg_xyz/w.pt"})
