"""Read and validate a claim file (docs/claims.md) into plain frozen values, before anything is computed.

Every mistake is one ``ConfigError`` naming the key and the fix: a misspelt key
(with the closest valid one), an unknown model/dataset/corruption suite (listing
the valid ones), ε in the wrong units (``eps: 8`` for L∞ in [0, 1] pixels), an
accuracy written as a percent.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.compose import strict_yaml
from engine.compose.config import CONFIG_DIR, group_options
from engine.compose.targets import DOTTED_NAME, POLICY_KEYS, iter_targets
from engine.errors import ConfigError
from engine.remote.model import remote_settings

TOP_KEYS = ("model", "dataset", "n_examples", "subset", "claims", "defence", "resolution", "tolerance", "title",
            "source")
CLAIM_KEYS = ("threat_model", "claimed_accuracy", "clean_accuracy", "source", "name")
THREAT_KEYS = ("norm", "eps", "corruptions")
SUBSET_KEYS = ("mode", "n", "seed")
DEFENCE_KEYS = ("non_differentiable", "randomised")
NORMS = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l∞": "linf", "l2": "l2", "l_2": "l2"}
MAX_L2_EPS = 16.0  # an L2 radius above this in [0, 1] pixels is almost surely in 0-255 units
DEFAULT_RESOLUTION = 0.10
DEFAULT_TOLERANCE = 0.02  # engine.claims.decide.TOLERANCE
INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
CLAIM_INTERPOLATIONS = ("cache_dir",)  # the only ${…} an inline block may use


@dataclass(frozen=True)
class Claim:
    """One line of a vendor's datasheet: accuracy under a threat model (a norm ball or a corruption suite)."""

    index: int
    claimed_accuracy: float
    norm: str | None = None  # linf | l2 for an adversarial claim
    eps: float | None = None
    eps_text: str | None = None  # as written ("8/255")
    corruptions: str | None = None  # a corruption suite / perturbation config name
    clean_accuracy: float | None = None
    source: str | None = None
    name: str | None = None

    @property
    def adversarial(self) -> bool:
        return self.norm is not None

    def label(self) -> str:
        if self.adversarial:
            return f"{'L∞' if self.norm == 'linf' else 'L2'} ε={self.eps_text}"
        return f"corruptions {self.corruptions}"


@dataclass(frozen=True)
class ClaimFile:
    """A whole claim file, validated: what to load, how many samples, and the claims."""

    path: str
    model_name: str
    model: str | dict[str, Any]  # a config name, or an inline block shaped like configs/model/*.yaml
    dataset: str | dict[str, Any]
    n_examples: int | None
    subset: dict[str, Any] | None
    claims: tuple[Claim, ...]
    non_differentiable: str | None = None  # dotted path (inside model.arch) of the module after a pre-processing
    randomised: bool = False
    resolution: float = DEFAULT_RESOLUTION
    title: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE  # how far above the measured accuracy an adversarial claim may sit


def _where(path: str, key: str) -> str:
    return f"{path}: {key}"


def _check_keys(where: str, got: Mapping[str, Any], valid: Sequence[str]) -> None:
    for key in got:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}; {hint}valid keys: {', '.join(valid)}")


