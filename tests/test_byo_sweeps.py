"""End to end with a user's own model and data: --config-dir scenarios, AutoAttack's example, shard memory."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from engine.models.checkpoint import sha256_of
from tests import data_fixtures as fx
from tests.conftest import REPO, compose_dict, run_cli

FAST_PGD = ["perturbation.pgd_linf.eps=[0.03]", "perturbation.pgd_linf.steps=2"]


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A user's folder: a torchvision ResNet-18 with random weights as safetensors, data in three layouts."""
    tv = pytest.importorskip("torchvision.models")
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("user")
    torch.manual_seed(0)
    weights = root / "weights" / "resnet18_random.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in tv.resnet18(num_classes=10).state_dict().items()}, str(weights))
    images, labels = fx.smooth_images(30, seed=5), np.arange(30) % 10
    fx.write_cifar_python(root / "cifar", images, labels)
    fx.write_image_folder(root / "folder", images[:15], labels[:15], [f"class_{i}" for i in range(10)], ".png")
    fx.write_image_folder(root / "folder", images[15:], labels[15:], [f"class_{i}" for i in range(10)], ".jpg")
    npz = fx.write_npz(root / "arrays" / "test.npz", images, labels)
    cfg_dir = root / "conf"
    (cfg_dir / "model").mkdir(parents=True)
    (cfg_dir / "dataset").mkdir()
    (cfg_dir / "model" / "my_resnet.yaml").write_text(
        "# @package model.my_resnet\n"
        "arch:\n  _target_: torchvision.models.resnet18\n  num_classes: 10\n"
        "mean: [0.4914, 0.4822, 0.4465]\nstd: [0.2471, 0.2435, 0.2616]\n"
        f"checkpoint: {weights}\n"
    )
    (cfg_dir / "dataset" / "my_cifar.yaml").write_text(
        f"_target_: engine.data.cifar.load_cifar10\nroot: {root / 'cifar'}\n"
    )
    return {"root": root, "conf": cfg_dir, "weights": weights, "cifar": root / "cifar",
            "folder": root / "folder", "npz": npz}


SCENARIOS = {
    "user_cifar_config": lambda s: ["dataset=my_cifar"],
    "shipped_cifar10": lambda s: ["dataset=cifar10", f"dataset.root={s['cifar']}"],
    "image_folder": lambda s: ["dataset=image_folder", f"dataset.root={s['folder']}", "dataset.name=my_folder"],
    "npz": lambda s: ["dataset=npz", f"dataset.path={s['npz']}"],
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))  # ≈ 9 s each on an idle 2-core CPU
def test_users_model_and_data_run_to_completion(user_setup: dict[str, Path], tmp_path: Path, scenario: str) -> None:
    out = tmp_path / "out"
    proc = run_cli("--config-dir", str(user_setup["conf"]), "model=[my_resnet]", *SCENARIOS[scenario](user_setup),
                   "perturbation=[clean,pgd_linf]", "n_examples=20", "batch_size=10", *FAST_PGD,
                   f"out_dir={out}", "progress=false", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "my_resnet acc %" in proc.stdout and "pgd_linf" in proc.stdout
    table = pads.dataset(str(out / "results")).to_table().to_pydict()
    assert len(table["sample_id"]) == 40  # 20 samples × (clean + one ε)
    assert sorted(set(table["sample_id"])) == list(range(20))
    expected_name = {"image_folder": "my_folder", "npz": "npz"}.get(scenario, "cifar10")
    assert set(table["dataset"]) == {expected_name}
    sweep = json.loads((out / "sweep.json").read_text())
    assert {t["checkpoint_sha256"] for t in sweep["tasks"]} == {sha256_of(user_setup["weights"])}


def _original_autoattack_model() -> torch.nn.Module:
    """``examples/resnet.py``'s ResNet18 with ``model_test.pt``, loaded the way ``examples/eval.py`` does."""
    spec = importlib.util.find_spec("pyautoattack")
    # the dev extra (installed by make test) ships it: its absence is a broken set-up, not a reason to skip
    assert spec is not None and spec.submodule_search_locations, "pyautoattack (dev extra) is not installed"
    examples = Path(next(iter(spec.submodule_search_locations))) / "examples"
    mod_spec = importlib.util.spec_from_file_location("aa_example_resnet", examples / "resnet.py")
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    model = module.ResNet18()
    model.load_state_dict(torch.load(examples / "model_test.pt", map_location="cpu"))  # eval.py: torch.load(path)
    return model.eval()


def test_autoattack_example_checkpoint_matches_the_original(tmp_path: Path, monkeypatch) -> None:
    """Shipped config + Gauntlet's CIFAR reader vs the original model + torchvision's CIFAR10 + ToTensor."""
    tv = pytest.importorskip("torchvision")
    from engine.sweep import run_sweep

    original = _original_autoattack_model()
    images = fx.smooth_images(40, seed=11)
    with torch.no_grad():
        preds = original(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255).argmax(1).numpy()
    labels = np.where(np.arange(40) < 28, preds, (preds + 1) % 10)  # 28 of 40 agree with the model
    fx.write_cifar_python(tmp_path / "data", images, labels)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv.datasets.CIFAR10, "_check_integrity", lambda self: True)
    ref = tv.datasets.CIFAR10(str(tmp_path / "data"), train=False, transform=tv.transforms.ToTensor())
    x_ref = torch.stack([ref[i][0] for i in range(40)])
    y_ref = torch.tensor([ref[i][1] for i in range(40)])
    with torch.no_grad():
        original_correct = (original(x_ref).argmax(1) == y_ref).numpy()
    cfg = compose_dict(["model=[autoattack_resnet18]", "dataset=cifar10", f"dataset.root={tmp_path / 'data'}",
                        "perturbation=[clean]", "n_examples=40", "batch_size=20",
                        f"out_dir={tmp_path / 'out'}", "progress=false", "device=cpu"])
    outcome = run_sweep(cfg)
    clean = next(r for r in outcome.accuracy if r.perturbation == "clean")
    table = pads.dataset(str(outcome.results_dir)).to_table().to_pydict()
    rows = sorted((s, c) for s, c, p in zip(table["sample_id"], table["correct"], table["perturbation"], strict=True)
                  if p == "clean")
    assert clean.n == 40 and clean.n_correct == int(original_correct.sum()) == 28
    assert [c for _, c in rows] == original_correct.tolist()  # sample by sample
    assert outcome.plan.tasks[0].checkpoint_sha256 == cfg["model"]["autoattack_resnet18"]["sha256"]


