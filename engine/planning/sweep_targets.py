"""The sweep's ``_target_`` checks before anything is built: every target resolved and checked at its place.

The policy itself (resolution, allowed modules, known loaders, arguments) lives in
``engine.compose.targets``; the kinds it checks against (``nn.Module``, ``Perturbation``, a suite
member, a dataset, a runner) are component classes, so the sweep-wide check sits here, above the
components, and the compose stage stays below them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from engine.compose.targets import Kind, TargetPolicy, check_target, iter_targets
from engine.data import LazyDataset, SampleSet
from engine.perturbations.base import Perturbation
from engine.perturbations.suite import SuiteMember


def _is_dataset(cls: type) -> bool:
    """engine.data.Dataset is a protocol with properties (no issubclass): its bases, or its methods."""
    if issubclass(cls, (SampleSet, LazyDataset)):
        return True
    return all(callable(getattr(cls, m, None)) for m in ("slice", "take", "__len__"))


def _is_runner(cls: type) -> bool:
    """engine.runners.base.Runner is a protocol with one method: ``run``."""
    return callable(getattr(cls, "run", None))


MODEL = Kind("an nn.Module", lambda c: issubclass(c, nn.Module), models=True)
PERTURBATION = Kind("a Perturbation", lambda c: issubclass(c, Perturbation))
DATASET = Kind("a dataset (engine.data.Dataset)", _is_dataset)
RUNNER = Kind("a runner", _is_runner)
ANY = Kind("a model, dataset, perturbation, suite member or runner",
           lambda c: any(k.accepts(c) for k in (MODEL, PERTURBATION, DATASET, RUNNER))
           or issubclass(c, SuiteMember), models=True)


def _kind_at(key: str, cfg: Mapping[str, Any]) -> Kind:
    """The kind a ``_target_`` at ``key`` must build: top-level places by name, nested ones any component."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "model" and parts[2] == "arch" and parts[1] in (cfg.get("model") or {}):
        return MODEL
    if len(parts) == 4 and parts[0] == "perturbation" and parts[2:] == ["source_model", "arch"]:
        return MODEL  # a transfer attack's source model (engine/perturbations/transfer.py)
    if len(parts) == 2 and parts[0] == "perturbation":
        return PERTURBATION
    if key == "dataset":
        return DATASET
    if key == "runner":
        return RUNNER
    return ANY


def check_targets(cfg: Mapping[str, Any], policy: TargetPolicy) -> None:
    """Check every ``_target_`` inside ``cfg`` (a sweep config, or part of one shaped like it) at its place."""
    for key, node in iter_targets({k: v for k, v in cfg.items() if k != "hydra"}, ""):
        check_target(node, key, policy, _kind_at(key, cfg))


def check_sweep_targets(cfg: Mapping[str, Any]) -> None:
    """Check every ``_target_`` of the sweep against the user's policy, each at its place."""
    check_targets(cfg, TargetPolicy.of(cfg))
