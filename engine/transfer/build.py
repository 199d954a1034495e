"""Compose the transfer sweep: the labelled models, ``clean``, the white-box attack, and one transfer attack per
source model (engine/perturbations/transfer.py), as an ordinary sweep config for ``engine.sweep.run_sweep``.

Every model is a target of every perturbation, so the sweep also holds each model's transfer from itself: the
matrix's diagonal is read from the white-box rows, and those self-transfer rows must equal them exactly.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from engine.compose.config import (
    CONFIG_DIR,
    compose_sweep,
    package_problems,
    shadowed_configs,
    unknown_choices,
    yaml_problems,
)
from engine.compose.levels import normalize_levels
from engine.compose.targets import config_dir_problems
from engine.errors import ConfigError
from engine.perturbations.transfer import TRANSFER_TAGS

TRANSFER_TARGET = "engine.perturbations.transfer.Transfer"
PREFIX = "transfer_from_"
LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
DECIDED = ("model", "perturbation", "out_dir")  # what the command decides: refused as overrides


@dataclass(frozen=True)
class TransferSpec:
    """What ``gauntlet transfer`` was asked: labels → model config names (in order), the attack, the folder."""

    models: tuple[tuple[str, str], ...]  # (label, config name)
    attack: str
    out_dir: str
    overrides: tuple[str, ...] = ()
    config_dirs: tuple[str, ...] = ()
    eps: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.models]

    def perturbation_of(self, source: str) -> str:
        """The sweep's name for the transfer attack crafted on ``source``."""
        return f"{PREFIX}{source}"


def parse_models(given: Sequence[str], labels: Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    """``[LABEL=]CONFIG`` entries (or ``--label`` per entry) → (label, config) pairs; repeats refused by name."""
    if labels is not None and len(labels) != len(given):
        raise ConfigError(f"{len(labels)} --label value(s) for {len(given)} model(s); give one label per model")
    pairs = []
    for i, entry in enumerate(given):
        label, eq, name = entry.partition("=")
        if not eq:
            label, name = entry, entry
        if labels is not None:
            label = labels[i]
        for what, text in (("label", label), ("model config", name)):
            if not LABEL.fullmatch(text):
                raise ConfigError(f"{what} {text!r} (from {entry!r}) is not a name: letters, digits, _ and -")
        pairs.append((label, name))
    if len(pairs) < 2:
        raise ConfigError("a transfer matrix needs at least two models: --models A B [C …]")
    for i, what in ((0, "label"), (1, "model config")):
        seen: dict[str, str] = {}
        for pair in pairs:
            if pair[i] in seen:
                raise ConfigError(f"{what} {pair[i]!r} is given twice ({seen[pair[i]]} and {'='.join(pair)}); "
                                  "each model once, each under its own label")
            seen[pair[i]] = "=".join(pair)
    return tuple(pairs)


def _check_overrides(overrides: Sequence[str]) -> None:
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~")
        if "=" not in o or o.startswith("-"):
            raise ConfigError(f"argument {o!r} is not key=value (Hydra overrides: dataset=…, n_examples=…, …)")
        if key.split(".")[0] in DECIDED and not key.startswith(("model.", "perturbation.")):
            raise ConfigError(f"override {o!r}: the command decides {key} (use --models, --attack, --out)")


def precheck(spec: TransferSpec) -> None:
    """What ``gauntlet`` checks before Hydra: YAML, ``# @package`` headers, group choices, the users' folders."""
    _check_overrides(spec.overrides)
    user = [Path(d).expanduser() for d in spec.config_dirs]
    for d in user:
        if not d.is_dir():
            raise ConfigError(f"--config-dir {d}: not a folder")
    shadowed = shadowed_configs(user)  # Hydra would silently take the first folder's: one name, two checkpoints
    if shadowed:
        raise ConfigError("; ".join(shadowed))
    dirs = [Path(CONFIG_DIR), *user]
    problems = yaml_problems(dirs) or (package_problems(dirs) + config_dir_problems(user) + unknown_choices(
        [_models_override(spec), f"perturbation=[clean,{spec.attack}]", *spec.overrides], dirs))
    if problems:
        raise ConfigError("; ".join(problems))


def quote_tilde(arg: str) -> str:
    """``key=~/x`` (the shell left ``~`` alone) → ``key="~/x"``: Hydra's grammar refuses a bare ``~`` (as gauntlet)."""
    key, eq, value = arg.partition("=")
    if eq and (value == "~" or value.startswith("~/")) and '"' not in value:
        return f'{key}="{value}"'
    return arg


def _models_override(spec: TransferSpec) -> str:
    return f"model=[{','.join(dict.fromkeys(name for _, name in spec.models))}]"


def compose_transfer(spec: TransferSpec) -> dict[str, Any]:
    """The sweep config: models under their labels, ``clean``, the attack, one transfer attack per source."""
    precheck(spec)
    paths = ",".join(f"file://{Path(d).expanduser().resolve()}" for d in spec.config_dirs)
    search = [f"hydra.searchpath=[{paths}]"]
    eps = [f"perturbation.{spec.attack}.eps=[{','.join(spec.eps)}]"] if spec.eps else []
    overrides = [*(search if spec.config_dirs else []), _models_override(spec),
                 f"perturbation=[clean,{spec.attack}]", quote_tilde(f"out_dir={spec.out_dir}"),
                 *map(quote_tilde, spec.overrides), *eps]
    try:
        cfg = compose_sweep(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"the transfer sweep cannot be composed: {first}") from None
    composed = cfg["model"]
    missing = [name for _, name in spec.models if name not in composed]
    if missing or len(composed) != len(spec.models):
        raise ConfigError(f"model config(s) {missing or sorted(composed)} did not compose under their own names "
                          f"(got {sorted(composed)}); each model file must declare '# @package model.<its name>'")
    cfg["model"] = {label: copy.deepcopy(composed[name]) for label, name in spec.models}
    cfg["perturbation"] = _perturbations(spec, cfg)
    return cfg


def _perturbations(spec: TransferSpec, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``clean``, the white-box attack and its transfer from every model, the attack's levels normalised once."""
    perts, _ = normalize_levels(cfg["perturbation"])
    attack = perts.get(spec.attack)
    if not isinstance(attack, Mapping) or "eps" not in attack:
        raise ConfigError(f"--attack {spec.attack}: not an attack with an ε list (e.g. apgd_ce_linf, pgd_linf, "
                          "autoattack_standard_linf)")
    if str(attack.get("_target_")) == TRANSFER_TARGET:
        raise ConfigError(f"--attack {spec.attack} is itself a transfer attack; name a white-box attack")
    out = {"clean": perts["clean"], spec.attack: attack}
    for label in spec.labels:
        name = spec.perturbation_of(label)
        if name in out:
            raise ConfigError(f"the transfer attack from {label!r} would be named {name!r}, like another "
                              "perturbation of this sweep; rename the model's label")
        # the inner attack under its white-box name: the same seeds as the white-box rows
        out[name] = {"_target_": TRANSFER_TARGET, "source": label, "source_model": copy.deepcopy(cfg["model"][label]),
                     "attack": {**copy.deepcopy(attack), "name": spec.attack}, "tags": list(TRANSFER_TAGS)}
    return out
