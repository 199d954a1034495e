"""Does a built model fit the dataset? Channels, image size, class count and float logits, checked on one batch."""

from __future__ import annotations

import torch

from engine.errors import ConfigError


def check_fits(name: str, model: torch.nn.Module, image_shape: tuple[int, int, int], num_classes: int,
               dataset_name: str, device: torch.device) -> None:
    """One forward pass on two mid-grey images of the dataset's shape; a mismatch names the key and the fix."""
    c, h, w = image_shape
    mean = getattr(model, "mean", None)
    if isinstance(mean, torch.Tensor) and mean.numel() != c:
        raise ConfigError(
            f"model.{name}.mean/std have {mean.numel()} value(s) but dataset {dataset_name!r} has {c} channel(s); "
            f"give one mean and std per channel"
        )
    x = torch.full((2, c, h, w), 0.5, device=device)
    try:
        with torch.no_grad():
            logits = model(x)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise ConfigError(
            f"model {name!r} cannot classify dataset {dataset_name!r}'s {c}×{h}×{w} images ({first}). Check that "
            f"model.{name}.arch takes {c} input channel(s) and {h}×{w} images (e.g. in_channels / image_size), "
            "or resize the data (dataset.resize / dataset.crop)"
        ) from None
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(f"model {name!r} returned a {type(logits).__name__}, not a tensor of logits")
    if not logits.is_floating_point():
        raise ConfigError(
            f"model {name!r} returned {logits.dtype} logits; attacks need float logits (return the scores, "
            "not argmax class indices)"
        )
    if logits.ndim != 2 or logits.shape[0] != 2:
        raise ConfigError(f"model {name!r} returned shape {tuple(logits.shape)} for 2 images; expected N×K logits")
    if logits.shape[1] != num_classes:
        raise ConfigError(
            f"model {name!r} has {logits.shape[1]} outputs but dataset {dataset_name!r} has {num_classes} classes; "
            f"set model.{name}.arch.num_classes={num_classes} (and the matching checkpoint), or pick the dataset "
            "the model was trained on"
        )
