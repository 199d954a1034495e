"""Build the network a model config names: ``arch._target_`` (Gauntlet, torchvision, …), timm, RobustBench.

Nothing here downloads weights: ``pretrained: true`` / torchvision ``weights=`` are refused, because
weights come only from the config's local ``checkpoint``. :func:`instantiate_arch` is the one place
an ``arch._target_`` is instantiated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from engine.errors import ConfigError, GauntletError

DOWNLOAD_KEYS = ("pretrained", "weights", "weights_backbone", "pretrained_cfg_overlay", "pretrained_backbone")


def _refuse_downloads(name: str, arch: Mapping[str, Any]) -> None:
    for key in DOWNLOAD_KEYS:
        value = arch.get(key)
        if value not in (None, False, "", "none", "None"):
            raise ConfigError(
                f"model.{name}.arch.{key}={value!r} would fetch weights from the network; Gauntlet never downloads. "
                f"Remove it (or set it to null/false) and give the weights as a local file in model.{name}.checkpoint"
            )


def instantiate_arch(name: str, arch: Mapping[str, Any]) -> nn.Module:
    """``arch`` (a ``_target_`` plus its arguments) → an ``nn.Module``, or one ConfigError naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not isinstance(arch, Mapping) or not arch.get("_target_"):
        raise ConfigError(f"model.{name}.arch needs a _target_ (e.g. torchvision.models.resnet50)")
    _refuse_downloads(name, arch)
    try:
        net = instantiate(dict(arch), _convert_="all")
    except InstantiationException as exc:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, GauntletError):
                raise ConfigError(f"model.{name}.arch: {cause}") from None
            cause = cause.__cause__
        raise ConfigError(f"model.{name}.arch cannot be built: {exc}") from None
    except Exception as exc:  # errors raised before Hydra wraps them
        raise ConfigError(f"model.{name}.arch cannot be built: {exc}") from None
    if not isinstance(net, nn.Module):
        target = arch["_target_"]
        raise ConfigError(f"model.{name}.arch._target_={target!r} built a {type(net).__name__}, not an nn.Module")
    return net


def timm_model(model_name: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, pretrained=False, …)``: any timm architecture by name, never fetched."""
    import timm

    if kwargs.get("pretrained"):
        raise ConfigError("arch.pretrained=true would download weights; give them as model.<name>.checkpoint")
    kwargs.pop("pretrained", None)
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('_')[0]}*")[:10]
        raise ConfigError(f"arch.model_name={model_name!r} is not a timm model; similar: {', '.join(close) or 'none'}")
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _import_robustbench_zoo() -> Any:
    """``robustbench.model_zoo`` without running ``robustbench/__init__``.

    robustbench 1.1.1's top-level package imports its data, evaluation and download code, which needs
    ``pkg_resources`` (gone from setuptools ≥ 81), ``pandas`` and a module named ``autoattack`` that its
    declared dependency ``pyautoattack`` does not provide; the zoo itself needs none of them.
    """
    import importlib
    import importlib.util
    import sys
    import types

    if "robustbench" not in sys.modules:
        spec = importlib.util.find_spec("robustbench")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("No module named 'robustbench'")
        stub = types.ModuleType("robustbench")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["robustbench"] = stub
    return importlib.import_module("robustbench.model_zoo")


def robustbench_model(model_name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> nn.Module:
    """The architecture of a RobustBench zoo entry (weights come from ``checkpoint``; nothing is downloaded).

    Needs the optional ``robustbench`` extra (``pip install 'gauntlet[robustbench]'``).
    """
    try:
        zoo = _import_robustbench_zoo()
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as exc:
        raise ConfigError(
            f"arch uses RobustBench's zoo but robustbench is not importable ({exc}); install the optional extra: "
            "pip install 'gauntlet[robustbench]' (it pins timm==1.0.9)"
        ) from None
    model_dicts = zoo.model_dicts
    try:
        ds, tm = BenchmarkDataset(dataset), ThreatModel(threat_model)
    except ValueError as exc:
        raise ConfigError(
            f"arch: {exc}; dataset is cifar10|cifar100|imagenet, threat_model Linf|L2|corruptions"
        ) from None
    entries = model_dicts[ds][tm]
    if model_name not in entries:
        raise ConfigError(
            f"arch.model_name={model_name!r} is not a RobustBench {dataset}/{threat_model} entry; "
            f"e.g. {', '.join(list(entries)[:8])}"
        )
    return entries[model_name]["model"]()
