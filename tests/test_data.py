"""The embedded digits data: real scans, fixed split, stable ids, [0, 1] NCHW 32×32."""

from __future__ import annotations

import pytest
import torch

from engine.data.digits import load_digits
from engine.errors import ConfigError


def test_digits_test_split_shape_range_and_ids() -> None:
    test = load_digits(split="test")
    assert test.images.shape == (450, 1, 32, 32) and test.images.dtype == torch.float32
    assert float(test.images.min()) >= 0.0 and float(test.images.max()) <= 1.0
    assert bool((test.sample_ids % 4 == 0).all())
    assert test.labels.bincount(minlength=10).min() >= 30  # every class is represented


def test_train_and_test_are_disjoint_and_cover_everything() -> None:
    train, test, everything = (load_digits(split=s) for s in ("train", "test", "all"))
    assert len(train) == 1347 and len(everything) == 1797
    ids = set(train.sample_ids.tolist())
    assert ids.isdisjoint(test.sample_ids.tolist())
    assert ids | set(test.sample_ids.tolist()) == set(range(1797))


def test_sample_ids_are_stable_and_images_deterministic() -> None:
    a = load_digits(split="test")
    load_digits.cache_clear()
    b = load_digits(split="test")
    assert torch.equal(a.sample_ids, b.sample_ids) and torch.equal(a.images, b.images)


def test_resize_keeps_the_8x8_content() -> None:
    small = load_digits(split="test", image_size=8)
    from sklearn.datasets import load_digits as sk

    raw = sk()
    assert torch.allclose(small.images[3, 0], torch.from_numpy(raw.images[12]).float() / 16)


def test_bad_split_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="split"):
        load_digits(split="validation")