def parse_fraction(where: str, value: Any) -> float:
    """An accuracy in [0, 1]; a value above 1 is refused as a percent mistake."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}={value!r} must be a number in [0, 1] (a fraction: 0.85 for 85 %)")
    if value > 1:
        raise ConfigError(f"{where}={value!r} is above 1: accuracies are fractions; "
                          f"write {value / 100:g} for {value:g} %")
    if value < 0:
        raise ConfigError(f"{where}={value!r} is negative; an accuracy is a fraction in [0, 1]")
    return float(value)


def parse_eps(where: str, value: Any, norm: str) -> tuple[float, str]:
    """ε as a number or a fraction string ("8/255") in [0, 1] pixel units; returns (value, text as written)."""
    text = str(value).strip()
    if isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} is not a number; write e.g. 8/255 or 0.031")
    if isinstance(value, (int, float)):
        eps = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*", text)
        try:
            eps = float(m.group(1)) / float(m.group(2)) if m else float(text)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{where}={value!r} is not a number or a fraction like 8/255") from None
    if not math.isfinite(eps) or eps <= 0:
        raise ConfigError(f"{where}={value!r}: ε must be a finite radius > 0")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"{where}={value!r} is outside [0, 1]: ε is in pixel units ([0, 1] scale), "
                          f"not 0-255; write {eps:g}/255 (= {eps / 255:.6g}) if that is what the vendor means")
    if norm == "l2" and eps > MAX_L2_EPS:
        raise ConfigError(f"{where}={value!r}: an L2 radius this large looks like 0-255 units; ε is in [0, 1] "
                          f"pixel units (write {eps:g}/255 = {eps / 255:.6g} if that is meant)")
    return eps, text


def _parse_claim(path: str, i: int, raw: Any, corruption_names: Sequence[str]) -> Claim:
    where = _where(path, f"claims[{i}]")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(CLAIM_KEYS)}")
    _check_keys(where, raw, CLAIM_KEYS)
    for key in ("threat_model", "claimed_accuracy"):
        if key not in raw:
            raise ConfigError(f"{where}: missing key {key!r}")
    tm = raw["threat_model"]
    if not isinstance(tm, Mapping):
        raise ConfigError(f"{where}.threat_model must be a mapping: {{norm: linf, eps: 8/255}} "
                          f"or {{corruptions: cifar10_c}}")
    _check_keys(f"{where}.threat_model", tm, THREAT_KEYS)
    common: dict[str, Any] = {
        "index": i, "claimed_accuracy": parse_fraction(f"{where}.claimed_accuracy", raw["claimed_accuracy"]),
        "clean_accuracy": None if raw.get("clean_accuracy") is None
        else parse_fraction(f"{where}.clean_accuracy", raw["clean_accuracy"]),
        "source": None if raw.get("source") is None else str(raw["source"]),
        "name": None if raw.get("name") is None else str(raw["name"]),
    }
    if "corruptions" in tm:
        if set(tm) != {"corruptions"}:
            raise ConfigError(f"{where}.threat_model: a corruption claim has only the key 'corruptions'")
        suite = str(tm["corruptions"])
        if suite not in corruption_names:
            raise ConfigError(f"{where}.threat_model.corruptions={suite!r} is not a corruption suite or "
                              f"corruption; valid: {', '.join(corruption_names)}")
        return Claim(corruptions=suite, **common)
    for key in ("norm", "eps"):
        if key not in tm:
            raise ConfigError(f"{where}.threat_model: missing key {key!r} (e.g. {{norm: linf, eps: 8/255}})")
    norm = NORMS.get(str(tm["norm"]).strip().lower())
    if norm is None:
        raise ConfigError(f"{where}.threat_model.norm={tm['norm']!r}; valid norms: linf, l2")
    eps, text = parse_eps(f"{where}.threat_model.eps", tm["eps"], norm)
    return Claim(norm=norm, eps=eps, eps_text=text, **common)


def corruption_choices(config_dir: str = CONFIG_DIR) -> list[str]:
    """Perturbation configs that are corruptions or suites of them (their files are read, nothing is built)."""
    out = []
    for p in sorted(Path(config_dir, "perturbation").glob("*.yaml")):
        doc = yaml.safe_load(p.read_text()) or {}
        target = str(doc.get("_target_", ""))
        if ".corruptions." in target or ("defaults" in doc and "_target_" not in doc):
            out.append(p.stem)
    return out


def _named_or_inline(path: str, key: str, value: Any, choices: Sequence[str]) -> str | dict[str, Any]:
    if isinstance(value, str):
        if value not in choices:
            raise ConfigError(f"{path}: unknown {key} {value!r}; valid choices: {', '.join(choices)} "
                              f"(or an inline block shaped like configs/{key}/*.yaml)")
        return value
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    raise ConfigError(f"{path}: {key} must be a config name ({', '.join(choices)}) or an inline block")


def _check_inline(path: str, key: str, block: Any) -> None:
    """An inline block names its code by dotted ``_target_`` strings and interpolates only ``${cache_dir}``.

    Whether those targets may be called is decided with the user's policy when the sweep is composed
    (engine.claims.build → engine.planning.sweep_targets), before anything is built.
    """
    for where, node in iter_targets(block, key):
        target = node["_target_"]
        if not isinstance(target, str) or not DOTTED_NAME.fullmatch(target):
            raise ConfigError(f"{path}: {where}._target_={target!r} must be a dotted Python name "
                              "(e.g. engine.models.cnn.SmallCNN)")
    stack: list[tuple[str, Any]] = [(key, block)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, Mapping):
            for k, v in value.items():
                if str(k) in POLICY_KEYS:
                    raise _policy_key(path, f"{where}.{k}")
                stack.append((f"{where}.{k}", v))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str):
            for name in INTERPOLATION.findall(value):
                if name.strip() not in CLAIM_INTERPOLATIONS:
                    raise ConfigError(f"{path}: {where}={value!r}: a claim file may interpolate only "
                                      f"${{cache_dir}}, not ${{{name}}}")


def _policy_key(path: str, where: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: a claim file cannot widen the _target_ policy; only you can, on the "
                       "command line (gauntlet verify FILE target_packages=[pkg], or allow_any_target=true "
                       "to let it call any importable callable) — docs/claims.md")


def _inline_model(path: str, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from engine.compose.config import ModelConfig

    valid = ["name", *ModelConfig.__dataclass_fields__]
    _check_keys(f"{path}: model", block, valid)
    name = str(block.pop("name", "model"))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"{path}: model.name={name!r} must be an identifier (letters, digits, _)")
    if block.get("remote") is not None:  # a deployed model: its contract instead of arch and checkpoint
        remote_settings(name, block)  # unknown or missing contract keys fail here, naming the key
        _check_inline(path, "model", block)
        return name, block
    for key in ("arch", "checkpoint"):
        if key not in block:
            raise ConfigError(f"{path}: the inline model block needs {key!r} (see configs/model/*.yaml)")
    if not isinstance(block["arch"], Mapping) or "_target_" not in block["arch"]:
        raise ConfigError(f"{path}: model.arch must be a mapping with a _target_ (the architecture's constructor)")
    _check_inline(path, "model", block)
    return name, block


def _sample_count(path: str, doc: Mapping[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
    if doc.get("n_examples") is not None and doc.get("subset") is not None:
        raise ConfigError(f"{path}: give n_examples or subset, not both")
    n = doc.get("n_examples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"{path}: n_examples={n!r} must be a positive integer")
    sub = doc.get("subset")
    if sub is None:
        return n, None
    if not isinstance(sub, Mapping):
        raise ConfigError(f"{path}: subset must be a mapping like {{mode: random, n: 1000, seed: 0}}")
    _check_keys(f"{path}: subset", sub, SUBSET_KEYS)
    mode, k, seed = sub.get("mode", "random"), sub.get("n"), sub.get("seed", 0)
    if mode not in ("random", "first"):
        raise ConfigError(f"{path}: subset.mode={mode!r}; valid modes: random, first")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{path}: subset.n={k!r} must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{path}: subset.seed={seed!r} must be an integer")
    return None, {"mode": mode, "n": k, "seed": seed}


def _defence(path: str, raw: Any) -> tuple[str | None, bool]:
    if raw is None:
        return None, False
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: defence must be a mapping with keys {', '.join(DEFENCE_KEYS)}")
    _check_keys(f"{path}: defence", raw, DEFENCE_KEYS)
    nd = raw.get("non_differentiable")
    if nd is not None and not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", str(nd)):
        raise ConfigError(f"{path}: defence.non_differentiable={nd!r} must be a dotted module path inside "
                          "model.arch (the module that receives the pre-processed input), e.g. net")
    rnd = raw.get("randomised", False)
    if not isinstance(rnd, bool):
        raise ConfigError(f"{path}: defence.randomised={rnd!r} must be true or false")
    return (None if nd is None else str(nd)), rnd


def parse_claim_file(path: str, doc: Any, config_dir: str = CONFIG_DIR) -> ClaimFile:
    """Validate a loaded claim document; ``ConfigError`` names the first mistake and its fix."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{path}: a claim file is a mapping with keys model, dataset, claims (docs/claims.md)")
    for key in POLICY_KEYS:
        if key in doc:
            raise _policy_key(path, key)
    _check_keys(path, doc, TOP_KEYS)
    for key in ("model", "dataset", "claims"):
        if key not in doc:
            raise ConfigError(f"{path}: missing key {key!r} (docs/claims.md)")
    options = group_options([Path(config_dir)])
    model = _named_or_inline(path, "model", doc["model"], options.get("model", []))
    if isinstance(model, dict):
        model_name, model = _inline_model(path, model)
    else:
        model_name = model
    dataset = _named_or_inline(path, "dataset", doc["dataset"], options.get("dataset", []))
    if isinstance(dataset, dict):
        if "_target_" not in dataset:
            raise ConfigError(f"{path}: the inline dataset block needs a _target_ (see configs/dataset/*.yaml)")
        _check_inline(path, "dataset", dataset)
    n, subset = _sample_count(path, doc)
    raw_claims = doc["claims"]
    if not isinstance(raw_claims, Sequence) or isinstance(raw_claims, str) or not raw_claims:
        raise ConfigError(f"{path}: claims must be a non-empty list (docs/claims.md)")
    corr = corruption_choices(config_dir)
    claims = tuple(_parse_claim(path, i, c, corr) for i, c in enumerate(raw_claims))
    nd, rnd = _defence(path, doc.get("defence"))
    res = doc.get("resolution", DEFAULT_RESOLUTION)
    if isinstance(res, bool) or not isinstance(res, (int, float)) or not 0 < res < 1:
        raise ConfigError(f"{path}: resolution={res!r} must be a fraction in (0, 1), e.g. 0.1 for 10 points")
    tol = doc.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 0.5:
        raise ConfigError(f"{path}: tolerance={tol!r} must be a fraction in [0, 0.5), e.g. 0.02 for 2 points")
    return ClaimFile(path, model_name, model, dataset, n, subset, claims, nd, rnd, float(res),
                     None if doc.get("title") is None else str(doc["title"]),
                     {"source": doc["source"]} if doc.get("source") is not None else {}, float(tol))


def load_claim_file(path: str | Path, config_dir: str = CONFIG_DIR) -> ClaimFile:
    """Read ``path`` strictly (engine.compose.strict_yaml: bounded, no duplicate keys, no code) and validate it."""
    doc = strict_yaml.load_file(path, what="claim file")
    return parse_claim_file(str(Path(path)), doc, config_dir)
