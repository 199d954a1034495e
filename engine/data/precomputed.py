"""Released corruption sets (CIFAR-10-C, CIFAR-100-C, Tiny-ImageNet-C in ``.npy`` form) from a local folder.

Layout (Hendrycks' release): ``<root>/<corruption>.npy``, uint8 N·5×H×W×C, five
consecutive blocks of N images (severity 1 first), and ``<root>/labels.npy`` with
either N·5 labels (the release repeats them per block) or N. A sample's id is its
index within a block, the index of the clean test image it came from, so released
images line up with the same ids corrupted on the fly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.data import SampleSet, required_path, user_dataset_name
from engine.errors import ConfigError

KNOWN_CLASSES = {"cifar10": 10, "cifar10_c": 10, "cifar100": 100, "cifar100_c": 100, "tiny_imagenet": 200}
N_SEVERITIES = 5


def available_corruptions(root: str | Path) -> list[str]:
    """Corruption files in ``root`` (every ``*.npy`` except ``labels.npy``)."""
    return sorted(p.stem for p in Path(root).expanduser().glob("*.npy") if p.stem != "labels")


def _load_labels(root: Path, total: int) -> np.ndarray:
    path = root / "labels.npy"
    if not path.is_file():
        raise ConfigError(f"precomputed set {root}: labels.npy is missing")
    labels = np.load(path, mmap_mode="r")
    per_block = total // N_SEVERITIES
    if labels.shape[0] == total:
        first = np.asarray(labels[:per_block])
        for s in range(1, N_SEVERITIES):
            if not np.array_equal(first, labels[s * per_block : (s + 1) * per_block]):
                raise ConfigError(f"precomputed set {root}: labels.npy differs between severity blocks")
        return first.astype(np.int64)
    if labels.shape[0] == per_block:
        return np.asarray(labels).astype(np.int64)
    raise ConfigError(
        f"precomputed set {root}: labels.npy has {labels.shape[0]} entries; expected {per_block} or {total}"
    )


def load_precomputed(
    root: str | Path,
    corruption: str,
    severity: int,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    dataset: str = "cifar10",
) -> SampleSet:
    """One (corruption, severity) block as a :class:`SampleSet` (float32 N×C×H×W in [0, 1], ids 0…N-1).

    ``num_classes``: given, or known from ``dataset`` (cifar10 / cifar100 /
    tiny_imagenet), else ``max(label) + 1``.
    """
    base = Path(required_path(root, "root", "a folder with <corruption>.npy and labels.npy")).expanduser()
    if isinstance(severity, bool) or int(severity) != severity or not 1 <= severity <= N_SEVERITIES:
        raise ConfigError(f"precomputed set {base}: severity {severity!r} is not an integer 1-5")
    path = base / f"{corruption}.npy"
    if not path.is_file():
        choices = ", ".join(available_corruptions(base)) or "none"
        raise ConfigError(f"precomputed set {base}: no {corruption}.npy (available: {choices})")
    arr = np.load(path, mmap_mode="r")
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[0] % N_SEVERITIES:
        raise ConfigError(
            f"{path}: expected uint8 (5·N, H, W[, C]) images, got {arr.dtype} {tuple(arr.shape)}"
        )
    per_block = arr.shape[0] // N_SEVERITIES
    labels = _load_labels(base, arr.shape[0])
    block = np.asarray(arr[(severity - 1) * per_block : severity * per_block])
    if block.ndim == 3:
        block = block[..., None]
    images = torch.from_numpy(np.ascontiguousarray(block.transpose(0, 3, 1, 2))).float().div_(255.0)
    if num_classes is None:
        num_classes = KNOWN_CLASSES.get(dataset, int(labels.max()) + 1 if labels.size else 0)
    return SampleSet(
        user_dataset_name(name, "precomputed") if name else f"{dataset}/{corruption}/s{severity}",
        images.contiguous(),
        torch.from_numpy(labels),
        torch.arange(per_block, dtype=torch.int64),
        num_classes,
    )


def load_all_severities(root: str | Path, corruption: str, **kwargs: object) -> dict[int, SampleSet]:
    """``{severity: SampleSet}`` for severities 1-5 of one corruption (ids repeat across severities)."""
    return {
        s: load_precomputed(root, corruption, s, **kwargs)  # type: ignore[arg-type]
        for s in range(1, N_SEVERITIES + 1)
    }
