"""Inputs of the scenario matrix (tests/test_scenarios.py): one tiny dataset per on-disk layout, tiny models
from three sources, and each model's predictions computed here, independently of the loaders under test.

Images are class templates (4×4 blocks of colour, upsampled to 32×32) plus per-image noise, so a model
trained for a few dozen steps tells the classes apart: its predictions then depend on the pixels, and a
loader that reads them wrongly (clipped, swapped channels, another order) changes them.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.compose.config import ModelConfig
from engine.models.checkpoint import save_checkpoint
from tests.data_fixtures import write_cifar_binary, write_cifar_python, write_image_folder, write_npz

SIZE = 32
N_IMAGES = 20  # per layout; the sweeps read the first N_EVAL
N_EVAL = 8
MEAN, STD = 0.5, 0.25
USER_PACKAGE = "gauntlet_scenario_models"  # the "user's own package", written to a folder on sys.path

USER_MODULE = '''"""A user's own architecture, imported by name from a config (target_packages=[PKG])."""
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))
'''.replace("PKG", USER_PACKAGE)


def write_user_package(root: Path) -> Path:
    """``root/<USER_PACKAGE>/nets.py`` with ``TinyNet``; put ``root`` on sys.path / PYTHONPATH to import it."""
    pkg = root / USER_PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODULE)
    return root


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way a user keeps a test set on disk, and what a sweep must read from it."""

    name: str
    dataset: dict[str, Any]  # the sweep's dataset config
    images: np.ndarray  # uint8 N×H×W×C in the loader's sample order (1 channel for 16-bit grey)
    labels: np.ndarray
    num_classes: int
    channels: int  # what a model sees

    def pixels(self) -> torch.Tensor:
        """The images as the loader must return them: float N×C×H×W in [0, 1] (grey repeated to RGB)."""
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 255.0
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x


def class_images(labels: np.ndarray, num_classes: int, channels: int, seed: int) -> np.ndarray:
    """uint8 N×32×32×C: a fixed 4×4 colour template per class (upsampled), plus per-image noise."""
    templates = np.random.default_rng(1234).integers(40, 216, size=(num_classes, 4, 4, channels))
    up = np.repeat(np.repeat(templates, SIZE // 4, axis=1), SIZE // 4, axis=2).astype(np.float64)
    noise = np.random.default_rng(seed).normal(0.0, 24.0, size=(len(labels), SIZE, SIZE, channels))
    return np.clip(np.rint(up[labels] + noise), 0, 255).astype(np.uint8)


def write_png16(path: Path, grey: np.ndarray) -> Path:
    """A 16-bit greyscale PNG written by hand (IHDR, one zlib IDAT, IEND), independent of Pillow."""
    h, w = grey.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = grey.astype(">u2").reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 on every row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def sorted_labels(num_classes: int, n: int = N_IMAGES, seed: int = 0) -> np.ndarray:
    """Labels in ascending order, so an image folder's listing (class folder, then file) keeps the array order."""
    if num_classes <= n:
        return np.sort(np.arange(n) % num_classes)
    return np.sort(np.random.default_rng(seed).choice(num_classes, n, replace=False))


def make_layouts(root: Path) -> dict[str, Layout]:
    """Every layout but the embedded digits, written under ``root``."""
    out: dict[str, Layout] = {}
    y10, y100 = sorted_labels(10), sorted_labels(100)
    x10, x100 = class_images(y10, 10, 3, seed=1), class_images(y100, 100, 3, seed=2)
    common = {"subset": "first", "subset_seed": 0}
    write_cifar_python(root / "c10py", x10, y10)
    out["cifar10_python"] = Layout("cifar10_python", {"_target_": "engine.data.cifar.load_cifar10", "name": "cifar10",
                                   "root": str(root / "c10py"), "split": "test", "layout": "python", **common},
                                   x10, y10, 10, 3)
    write_cifar_binary(root / "c10bin", x10, y10)
    out["cifar10_binary"] = Layout("cifar10_binary", {"_target_": "engine.data.cifar.load_cifar10", "name": "cifar10",
                                   "root": str(root / "c10bin"), "split": "test", "layout": "binary", **common},
                                   x10, y10, 10, 3)
    write_cifar_python(root / "c100py", x100, y100, cifar100=True)
    out["cifar100_python"] = Layout("cifar100_python", {"_target_": "engine.data.cifar.load_cifar100", "name": None,
                                    "root": str(root / "c100py"), "split": "test", "layout": "python",
                                    "label_type": "fine", **common}, x100, y100, 100, 3)
    classes = [f"c{i}" for i in range(10)]
    folder = {"_target_": "engine.data.image_folder.load_image_folder", "class_index": None, "resize": None,
              "crop": None, "channels": 3, "workers": 2, "check": "header", **common}
    write_image_folder(root / "png8", x10, y10, classes)
    out["png8"] = Layout("png8", {**folder, "root": str(root / "png8"), "name": "png8"}, x10, y10, 10, 3)
    grey = class_images(y10, 10, 1, seed=3)
    for i, (img, y) in enumerate(zip(grey, y10, strict=True)):
        (root / "png16" / classes[int(y)]).mkdir(parents=True, exist_ok=True)
        write_png16(root / "png16" / classes[int(y)] / f"{i:05d}.png", img[..., 0].astype(np.uint16) * 257)
    out["png16"] = Layout("png16", {**folder, "root": str(root / "png16"), "name": "png16"}, grey, y10, 10, 3)
    write_npz(root / "set.npz", x10, y10)
    out["npz"] = Layout("npz", {"_target_": "engine.data.npz.load_npz", "path": str(root / "set.npz"),
                                "name": "npz", "x_key": "x", "y_key": "y", "num_classes": 10, "layout": "auto",
                                **common}, x10, y10, 10, 3)
    return out


def model_config(arch: dict[str, Any], checkpoint: Path, channels: int) -> dict[str, Any]:
    """A model config as a user writes it (configs/model/*.yaml), defaults filled in by the schema's."""
    return {**dataclasses.asdict(ModelConfig()), "arch": arch, "mean": [MEAN] * channels, "std": [STD] * channels,
            "checkpoint": str(checkpoint), "sha256": None, "train": None}


def arch_of(source: str, channels: int, num_classes: int) -> dict[str, Any]:
    if source == "torchvision":  # torchvision's ViT class, one 32-wide layer on 8×8 patches: 16k weights, 1 ms a call
        return {"_target_": "torchvision.models.VisionTransformer", "image_size": SIZE, "patch_size": 8,
                "num_layers": 1, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64, "num_classes": num_classes}
    assert source == "user_package"
    return {"_target_": f"{USER_PACKAGE}.nets.TinyNet", "in_channels": channels, "num_classes": num_classes}


def build_arch(arch: dict[str, Any]) -> nn.Module:
    from hydra.utils import instantiate

    return instantiate(arch)


def train_briefly(net: nn.Module, images: np.ndarray, labels: np.ndarray, channels: int, seed: int,
                  steps: int = 40) -> nn.Module:
    """A few dozen Adam steps on (fresh noise around) the class templates: enough to tell classes apart."""
    torch.manual_seed(seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = ((x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x) - MEAN) / STD
    y = torch.from_numpy(labels).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def train_checkpoint(source: str, layout: Layout, path: Path, seed: int,
                     start: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Train a model of ``source`` for ``layout`` on its own training images (or, from ``start``, a few steps
    more: another checkpoint of the same architecture), save it; return its config and weights."""
    arch = arch_of(source, layout.channels, layout.num_classes)
    grey = layout.images.shape[-1] == 1
    # the embedded digits are real images, not class templates: train on them, or the model is at chance on them
    train_x = layout.images if layout.name == "digits" else class_images(layout.labels, layout.num_classes,
                                                                        1 if grey else 3, seed=100 + seed)
    torch.manual_seed(seed)  # the initial weights too: every run of the matrix trains the same checkpoint
    net = build_arch(arch)
    if start is not None:
        net.load_state_dict(start)
    net = train_briefly(net, train_x, layout.labels, layout.channels, seed, steps=40 if start is None else 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    save_checkpoint(state, path, {"model": f"{source}-{layout.name}-{seed}"})
    return model_config(arch, path, layout.channels), state


def reference_predictions(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, top-1 minus top-2 logit) of a built, normalising model on float images."""
    with torch.no_grad():
        logits = model(x)
    top2 = logits.topk(2, dim=1).values
    return logits.argmax(1).numpy(), (top2[:, 0] - top2[:, 1]).numpy()
