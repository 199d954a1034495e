"""Check a claim file end to end: base sweep, indicators, escalations, one verdict per claim (`gauntlet verify`).

Every accuracy in a verdict is read back from the result store of sweeps run by
engine.sweep.run_sweep; the indicators only decide which escalations run. The
per-sample worst case over the base run and every escalation is the measured
accuracy (a sample is robust only if no attack broke it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.claims import build as claim_build
from engine.claims import escalate
from engine.claims.decide import estimate, thin_margin
from engine.claims.indicators import (
    TRACE_SAMPLES,
    Indicator,
    alive,
    locate_nondifferentiable,
    run_trace,
    trace_indicators,
    trace_member,
)
from engine.claims.schema import Claim, ClaimFile, load_claim_file
from engine.claims.transfer import transfer_indicator
from engine.claims.verdict import ClaimVerdict, clean_part, corruption_verdict, finish_verdict
from engine.errors import ConfigError
from engine.evaluation.resources import Resources, resolve_device
from engine.perturbations.adaptive import GradientView
from engine.perturbations.suite import AttackSuite
from engine.store.parquet import ResultStore
from engine.sweep import SweepOutcome, run_sweep

log = logging.getLogger(__name__)

THIN_MARGIN = 0.03  # a stronger attack taking 3 points off would refute the claim: escalate (docs/claims.md)
PROBE_SAMPLES = 64
BOUNDARY = 1e-4  # |margin| below this: an adversarial example that may flip on another device or batch layout


@dataclass
class Outcome:
    """Per-sample result at one ε: robust or not, who broke it (base member or escalation:member), margin."""

    correct: dict[int, bool]
    breaker: dict[int, str]
    margin: dict[int, float]

    def robust_ids(self) -> list[int]:
        return sorted(s for s, ok in self.correct.items() if ok)


@dataclass
class NormCheck:
    """What was found and run for the claims of one norm."""

    norm: str
    base: str
    eps: list[float]
    outcomes: dict[float, Outcome]
    indicators: list[Indicator] = field(default_factory=list)
    escalations: list[dict[str, Any]] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)
    randomised: bool = False
    at: str | None = None
    threat_model: Any = None
    gradients_alive: bool = True
    base_robust: dict[float, list[int]] = field(default_factory=dict)  # before any escalation


def _rows(outcome: SweepOutcome, out_dir: str) -> list[dict[str, Any]]:
    table = ResultStore(out_dir).read(t.task_id for t in outcome.plan.tasks)
    cols = ["model", "perturbation", "level", "sample_id", "correct", "broken_by", "margin"]
    return table.select(cols).to_pylist()


def _outcome(rows: list[dict[str, Any]], model: str, pert: str, eps: float) -> Outcome:
    out = Outcome({}, {}, {})
    for r in rows:
        same_level = math.isclose(r["level"], eps, rel_tol=0, abs_tol=1e-12)
        if r["model"] == model and r["perturbation"] == pert and same_level:
            sid = int(r["sample_id"])
            out.correct[sid] = bool(r["correct"])
            out.breaker[sid] = "" if r["correct"] else (r["broken_by"] or "clean")
            out.margin[sid] = float(r["margin"])
    return out


def _probe(res: Resources, cfg: dict[str, Any], model_name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = res.model(model_name, cfg["model"][model_name])
    data = res.dataset(cfg["dataset"])
    probe = data.slice(0, min(len(data), int(cfg["n_examples"]), PROBE_SAMPLES))
    return model, probe.images.to(res.device), probe.labels.to(res.device)


def _randomised(model: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return bool((model(x) - model(x)).abs().max() > 1e-5)


def _sanity(outcome: SweepOutcome, model: str, base: str) -> list[Indicator]:
    """engine/sanity/flags.py's flags on this model (the probe's, and those on the base suite) as indicators."""
    out = []
    for f in outcome.flags:
        if f.model == model and (f.perturbation is None or base in str(f.perturbation)):
            n = int(f.details.get("n", 0)) if isinstance(f.details, dict) else 0
            out.append(Indicator(f.check, True, n, n, f.message, source="sanity", details=dict(f.details)))
    return out


def _traces(nc: NormCheck, model: torch.nn.Module, data: Any, suite: AttackSuite, seed: int,
            device: torch.device) -> list[Indicator]:
    """Trace-based indicators at each claimed ε, on up to TRACE_SAMPLES samples the base run left robust."""
    member = trace_member(suite)
    merged: dict[str, Indicator] = {}
    pos = {int(s): i for i, s in enumerate(data.sample_ids.tolist())}
    for eps in nc.eps:
        ids = nc.outcomes[eps].robust_ids()[:TRACE_SAMPLES]
        if not ids:
            continue
        index = torch.tensor([pos[s] for s in ids])
        x, y = data.images[index].to(device), data.labels[index].to(device)
        for ind in trace_indicators(run_trace(model, member, x, y, ids, nc.norm, eps, seed, data.num_classes)):
            ind.details["eps"] = eps
            old = merged.get(ind.check)
            if old is None or (ind.fired and not old.fired) or (ind.fired == old.fired and ind.count > old.count):
                merged[ind.check] = ind
    return list(merged.values())


def _escalate(nc: NormCheck, cfg: dict[str, Any], model_name: str, kinds: dict[str, list[str]],
              base_suite: dict[str, Any]) -> None:
    """Run the chosen escalations in order, each on the samples still robust at some claimed ε."""
    root = Path(str(cfg["out_dir"])).expanduser() / "escalations"
    for kind, reasons in kinds.items():
        ids = sorted(set().union(*(set(o.robust_ids()) for o in nc.outcomes.values())))
        esc = escalate.build(kind, base_suite, nc.norm, nc.eps, nc.at, nc.randomised)
        record: dict[str, Any] = {"kind": kind, "perturbation": esc.perturbation, "reasons": reasons,
                                  "samples": len(ids), "changed": {}}
        nc.ran.add(kind)
        if not ids:
            record["changed"] = "nothing left to attack: every sample was already broken"
            nc.escalations.append(record)
            continue
        out_dir = root / esc.perturbation
        log.info("escalation %s on %d sample(s) still robust (%s)", esc.perturbation, len(ids), ", ".join(reasons))
        ecfg = claim_build.escalation_config(cfg, {esc.perturbation: esc.config}, ids, out_dir)
        rows = _rows(run_sweep(ecfg), str(out_dir))
        for eps in nc.eps:
            before = nc.outcomes[eps]
            got = _outcome(rows, model_name, esc.perturbation, eps)
            robust_before = len(before.robust_ids())
            for sid, ok in got.correct.items():
                if before.correct.get(sid) and not ok:
                    before.correct[sid] = False
                    before.breaker[sid] = f"{esc.perturbation}:{got.breaker[sid]}"
                    before.margin[sid] = got.margin[sid]
            n = len(before.correct)
            record["changed"][f"{eps:g}"] = {
                "robust_before": robust_before, "robust_after": len(before.robust_ids()), "n": n,
                "broke": robust_before - len(before.robust_ids()),
            }
        record["out_dir"] = str(out_dir)
        nc.escalations.append(record)


def _clear(nc: NormCheck, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Mark each fired indicator cleared when the escalations that address it ran (and, for masking, BPDA
    restored live gradients)."""
    bpda_alive = nc.at is not None and "bpda" in nc.ran and alive(GradientView(model, nc.at, "bpda"), x, y)
    no_left = all(not o.robust_ids() for o in nc.outcomes.values())
    for ind in nc.indicators:
        if not ind.fired:
            continue
        if no_left:
            ind.cleared, ind.cleared_by = True, ["every sample is broken: nothing left to overestimate"]
            continue
        if ind.check in escalate.MASKING and not (nc.gradients_alive and nc.at is None):
            ind.cleared = bool(bpda_alive)
            ind.cleared_by = ["bpda (gradients alive through the identity backward)"] if bpda_alive else []
            continue
        need = escalate.addressed_by(ind.check)
        if ind.check in escalate.RANDOMNESS and nc.randomised:
            need = ("eot",)
        elif ind.check in escalate.MASKING:  # live gradients: a weak (or noisy) white-box attack
            need = ("eot",) if nc.randomised else ("plus", "square")
        ind.cleared = bool(need) and all(k in nc.ran for k in need)
        ind.cleared_by = [k for k in need if k in nc.ran]


