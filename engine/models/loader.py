"""Resolve a model config to a ready classifier: train the embedded checkpoint on first use, verify, load."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engine.errors import CheckpointError, ConfigError
from engine.models.arch import instantiate_arch
from engine.models.checkpoint import load_state, load_torchscript, resolve_format, verify_file
from engine.models.training import train_embedded
from engine.models.wrapper import NormalizedModel
from engine.remote.model import build_remote_model, contract_digest, is_remote

log = logging.getLogger(__name__)
PKG_SCHEME = "pkg://"


def _package_file(name: str, spec: str) -> Path:
    """``pkg://<package>/<path>``: a file shipped inside an installed package (found without importing it)."""
    package, _, rel = spec[len(PKG_SCHEME):].partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise CheckpointError(
            f"model.{name}.checkpoint={spec}: package {package!r} is not installed; install it, or give a file path"
        )
    return Path(next(iter(found.submodule_search_locations))) / rel


def checkpoint_path(model_cfg: Mapping[str, Any], name: str = "?") -> Path:
    raw = model_cfg.get("checkpoint")
    if raw in (None, "", "???"):
        raise ConfigError(f"model.{name}.checkpoint is not set; pass model.{name}.checkpoint=/path/to/weights")
    text = str(raw)
    if text.startswith(PKG_SCHEME):
        return _package_file(name, text)
    return Path(text).expanduser()


def default_cache_dir() -> Path:
    return Path(os.environ.get("GAUNTLET_CACHE_DIR", "~/.cache/gauntlet")).expanduser()


def _may_train(path: Path, model_cfg: Mapping[str, Any], cache_dir: str | Path | None) -> tuple[bool, str]:
    """Whether a missing checkpoint may be trained now, and why (or why not)."""
    flag = model_cfg.get("train_if_missing")
    home = (Path(str(cache_dir)).expanduser() if cache_dir else default_cache_dir()) / "checkpoints"
    if flag is True:
        return True, "train_if_missing=true"
    if flag is False:
        return False, "train_if_missing=false"
    inside = path.expanduser().resolve().is_relative_to(home.resolve())
    where = "the embedded default location" if inside else "outside the embedded default location"
    return inside, f"{where} {home}"


def ensure_checkpoint(name: str, model_cfg: Mapping[str, Any], progress: bool = True,
                      cache_dir: str | Path | None = None) -> str:
    """Make sure the checkpoint file exists and is intact; return its sha256.

    A missing file with a ``train`` recipe is trained now only at the embedded default
    location (under ``<cache_dir>/checkpoints``) or with ``train_if_missing: true``; anywhere else a
    missing file is an error, so a mistyped path never silently trains a new model under the user's name.
    """
    if is_remote(model_cfg):  # no file: the contract stands in for the checkpoint's hash in task ids
        return contract_digest(name, model_cfg)
    path = checkpoint_path(model_cfg, name)
    recipe = model_cfg.get("train")
    if not path.exists() and recipe:
        allowed, why = _may_train(path, model_cfg, cache_dir)
        if not allowed:
            raise CheckpointError(
                f"model {name!r}: checkpoint {path} does not exist. Its config has a train: recipe, but a missing "
                f"file is trained on first use only at the embedded default location or with train_if_missing=true "
                f"(this path is {why}). Fix model.{name}.checkpoint if it is mistyped, or set "
                f"model.{name}.train_if_missing=true to train a new model into {path}."
            )
        log.info("model %s: %s is missing; training it now (%s)", name, path, why)
        return train_embedded(
            name, model_cfg["arch"], list(model_cfg["mean"]), list(model_cfg["std"]), recipe, path, progress
        )
    return verify_file(path, model_cfg.get("sha256"), name)


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _network(name: str, model_cfg: Mapping[str, Any], path: Path) -> torch.nn.Module:
    """The architecture with its weights: TorchScript as saved, or ``arch`` + a state dict (``strict``)."""
    fmt = resolve_format(path, str(model_cfg.get("format") or "auto"), name)
    if fmt == "torchscript":
        return load_torchscript(path, name)
    net = instantiate_arch(name, model_cfg.get("arch") or {})
    state = load_state(path, name, fmt, model_cfg.get("state_key"), model_cfg.get("strip_prefix"))
    strict = model_cfg.get("strict", True)
    if not isinstance(strict, bool):
        raise ConfigError(f"model.{name}.strict={strict!r} must be true or false")
    try:
        result = net.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:400]
        raise CheckpointError(
            f"model {name!r}: checkpoint {path} does not fit model.{name}.arch ({first} {detail}). Check the "
            f"architecture, model.{name}.state_key / strip_prefix, or set model.{name}.strict=false to allow "
            "missing/unexpected keys"
        ) from None
    if not strict and (result.missing_keys or result.unexpected_keys):
        log.warning("model %s: strict=false; %d missing key(s) (%s), %d unexpected key(s) (%s)", name,
                    len(result.missing_keys), ", ".join(result.missing_keys[:5]),
                    len(result.unexpected_keys), ", ".join(result.unexpected_keys[:5]))
    return net


def build_model(name: str, model_cfg: Mapping[str, Any], device: torch.device) -> NormalizedModel:
    """Architecture + weights + normalisation, in eval mode with frozen parameters (or a remote model)."""
    if is_remote(model_cfg):
        return build_remote_model(name, model_cfg, device)  # type: ignore[return-value]
    mean, std = list(model_cfg["mean"]), list(model_cfg["std"])
    if not mean or len(mean) != len(std) or any(s <= 0 for s in std):
        raise ConfigError(f"model.{name}: mean and std need one value per channel and std > 0")
    fmt = str(model_cfg.get("memory_format", "contiguous"))
    if fmt not in MEMORY_FORMATS:
        raise ConfigError(f"model.{name}.memory_format is {fmt!r}; use one of {sorted(MEMORY_FORMATS)}")
    net = _network(name, model_cfg, checkpoint_path(model_cfg, name))
    model = NormalizedModel(net, mean, std).to(device).eval()
    if fmt != "contiguous":
        # weights only: a convolution with channels-last weights runs channels-last whatever the input's
        # layout, and the attacks keep seeing (and returning) ordinary contiguous images
        model.to(memory_format=MEMORY_FORMATS[fmt])
    for p in model.parameters():
        p.requires_grad_(False)
    return model
