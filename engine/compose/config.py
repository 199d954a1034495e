"""Structured-config schemas: Hydra checks every composed sweep against these types before any compute."""

from __future__ import annotations

import os
import re
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
    remote: Any = None  # a deployed model reached through its API (docs/remote-targets.md); no arch or checkpoint


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
    # ``_target_`` policy (docs/reliability.md): modules beyond Gauntlet's own, torchvision and timm
    # that configs may instantiate, or every importable callable when allow_any_target is true.
    target_packages: list[str] = field(default_factory=list)
    allow_any_target: bool = False
    wandb: Any = None  # configs/wandb/: mode offline | online | disabled (engine/sinks/wandb_sink.py)
    # adversarial examples beside the rows (docs/results.md): none | broken | all, at most cap per task
    save_examples: str = "none"
    save_examples_cap: int = 2000
    quantize: str = "none"  # none | uint8 | uint16: attack examples on the integer pixel grid (docs/attacks.md)


CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def register_schemas() -> None:
    """Make ``sweep_schema`` available to ``sweep.yaml``, and ``${gauntlet_expand:…}`` (``~`` in paths)."""
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="sweep_schema", node=SweepConfig)
    OmegaConf.register_new_resolver("gauntlet_expand", lambda p: os.path.expanduser(str(p)), replace=True)


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


def config_dirs_from_argv(argv: list[str]) -> list[Path]:
    """Folders added by ``--config-dir PATH``, ``--config-dir=PATH``, ``-cd PATH``, ``-cd=PATH`` and
    ``hydra.searchpath=[file://…,…]`` (``pkg://`` entries hold no user files and are skipped)."""
    dirs: list[Path] = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            if eq:
                dirs.append(Path(value).expanduser())
            elif i + 1 < len(argv):
                dirs.append(Path(argv[i + 1]).expanduser())
        elif flag.lstrip("+") == "hydra.searchpath" and eq:
            for entry in value.strip().strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if entry and not entry.startswith("pkg://"):
                    dirs.append(Path(entry.removeprefix("file://")).expanduser())
    return dirs


def unknown_choices(argv: list[str], config_dirs: list[Path]) -> list[str]:
    """Messages for group overrides naming options that do not exist, each listing the valid ones.

    Hydra reports a missing option of a *list* selection ('model=[a,b]') without
    the list of valid options; this check runs first so the user always sees them.
    """
    options = group_options([*config_dirs, *config_dirs_from_argv(argv)])
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


def shadowed_configs(user_dirs: list[Path]) -> list[str]:
    """Messages for a config file (``<group>/<name>.yaml``) found in more than one of the user's folders: Hydra
    silently takes the first folder's, so one name would mean two configs (two checkpoints, two datasets)."""
    seen: dict[str, list[str]] = {}
    for d in dict.fromkeys(Path(u).expanduser() for u in user_dirs):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*/*.yaml")) + sorted(d.glob("*/*.yml")):
            seen.setdefault(f"{f.parent.name}/{f.stem}", []).append(str(f))
    return [f"{key.split('/')[0]} config {key.split('/')[1]!r} is in {len(paths)} --config-dir folders "
            f"({', '.join(paths)}); only the first would be used. Rename one file (and its '# @package' line)"
            for key, paths in seen.items() if len(paths) > 1]


MULTI_GROUPS = ("model", "perturbation")  # groups selected as lists: each file is its own entry
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)\s*$")


def _declared_package(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            return None  # the header must come before any content
        m = _PACKAGE.match(line.strip())
        if m:
            return m.group(1)
    return None


def _only_defaults(path: Path) -> bool:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(doc, dict) and set(doc) == {"defaults"}


def package_problems(config_dirs: list[Path]) -> list[str]:
    """Each model/perturbation file must declare ``# @package <group>.<its file name>``.

    A copied file that still names another entry would otherwise silently replace it
    (``'model=[digits_cnn_at,my_model]'`` running one model under the wrong name).
    """
    problems = []
    for group in MULTI_GROUPS:
        files = [p for root in config_dirs for p in sorted((root / group).glob("*.yaml"))]
        owners = {p.stem: p for p in files}
        for path in files:
            want = f"{group}.{path.stem}"
            if _only_defaults(path):
                continue  # a suite: it selects other files of the group, each keeping its own header
            got = _declared_package(path)
            if got == want:
                continue
            if got is None:
                problems.append(f"{path} has no '# @package {want}' line; add it as the file's first line "
                                f"(each {group} file becomes its own entry, named after the file)")
                continue
            other = owners.get(got.removeprefix(f"{group}."))
            clash = f" — the entry of {other}" if other is not None and other != path else ""
            problems.append(f"{path} declares '# @package {got}'{clash}; as written it would replace that "
                            f"entry instead of adding {path.stem!r}. Change its first line to '# @package {want}'")
    return problems


def yaml_problems(config_dirs: list[Path]) -> list[str]:
    """Duplicate keys and YAML syntax errors in the config files (``<dir>/*.yaml``, ``<dir>/<group>/*.yaml``).

    OmegaConf refuses a duplicate key too, but with a traceback from inside Hydra; this names both
    lines in one message before Hydra runs.
    """
    from engine.compose.strict_yaml import config_yaml_problems

    files = [p for root in config_dirs if root.is_dir() for p in (*root.glob("*.yaml"), *root.glob("*/*.yaml"))]
    return [msg for path in sorted(set(files)) for msg in config_yaml_problems(path)]


def schema_problems(cfg: dict[str, Any]) -> list[str]:
    """Keys added with ``+key=value`` that no part of Gauntlet reads (top level and model entries)."""
    from dataclasses import fields

    top = {f.name for f in fields(SweepConfig)}
    model_keys = {f.name for f in fields(ModelConfig)}
    problems = [f"unknown key {k!r}; valid top-level keys: {', '.join(sorted(top))}" for k in cfg if k not in top]
    for name, mcfg in (cfg.get("model") or {}).items():
        extra = sorted(k for k in (mcfg or {}) if k not in model_keys)
        if extra:
            problems.append(f"model.{name}: unknown key(s) {extra}; valid keys: {', '.join(sorted(model_keys))}")
    return problems