def check_norm(cf: ClaimFile, cfg: dict[str, Any], outcome: SweepOutcome, rows: list[dict[str, Any]],
               res: Resources, norm: str, claims: Sequence[Claim], resolution: float) -> NormCheck:
    """Indicators, escalations and clearing for the adversarial claims of one norm."""
    base = claim_build.BASE_SUITE.format(norm=norm)
    eps = sorted({float(c.eps) for c in claims if c.eps is not None})
    nc = NormCheck(norm, base, eps, {e: _outcome(rows, cf.model_name, base, e) for e in eps})
    suite = res.perturbation(base, cfg["perturbation"][base])
    assert isinstance(suite, AttackSuite)
    nc.threat_model = suite.threat_model
    model, x, y = _probe(res, cfg, cf.model_name)
    nc.randomised = cf.randomised or _randomised(model, x)
    nc.indicators = _sanity(outcome, cf.model_name, base)
    nc.indicators += _traces(nc, model, res.dataset(cfg["dataset"]), suite, int(cfg["seed"]), res.device)
    fired = [i.check for i in nc.indicators if i.fired]
    for c in claims:
        est = estimate([1.0 if ok else 0.0 for ok in nc.outcomes[float(c.eps)].correct.values()])  # type: ignore[arg-type]
        if thin_margin(est, c.claimed_accuracy, THIN_MARGIN):
            fired.append("thin_margin")
    masked = any(i.fired and i.check in escalate.MASKING for i in nc.indicators)
    nc.at = cf.non_differentiable or (locate_nondifferentiable(model, x, y) if masked else None)
    nc.gradients_alive = alive(model, x, y)
    kinds = escalate.choose(list(dict.fromkeys(fired)), nc.randomised, nc.at, nc.gradients_alive)
    nc.base_robust = {e: o.robust_ids() for e, o in nc.outcomes.items()}
    _escalate(nc, cfg, cf.model_name, kinds, cfg["perturbation"][base])
    if "transfer" in nc.ran and nc.at is not None:
        nc.indicators.append(transfer_indicator(nc, model, res.dataset(cfg["dataset"]), suite, res.device))
    _clear(nc, model, x, y)
    return nc


