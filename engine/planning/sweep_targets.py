"""The sweep's ``_target_`` checks before anything is built: every target allow-listed, top-level ones kind-checked.

The policy itself (allow-list, kind check) lives in ``engine.compose.targets``; the kinds it is
checked against (``nn.Module``, ``Perturbation``) are component classes, so the sweep-wide check
sits here, above the components, and the compose stage stays below them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from engine.compose.targets import check_allowed, check_kind, iter_targets
from engine.perturbations.base import Perturbation


def check_sweep_targets(cfg: Mapping[str, Any]) -> None:
    """Allow-list every ``_target_`` of the sweep, and check the kind of each top-level one."""
    packages = [str(p) for p in cfg.get("target_packages") or ()]
    allow_any = bool(cfg.get("allow_any_target", False))
    for key, target in iter_targets({k: v for k, v in cfg.items() if k != "hydra"}, ""):
        check_allowed(target, key, packages, allow_any)
    for name, mcfg in (cfg.get("model") or {}).items():
        arch = (mcfg or {}).get("arch") or {}
        if isinstance(arch, Mapping) and "_target_" in arch:
            check_kind(str(arch["_target_"]), f"model.{name}.arch", nn.Module, "an nn.Module")
    for name, pcfg in (cfg.get("perturbation") or {}).items():
        if isinstance(pcfg, Mapping) and "_target_" in pcfg:
            check_kind(str(pcfg["_target_"]), f"perturbation.{name}", Perturbation, "a Perturbation")
    for key in ("dataset", "runner"):
        node = cfg.get(key)
        if isinstance(node, Mapping) and "_target_" in node:
            check_kind(str(node["_target_"]), key, object, f"a {key}")
