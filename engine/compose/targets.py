"""What a config's ``_target_`` may name: an allow-list of modules, and the kind of object it must build.

Config files are trusted input like code (docs/reliability.md), but the ordinary
path stays safe: a ``_target_`` outside Gauntlet, torchvision, timm and the packages
listed in ``target_packages`` is refused unless ``allow_any_target: true``, and a
class is checked to be the right kind *before* it is called with config data.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hydra.utils import get_object

from engine.errors import ConfigError

ALLOWED_MODULES = ("engine", "kernels", "torchvision", "timm", "robustbench")


def iter_targets(node: Any, key: str) -> Iterator[tuple[str, str]]:
    """Every (config key, ``_target_`` string) inside ``node``, nested ones included."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield key, str(node["_target_"])
        for k, v in node.items():
            if k != "_target_":
                yield from iter_targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from iter_targets(v, f"{key}[{i}]")


def check_allowed(target: str, key: str, packages: Sequence[str] = (), allow_any: bool = False) -> None:
    """Refuse a ``_target_`` whose top-level package is not allowed (without importing it)."""
    if allow_any:
        return
    allowed = (*ALLOWED_MODULES, *packages)
    root = target.split(".")[0]
    if root not in allowed:
        raise ConfigError(
            f"{key}._target_={target!r} is outside the modules configs may call ({', '.join(allowed)}). "
            f"If you trust it, add its package: target_packages=[{root}] (or allow_any_target=true)"
        )


def check_kind(target: str, key: str, expected: type | tuple[type, ...], what: str) -> None:
    """A class ``_target_`` must be a subclass of ``expected``; a function is a factory checked on return."""
    try:
        obj = get_object(target)
    except Exception as exc:
        raise ConfigError(f"{key}._target_={target!r} cannot be imported ({exc})") from None
    if isinstance(obj, type):
        if not issubclass(obj, expected):
            raise ConfigError(f"{key}._target_={target!r} is a {obj.__name__}, not {what}")
    elif not callable(obj):
        raise ConfigError(f"{key}._target_={target!r} is not callable; it must name {what} or a factory of one")