# VmHWM is this process's own high-water mark; ru_maxrss would also count the parent's RSS at fork time
# (Linux carries it across fork + exec), so a big pytest process would hide the difference.
PROBE = """
import json, re, resource, sys
from engine.compose.config import compose_sweep
from engine.sweep import run_sweep
cfg = compose_sweep(sys.argv[1:])
run_sweep(cfg)
try:
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": peak}))
"""


@pytest.mark.slow
def test_sharded_sweep_peak_memory_grows_with_shard_size_not_dataset_size(tmp_path: Path) -> None:
    """2,000 generated 64×64 images (≈ 98 MB as float): a shard decodes only its rows."""
    from engine.models.checkpoint import save_checkpoint
    from engine.models.cnn import SmallCNN

    n, size = 2000, 64
    fx.write_image_folder(tmp_path / "folder", fx.smooth_images(n, size=size, seed=2), np.arange(n) % 10,
                          [f"c{i}" for i in range(10)])
    torch.manual_seed(0)
    ckpt = tmp_path / "cnn.safetensors"
    save_checkpoint(SmallCNN(in_channels=3, image_size=size, width=4).state_dict(), ckpt, {})

    def peak_mib(n_examples: int, shard: int) -> float:
        args = ["model=[digits_cnn]", f"model.digits_cnn.checkpoint={ckpt}", "model.digits_cnn.train=null",
                "model.digits_cnn.arch.in_channels=3", f"+model.digits_cnn.arch.image_size={size}",
                "model.digits_cnn.arch.width=4", "model.digits_cnn.mean=[0.5,0.5,0.5]",
                "model.digits_cnn.std=[0.25,0.25,0.25]", "dataset=image_folder",
                f"dataset.root={tmp_path / 'folder'}", "perturbation=[clean]", f"n_examples={n_examples}",
                f"shard_size={shard}", "batch_size=50", "progress=false", "device=cpu",
                f"out_dir={tmp_path / f'out_{n_examples}_{shard}'}"]
        proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"] / 1024

    small_shards_all = peak_mib(n, 100)
    small_shards_quarter = peak_mib(n // 4, 100)
    one_big_shard = peak_mib(n, n)
    float_mib = n * 3 * size * size * 4 / 2**20  # ≈ 94 MiB: the whole set decoded at once
    print(f"peak RSS MiB: {n} images / shards of 100: {small_shards_all:.0f}; {n // 4} / 100: "
          f"{small_shards_quarter:.0f}; {n} / one shard of {n}: {one_big_shard:.0f} (float set {float_mib:.0f})")
    assert one_big_shard - small_shards_all > 0.6 * float_mib, (small_shards_all, one_big_shard)
    assert abs(small_shards_all - small_shards_quarter) < 0.25 * float_mib, (small_shards_all, small_shards_quarter)