def verify(path: str, args: Sequence[str]) -> tuple[list[ClaimVerdict], Path]:
    """Validate the claim file and overrides (ConfigError before any compute), run everything, return verdicts."""
    cf = load_claim_file(path)
    claim_over, hydra_over = claim_build.split_overrides(args)
    n = _int_override(claim_over.get("n_examples"))
    resolution = _float_override(claim_over.get("resolution"), cf.resolution)
    cfg = claim_build.base_config(cf, hydra_over, n)
    outcome = run_sweep(cfg)
    out_dir = str(cfg["out_dir"])
    rows = _rows(outcome, out_dir)
    res = Resources(resolve_device(str(cfg["device"])))
    verdicts: list[ClaimVerdict] = []
    checks: dict[str, NormCheck] = {}
    for norm in dict.fromkeys(c.norm for c in cf.claims if c.norm):
        assert norm is not None
        checks[norm] = check_norm(cf, cfg, outcome, rows, res, norm, [c for c in cf.claims if c.norm == norm],
                                  resolution)
    clean = _outcome(rows, cf.model_name, "clean", 0.0)
    for c in cf.claims:
        if c.norm:
            nc = checks[c.norm]
            v = finish_verdict(c, nc, nc.outcomes[float(c.eps)], resolution, BOUNDARY)  # type: ignore[arg-type]
        else:
            members = claim_build.suite_members(str(c.corruptions))
            v = corruption_verdict(c, rows, cf.model_name, members, resolution)
        if c.clean_accuracy is not None:
            clean_part(v, c.clean_accuracy, clean, resolution)
        verdicts.append(v)
    return verdicts, Path(out_dir).expanduser()


def _int_override(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"n_examples={value!r} must be a positive integer") from None
    if n < 1:
        raise ConfigError(f"n_examples={value!r} must be a positive integer")
    return n


def _float_override(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        r = float(value)
    except ValueError:
        raise ConfigError(f"resolution={value!r} must be a fraction in (0, 1)") from None
    if not 0 < r < 1:
        raise ConfigError(f"resolution={value!r} must be a fraction in (0, 1), e.g. 0.1 for 10 points")
    return r


def load_and_check(path: str, args: Sequence[str]) -> None:
    """Only the validation of ``verify`` (claim file, overrides, composed config): for ``--check`` and tests."""
    cf = load_claim_file(path)
    claim_over, hydra_over = claim_build.split_overrides(args)
    _int_override(claim_over.get("n_examples"))
    _float_override(claim_over.get("resolution"), cf.resolution)
    claim_build.base_config(cf, hydra_over, None)
