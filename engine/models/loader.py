"""Resolve a model config to a ready classifier: train the embedded checkpoint on first use, verify, load."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from engine.errors import CheckpointError, ConfigError
from engine.models.checkpoint import load_state, verify_file
from engine.models.training import train_embedded
from engine.models.wrapper import NormalizedModel


def checkpoint_path(model_cfg: Mapping[str, Any]) -> Path:
    return Path(str(model_cfg["checkpoint"])).expanduser()


def ensure_checkpoint(name: str, model_cfg: Mapping[str, Any], progress: bool = True) -> str:
    """Make sure the checkpoint file exists and is intact; return its sha256.

    A missing file with a ``train`` recipe is trained now (the embedded
    default); a missing file without one is an error.
    """
    path = checkpoint_path(model_cfg)
    recipe = model_cfg.get("train")
    if not path.exists() and recipe:
        return train_embedded(
            name, model_cfg["arch"], list(model_cfg["mean"]), list(model_cfg["std"]), recipe, path, progress
        )
    return verify_file(path, model_cfg.get("sha256"), name)


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def build_model(name: str, model_cfg: Mapping[str, Any], device: torch.device) -> NormalizedModel:
    """Architecture + weights (strict) + normalisation, in eval mode with frozen parameters."""
    mean, std = list(model_cfg["mean"]), list(model_cfg["std"])
    if not mean or len(mean) != len(std) or any(s <= 0 for s in std):
        raise ConfigError(f"model.{name}: mean and std need one value per channel and std > 0")
    try:
        net = instantiate(dict(model_cfg["arch"]))
    except Exception as exc:  # hydra wraps import/constructor errors
        raise ConfigError(f"model.{name}.arch cannot be built: {exc}") from None
    path = checkpoint_path(model_cfg)
    state = load_state(path, name)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"model {name!r}: checkpoint {path} does not fit model.{name}.arch ({first})"
        ) from None
    fmt = str(model_cfg.get("memory_format", "contiguous"))
    if fmt not in MEMORY_FORMATS:
        raise ConfigError(f"model.{name}.memory_format is {fmt!r}; use one of {sorted(MEMORY_FORMATS)}")
    model = NormalizedModel(net, mean, std).to(device).eval()
    if fmt != "contiguous":
        # weights only: a convolution with channels-last weights runs channels-last whatever the input's
        # layout, and the attacks keep seeing (and returning) ordinary contiguous images
        model.to(memory_format=MEMORY_FORMATS[fmt])
    for p in model.parameters():
        p.requires_grad_(False)
    return model
