"""``gauntlet extract`` settings: ``key=value`` arguments read into one checked, frozen value."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import ConfigError

# What the target answers, as the attacker receives it: ``label`` (top-1 only), ``probs`` (the full probability
# vector), ``probs:N`` (probabilities rounded to N decimals), ``logits``.
CONTRACT = re.compile(r"^(label|probs|logits)(?::(\d))?$")
# Where things live: data folders, a checkpoint file, a remote target's endpoint keys (model.<name>.remote.url=…)
LOCATION = re.compile(r"^(dataset\.(root|path)|queries\.(root|path)|model\.[A-Za-z_]\w*\.(checkpoint|remote\.\w+))$")
FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")
INT_KEYS = ("seed", "n_test", "train_steps", "batch_size", "attack_steps")
FLOAT_KEYS = ("eps", "lr")
TEXT_KEYS = ("target", "copy", "dataset", "queries", "out_dir", "device")


@dataclass(frozen=True)
class Contract:
    """One answer format: ``output`` and, for rounded probabilities, the decimals kept."""

    output: str
    decimals: int | None = None

    @property
    def label(self) -> str:
        return self.output if self.decimals is None else f"{self.output}:{self.decimals}"


def parse_contract(text: str) -> Contract:
    m = CONTRACT.match(text.strip())
    if not m:
        raise ConfigError(f"output={text!r}: use label, probs, probs:N (rounded to N decimals, N ≤ 9) or logits")
    if m.group(2) is not None and m.group(1) != "probs":
        raise ConfigError(f"output={text!r}: only probabilities can be rounded (probs:N)")
    return Contract(m.group(1), None if m.group(2) is None else int(m.group(2)))


@dataclass(frozen=True)
class ExtractSettings:
    """Everything a run depends on; all but ``budgets``, ``out_dir`` and ``device`` form its identity."""

    target: str
    out_dir: str
    budgets: tuple[int, ...]
    contracts: tuple[Contract, ...] = (Contract("label"),)
    copy: str = ""  # model config whose architecture the copy uses (default: the target's)
    dataset: str = "digits"  # the test split: fidelity, accuracy and transfer are measured on it
    queries: str = "train"  # train (the victim's distribution) | synthetic | a dataset config name
    eps: float = 0.1
    attack_steps: int = 20
    seed: int = 0
    n_test: int = 0  # 0: the whole test split
    train_steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    device: str = "cpu"
    locations: dict[str, str] = field(default_factory=dict)

    @property
    def copy_model(self) -> str:
        return self.copy or self.target

    def identity(self) -> dict[str, Any]:
        """The settings a finished budget's rows depend on (the contract is added per contract folder)."""
        out = asdict(self)
        # locations say where the data, weights and endpoint are; what they hold is in the identity (dataset
        # digests, the checkpoint's sha256, the remote contract's digest), so moving a file changes nothing
        for key in ("budgets", "out_dir", "device", "contracts", "locations"):
            out.pop(key)
        return out


def _int_list(key: str, text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[\s,]+", text.strip().strip("[]")) if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{key}={text!r}: give whole numbers, e.g. {key}=[250,500,1000,2000]") from None
    if not values:
        raise ConfigError(f"{key}= is empty: give at least one query budget, e.g. {key}=[250,500,1000]")
    if any(v < 1 for v in values):
        raise ConfigError(f"{key}={text!r}: every budget must be ≥ 1 query")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}={text!r}: a budget is repeated")
    return tuple(sorted(values))


def _contracts(text: str) -> tuple[Contract, ...]:
    parts = [p for p in re.split(r"[\s,]+", text.strip().strip("[]")) if p]
    found = tuple(parse_contract(p) for p in parts)
    if not found:
        raise ConfigError("output= is empty: give label, probs, probs:N or logits (or a list of them)")
    if len({c.label for c in found}) != len(found):
        raise ConfigError(f"output={text!r}: a contract is repeated")
    return found


def _number(key: str, text: str, kind: type) -> Any:
    m = FRACTION.match(text)
    if kind is float and m and float(m.group(2)) != 0:  # eps=8/255, as in the sweep's level lists
        return float(m.group(1)) / float(m.group(2))
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    return value


def parse_args(argv: Sequence[str]) -> ExtractSettings:
    """``key=value`` arguments → settings; one ConfigError naming the first bad argument."""
    raw: dict[str, Any] = {}
    locations: dict[str, str] = {}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or a.startswith("-"):
            raise ConfigError(f"argument {a!r} is not key=value (gauntlet extract --help)")
        if key in raw or key in locations:
            raise ConfigError(f"{key}= is given twice")
        if LOCATION.match(key):
            locations[key] = value
        elif key == "budgets":
            raw[key] = _int_list(key, value)
        elif key == "output":
            raw["contracts"] = _contracts(value)
        elif key in INT_KEYS:
            raw[key] = _number(key, value, int)
        elif key in FLOAT_KEYS:
            raw[key] = _number(key, value, float)
        elif key in TEXT_KEYS:
            raw[key] = value
        else:
            valid = ", ".join(sorted((*INT_KEYS, *FLOAT_KEYS, *TEXT_KEYS, "budgets", "output")))
            raise ConfigError(f"unknown key {key!r}; valid keys: {valid}, and locations dataset.root=…, "
                              "dataset.path=…, queries.root=…, queries.path=…, model.<name>.checkpoint=…, "
                              "model.<name>.remote.url=…")
    for key in ("target", "budgets", "out_dir"):
        if key not in raw:
            raise ConfigError(f"{key}= is required (gauntlet extract --help)")
    settings = ExtractSettings(locations=locations, **raw)
    check(settings)
    return settings


def check(s: ExtractSettings) -> None:
    """Values a run cannot start with, each named."""
    if not 0 < s.eps <= 1:
        raise ConfigError(f"eps={s.eps:g}: give ε in pixel units, 0 < ε ≤ 1 (e.g. 0.1, or 8/255 ≈ 0.0314)")
    for key in ("attack_steps", "train_steps", "batch_size"):
        if getattr(s, key) < 1:
            raise ConfigError(f"{key}={getattr(s, key)} must be ≥ 1")
    if s.n_test < 0:
        raise ConfigError(f"n_test={s.n_test} must be ≥ 0 (0: the whole test split)")
    if not s.lr > 0:
        raise ConfigError(f"lr={s.lr:g} must be > 0")
    if not str(s.out_dir).strip():
        raise ConfigError("out_dir= is empty; name a folder, e.g. out_dir=runs/extract/digits")
