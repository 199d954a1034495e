"""Structured-config schemas: Hydra checks every composed sweep against these types before any compute."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class TrainConfig:
    """Recipe for an embedded checkpoint that is trained on first use."""

    epochs: int = 15
    lr: float = 1e-3
    batch_size: int = 64
    adv_eps: float = 0.0  # > 0: PGD adversarial training in L∞ at this ε
    adv_steps: int = 0
    seed: int = 0


@dataclass
class ModelConfig:
    """A classifier: architecture (``_target_``), input normalisation, checkpoint file."""

    arch: Any = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    checkpoint: str = "???"
    sha256: Optional[str] = None  # noqa: UP045 (OmegaConf needs typing.Optional)
    train: Optional[TrainConfig] = None  # noqa: UP045
    memory_format: str = "contiguous"  # or channels_last: faster convolutions for some models (docs/BENCHMARKS.md)
    # checkpoint options (docs/models-and-data.md)
    format: str = "auto"  # auto (by suffix) | safetensors | torch | torchscript
    state_key: Optional[str] = None  # noqa: UP045  dotted key of the weights in a nested torch file
    strip_prefix: Optional[str] = None  # noqa: UP045  null = strip "module." when every key has it
    strict: bool = True
    train_if_missing: Optional[bool] = None  # noqa: UP045  null = only at the embedded default location


@dataclass
class SweepConfig:
    """The primary config (``configs/sweep.yaml``)."""

    model: dict[str, ModelConfig] = field(default_factory=dict)
    dataset: Any = None
    perturbation: dict[str, Any] = field(default_factory=dict)
    runner: Any = None
    seed: int = 0
    n_examples: int = 200
    batch_size: int = 100
    device: str = "auto"
    out_dir: str = "runs/default"
    shard_size: Optional[int] = None  # noqa: UP045
    cache_dir: str = "~/.cache/gauntlet"
    progress: bool = True
    corruption_baseline: Optional[str] = None  # noqa: UP045


CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def register_schemas() -> None:
    """Make ``sweep_schema`` available to the defaults list of ``sweep.yaml``."""
    ConfigStore.instance().store(name="sweep_schema", node=SweepConfig)


def compose_sweep(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Compose ``configs/sweep.yaml`` with Hydra overrides, resolved to a plain dict (for scripts and tests)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_schemas()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("sweep", overrides=list(overrides))
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def group_options(config_dirs: list[Path]) -> dict[str, list[str]]:
    """Config groups (sub-folders) and their option names across ``config_dirs``."""
    groups: dict[str, set[str]] = {}
    for root in config_dirs:
        for sub in root.iterdir() if root.is_dir() else ():
            if sub.is_dir():
                groups.setdefault(sub.name, set()).update(p.stem for p in sub.glob("*.yaml"))
    return {g: sorted(opts) for g, opts in groups.items()}


def unknown_choices(argv: list[str], config_dirs: list[Path]) -> list[str]:
    """Messages for group overrides naming options that do not exist, each listing the valid ones.

    Hydra reports a missing option of a *list* selection ('model=[a,b]') without
    the list of valid options; this check runs first so the user always sees them.
    """
    dirs = list(config_dirs)
    for flag, value in itertools.pairwise(argv):
        if flag in ("--config-dir", "-cd"):
            dirs.append(Path(value))
    options = group_options(dirs)
    problems = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key not in options or "(" in value or "$" in value:
            continue
        for choice in value.strip("[]").split(","):
            choice = choice.strip()
            if choice and choice != "null" and choice not in options[key]:
                problems.append(f"unknown {key} {choice!r}; valid choices: {', '.join(options[key])}")
    return problems
