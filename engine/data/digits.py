"""The embedded default data: scikit-learn's bundled handwritten digits, upsampled to 32×32 in [0, 1]."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from engine.data import SampleSet, fixed_dataset_name
from engine.errors import ConfigError

SPLITS = ("train", "test", "all")
TEST_MODULUS = 4  # sample ids with id % 4 == 0 form the test split (450 of 1,797)


@functools.lru_cache(maxsize=8)
def load_digits(name: str = "digits", image_size: int = 32, split: str = "test") -> SampleSet:
    """Load the digits split as float32 1×S×S images.

    The 8×8 scans (values 0-16) are scaled to [0, 1] and resized bilinearly
    (``align_corners=False``) to ``image_size``. ``sample_id`` is the row index
    in scikit-learn's ``load_digits()`` order, so ids never move.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # bundled file, no download

    fixed_dataset_name(name, "digits")
    if split not in SPLITS:
        raise ConfigError(f"dataset.split={split!r} is not one of {', '.join(SPLITS)}")
    if image_size < 8:
        raise ConfigError(f"dataset.image_size={image_size} must be ≥ 8 (the scans are 8×8)")
    raw = sk_load_digits()
    images = torch.from_numpy(raw.images).float().div_(16.0).unsqueeze(1)
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0).contiguous()
    labels = torch.from_numpy(raw.target).long()
    ids = torch.arange(len(labels), dtype=torch.int64)
    if split == "test":
        keep = ids % TEST_MODULUS == 0
    elif split == "train":
        keep = ids % TEST_MODULUS != 0
    else:
        keep = torch.ones_like(ids, dtype=torch.bool)
    return SampleSet(name, images[keep].contiguous(), labels[keep], ids[keep], num_classes=10)
