"""Per-process caches of the heavy objects a task needs: models on the device, datasets, perturbations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate

from engine.data import Dataset
from engine.errors import ConfigError, GauntletError
from engine.models.loader import build_model
from engine.perturbations.base import Perturbation
from engine.seeding import stable_hash


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device when present, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: Gauntlet evaluates on cpu or cuda only ({device.type} devices cannot "
                          "run or verify the attacks); use device=auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use device=auto or device=cpu")
    return device


def _unwrap(exc: Exception) -> BaseException:
    """Hydra wraps errors raised by a ``_target_``; surface ours unchanged."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, GauntletError):
            return cause
        cause = cause.__cause__
    return exc


def build_perturbation(name: str, cfg: Mapping[str, Any]) -> Perturbation:
    """Instantiate a perturbation config, rejecting unknown keys by name."""
    target = cfg.get("_target_")
    if not target:
        raise ConfigError(f"perturbation.{name} has no _target_")
    try:
        cls = get_class(str(target))
    except Exception:
        raise ConfigError(f"perturbation.{name}._target_={target!r} cannot be imported") from None
    fields = getattr(cls, "__dataclass_fields__", {})
    unknown = sorted(k for k in cfg if k != "_target_" and k not in fields)
    if fields and unknown:
        valid = sorted(k for k in fields if k != "name")
        raise ConfigError(f"perturbation.{name}: unknown key(s) {unknown}; valid keys: {valid}")
    # fields Hydra must hand over as plain data, not instantiate (a transfer attack's source model config: its
    # arch is built by the model loader, with its checkpoint checks, never here)
    plain = {k: cfg[k] for k in getattr(cls, "plain_fields", ()) if k in cfg}
    try:
        if plain:
            rest = {k: v for k, v in cfg.items() if k not in plain}
            pert = instantiate(rest, name=name, _convert_="all", _partial_=True)(**plain)
        else:
            pert = instantiate(dict(cfg), name=name, _convert_="all")
    except (InstantiationException, TypeError) as exc:
        err = _unwrap(exc)
        if isinstance(err, GauntletError):
            raise err from None
        raise ConfigError(f"perturbation.{name} cannot be built: {exc}") from None
    if not isinstance(pert, Perturbation):
        raise ConfigError(f"perturbation.{name}._target_ must build a Perturbation, got {type(pert).__name__}")
    return pert


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    kwargs = dict(cfg)
    try:
        data = instantiate(kwargs, _convert_="all")
    except InstantiationException as exc:
        err = _unwrap(exc)
        if isinstance(err, GauntletError):
            raise err from None
        raise ConfigError(f"dataset cannot be loaded: {exc}") from None
    if not isinstance(data, Dataset):
        raise ConfigError(f"dataset._target_ must return a dataset (engine.data.Dataset), got {type(data).__name__}")
    return data


class Resources:
    """Caches keyed by config hash, so a worker loads each model and dataset once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._models: dict[str, torch.nn.Module] = {}
        self._datasets: dict[str, Dataset] = {}
        self._perts: dict[str, Perturbation] = {}

    def model(self, name: str, cfg: Mapping[str, Any]) -> torch.nn.Module:
        key = stable_hash([name, cfg])
        if key not in self._models:
            self._models[key] = build_model(name, cfg, self.device)
        return self._models[key]

    def dataset(self, cfg: Mapping[str, Any]) -> Dataset:
        key = stable_hash(cfg)
        if key not in self._datasets:
            self._datasets[key] = build_dataset(cfg)
        return self._datasets[key]

    def perturbation(self, name: str, cfg: Mapping[str, Any]) -> Perturbation:
        key = stable_hash([name, cfg])
        if key not in self._perts:
            self._perts[key] = build_perturbation(name, cfg)
        return self._perts[key]

    def surrogates(self, pert: Perturbation) -> dict[str, torch.nn.Module]:
        """The models ``pert`` attacks besides the sweep's (a transfer attack's source), built like any model:
        the same loader, the same cache (a source equal to the target is the same object)."""
        return {name: self.model(name, cfg) for name, cfg in pert.surrogates.items()}
