"""Turn a validated claim file into ordinary sweep configs, composed by Hydra from configs/ like any sweep.

The base sweep is ``clean`` + AutoAttack standard per norm at the claims' ε +
the claimed corruption suites; escalation sweeps reuse the base config with other
perturbations and the samples still robust (engine.claims.subset). Nothing here
runs a model: the configs go to engine.sweep.run_sweep (plan → evaluate →
verify → Parquet), the only path that produces a number in a verdict.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine.claims.schema import Claim, ClaimFile
from engine.compose.config import ModelConfig, compose_sweep
from engine.compose.targets import TargetPolicy, opt_ins_from_files
from engine.errors import ConfigError

BASE_SUITE = "autoattack_standard_{norm}"
# The base attacks of a black-box claim (threat_model.access), per norm: query-based, through the oracle.
QUERY_SUITES: dict[str, dict[str, tuple[str, ...]]] = {
    "label_only": {"linf": ("hopskipjump_linf", "rays_linf"), "l2": ("hopskipjump_l2",)},
    "score_based": {"linf": ("square_linf_remote",), "l2": ("square_l2_remote",)},
}


def query_perturbations(claims: Sequence[Claim]) -> dict[str, dict[str, Any]]:
    """Per query-based base perturbation of the black-box ``claims``: its ε list and budget (the largest
    ``queries`` of the claims it serves; each claim is judged at its own budget from queries_to_success)."""
    out: dict[str, dict[str, Any]] = {}
    for c in claims:
        if not c.black_box or c.norm is None:
            continue
        for name in QUERY_SUITES[c.access][c.norm]:
            entry = out.setdefault(name, {"eps": set(), "budget": 0})
            entry["eps"].add(float(c.eps))  # type: ignore[arg-type]
            entry["budget"] = max(entry["budget"], int(c.queries or 0))
    return out
CLAIM_OVERRIDE_KEYS = ("n_examples", "resolution", "tolerance", "budget", "ladder_budget")
# Where the claim's data and weights live on this machine (not what the claim is about): may be overridden.
LOCATION_KEYS = ("dataset.root", "dataset.path", "model.checkpoint")
BUDGET_KEYS = ("n_iter", "n_queries")  # what ``budget=`` scales (EOT counts and restarts are kept)


def compose(overrides: Sequence[str]) -> dict[str, Any]:
    """``compose_sweep`` with Hydra's errors turned into one ConfigError naming the override."""
    try:
        return compose_sweep(tuple(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"the sweep config cannot be composed with {list(overrides)}: {first}") from None


def split_overrides(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``key=value`` arguments after the claim file: claim settings (n_examples, resolution) and Hydra ones."""
    claim: dict[str, str] = {}
    hydra: list[str] = []
    for a in args:
        if "=" not in a or a.startswith("-"):
            raise ConfigError(f"argument {a!r} is not key=value; usage: gauntlet verify CLAIM.yaml [key=value …]")
        key, _, value = a.partition("=")
        location = _location_key(key)
        if location is not None:
            claim[location] = value
            continue
        if key in ("model", "dataset", "perturbation") or key.startswith(("model.", "dataset.", "perturbation.")):
            raise ConfigError(f"override {a!r}: the claim file decides the model, dataset and attacks; "
                              "edit the claim file instead (only where they live may be overridden: "
                              "dataset.root=…, dataset.path=…, model.checkpoint=…)")
        if key in CLAIM_OVERRIDE_KEYS:
            claim[key] = value
        else:
            hydra.append(a)
    return claim, hydra


def _location_key(key: str) -> str | None:
    """``dataset.root`` / ``dataset.path`` / ``model.checkpoint`` (also ``model.<name>.checkpoint``, kept as
    ``model.<name>.checkpoint`` so the name is checked against the claim's model), else None."""
    if key in LOCATION_KEYS:
        return key
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "model" and parts[2] == "checkpoint" and parts[1].isidentifier():
        return key
    return None


def apply_locations(cfg: dict[str, Any], model_name: str, claim_over: dict[str, str]) -> None:
    """Point the composed config's dataset and model at the locations given on the command line."""
    for key, value in claim_over.items():
        if key.startswith("dataset."):
            field = key.split(".", 1)[1]
            if field not in cfg["dataset"]:
                where = [k for k in ("root", "path") if k in cfg["dataset"]]
                raise ConfigError(f"override {key}={value}: the claim's dataset ({cfg['dataset'].get('_target_')}) "
                                  f"has no {field!r}; its location is {' / '.join(f'dataset.{k}' for k in where)}"
                                  if where else f"override {key}={value}: the claim's dataset has no location key")
            cfg["dataset"][field] = value
        elif key.startswith("model."):
            name = key.split(".")[1] if key.count(".") == 2 else model_name
            if name != model_name:
                raise ConfigError(f"override {key}={value}: the claim's model is {model_name!r}; "
                                  f"write model.checkpoint=… or model.{model_name}.checkpoint=…")
            cfg["model"][model_name]["checkpoint"] = value


def _check_locations(cfg: dict[str, Any], model_name: str) -> None:
    """A dataset or checkpoint location left at ``???`` in its config: one message saying which override sets it."""
    for key in ("root", "path"):
        if str(cfg["dataset"].get(key)) == "???":
            raise ConfigError(f"the claim's dataset needs its location: add dataset.{key}=/path/to/data after the "
                              f"claim file (see configs/dataset/ and docs/models-and-data.md)")
    if str(cfg["model"][model_name].get("checkpoint")) == "???":
        raise ConfigError(f"the claim's model {model_name!r} needs its weights: add model.checkpoint=/path/to/weights "
                          "(.safetensors, or .pt read with weights_only) after the claim file")


def scale_budget(block: dict[str, Any], budget: float) -> dict[str, Any]:
    """A copy of a suite (or member) config with every iteration and query count times ``budget`` (≥ 1 each);
    wrapped members (BPDA, transfer) too. EOT counts and restarts are kept."""
    out = copy.deepcopy(block)
    if budget >= 1:
        return out
    for key in BUDGET_KEYS:
        if key in out:
            out[key] = max(1, round(int(out[key]) * budget))
    if isinstance(out.get("member"), dict):
        out["member"] = scale_budget(out["member"], budget)
    if isinstance(out.get("attacks"), list):
        out["attacks"] = [scale_budget(m, budget) if isinstance(m, dict) else m for m in out["attacks"]]
    return out


def _inline_model(cfg: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """Check an inline model block against the model schema (types, defaults) and resolve ${cache_dir}."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), block)
        holder = OmegaConf.create({"cache_dir": cfg["cache_dir"], "m": merged})
        out = OmegaConf.to_container(holder, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"inline model block: {str(exc).strip().splitlines()[0]}") from None
    assert isinstance(out, dict)
    model = out["m"]
    assert isinstance(model, dict)
    return {str(k): v for k, v in model.items()}


def _check_inline_targets(cf: ClaimFile, cfg: dict[str, Any]) -> None:
    """The claim file's inline blocks under the same ``_target_`` policy as any config, before anything is built.

    The policy is the user's: ``target_packages`` / ``allow_any_target`` given on the ``gauntlet verify``
    command line (a claim file cannot set them, engine.claims.schema).
    """
    inline = {**({"model": cfg["model"]} if not isinstance(cf.model, str) else {}),
              **({"dataset": cfg["dataset"]} if not isinstance(cf.dataset, str) else {})}
    if not inline:
        return
    from engine.planning.sweep_targets import check_targets  # torch and the components: only when needed

    try:
        check_targets(inline, TargetPolicy.of(cfg))
    except ConfigError as exc:
        raise ConfigError(f"{cf.path}: {exc}") from None


def suite_members(suite: str) -> list[str]:
    """The perturbation keys a corruption suite (or single corruption) config adds to a sweep."""
    return list(compose([f"perturbation=[{suite}]"])["perturbation"])


def base_config(cf: ClaimFile, hydra_overrides: Sequence[str], n_examples: int | None,
                locations: dict[str, str] | None = None, budget: float = 1.0) -> dict[str, Any]:
    """The composed sweep for the claims: clean, AutoAttack standard per norm (at the claims' ε, its iterations
    and queries times ``budget``), corruptions. ``n_examples`` overrides the file's count (a subset's ``n``)."""
    norms = sorted({c.norm for c in cf.claims if c.norm and not c.black_box})
    suites = list(dict.fromkeys(c.corruptions for c in cf.claims if c.corruptions))
    queried = query_perturbations(cf.claims)
    perts = ["clean", *[BASE_SUITE.format(norm=n) for n in norms], *queried, *suites]
    stem = Path(cf.path).stem
    overrides = [
        f"model=[{cf.model}]" if isinstance(cf.model, str) else "model=[]",
        *([f"dataset={cf.dataset}"] if isinstance(cf.dataset, str) else []),
        f"perturbation=[{','.join(perts)}]",
        f"out_dir=runs/verify/{stem}",
        *hydra_overrides,
    ]
    cfg = compose(overrides)
    problems = opt_ins_from_files(cfg, hydra_overrides)  # only the user's command line may widen the policy
    if problems:
        raise ConfigError("; ".join(problems))
    if not isinstance(cf.model, str):
        cfg["model"] = {cf.model_name: _inline_model(cfg, copy.deepcopy(cf.model))}
    if not isinstance(cf.dataset, str):
        cfg["dataset"] = copy.deepcopy(cf.dataset)
    apply_locations(cfg, cf.model_name, {k: v for k, v in (locations or {}).items() if "." in k})
    _check_locations(cfg, cf.model_name)
    _check_inline_targets(cf, cfg)
    for name, q in queried.items():  # a reduced budget= scales the queries too (can refute, not confirm)
        cfg["perturbation"][name]["eps"] = sorted(q["eps"])
        cfg["perturbation"][name]["budget"] = max(2, round(q["budget"] * budget))
    for norm in norms:
        eps = sorted({float(c.eps) for c in cf.claims if c.norm == norm and c.eps is not None and not c.black_box})
        name = BASE_SUITE.format(norm=norm)
        cfg["perturbation"][name] = scale_budget(cfg["perturbation"][name], budget)
        cfg["perturbation"][name]["eps"] = eps
    if cf.subset is not None:
        subset = {**cf.subset, **({"n": n_examples} if n_examples is not None else {})}
        cfg["dataset"] = {"_target_": "engine.claims.subset.subset_of", "base": cfg["dataset"], **subset}
        cfg["n_examples"] = subset["n"]
    elif n_examples is not None:
        cfg["n_examples"] = n_examples
    elif cf.n_examples is not None:
        cfg["n_examples"] = cf.n_examples
    return cfg


def escalation_config(base: dict[str, Any], perturbations: dict[str, dict[str, Any]], ids: Sequence[int],
                      out_dir: Path) -> dict[str, Any]:
    """The base sweep with other perturbations, on the samples ``ids`` only (their ids are kept), in ``out_dir``."""
    cfg = copy.deepcopy(base)
    cfg["perturbation"] = copy.deepcopy(perturbations)
    cfg["dataset"] = {"_target_": "engine.claims.subset.subset_of", "base": copy.deepcopy(base["dataset"]),
                      "ids": [int(i) for i in ids]}
    cfg["n_examples"] = len(ids)
    cfg["out_dir"] = str(out_dir)
    return cfg
