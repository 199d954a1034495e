"""Check a claim file end to end: base sweep, indicators, escalations, one verdict per claim (`gauntlet verify`).

Every accuracy in a verdict is read back from the result store of sweeps run by
engine.sweep.run_sweep; the indicators only decide which escalations run. The
per-sample worst case over the base run and every escalation is the measured
accuracy (a sample is robust only if no attack broke it). Indicators are measured
and cleared at every claimed ε of every norm, so each verdict describes its own
ball. Samples are read through the lazy dataset protocol (``slice``/``take``):
only the rows a probe or trace needs are decoded, on every dataset layout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.claims import build as claim_build
from engine.claims import escalate
from engine.claims.blackbox import blackbox_verdict
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
from engine.claims.ladder import LADDER_EVALS, Ladder, Live, RoundResult, climb
from engine.claims.provenance import attack_record, provenance
from engine.claims.quantized import add_grid_parts
from engine.claims.schema import Claim, ClaimFile, load_claim_file
from engine.claims.settings import Settings, settings
from engine.claims.transfer import transfer_indicator
from engine.claims.verdict import (
    ClaimVerdict,
    VerifyReport,
    clean_part,
    corruption_verdict,
    finish_verdict,
)
from engine.data import Dataset
from engine.evaluation.resources import Resources, resolve_device
from engine.perturbations.adaptive import GradientView
from engine.perturbations.suite import AttackSuite
from engine.store.parquet import ResultStore
from engine.sweep import SweepOutcome, run_sweep

log = logging.getLogger(__name__)

THIN_MARGIN = 0.03  # a stronger attack taking 3 pp off would refute the claim: escalate (docs/claims.md)
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
    """What was found and run for the claims of one norm; indicators are kept per claimed ε."""

    norm: str
    base: str
    eps: list[float]
    outcomes: dict[float, Outcome]
    indicators: dict[float, list[Indicator]] = field(default_factory=dict)
    escalations: list[dict[str, Any]] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)
    randomised: bool = False
    at: str | None = None
    threat_model: Any = None
    gradients_alive: bool = True
    base_robust: dict[float, list[int]] = field(default_factory=dict)  # before any escalation
    budget: float = 1.0
    ladder: Ladder = field(default_factory=lambda: Ladder(0))
    claims: list[Claim] = field(default_factory=list)


def _rows(outcome: SweepOutcome, out_dir: str) -> list[dict[str, Any]]:
    table = ResultStore(out_dir).read(t.task_id for t in outcome.plan.tasks)
    cols = ["model", "perturbation", "level", "sample_id", "correct", "broken_by", "margin", "grad_evals", "queries",
            "queries_to_success", "float_correct"]
    return table.select(cols).to_pylist()


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


def _outcome(rows: list[dict[str, Any]], model: str, pert: str, eps: float) -> Outcome:
    out = Outcome({}, {}, {})
    for r in rows:
        if r["model"] == model and r["perturbation"] == pert and _same(r["level"], eps):
            sid = int(r["sample_id"])
            out.correct[sid] = bool(r["correct"])
            out.breaker[sid] = "" if r["correct"] else (r["broken_by"] or "clean")
            out.margin[sid] = float(r["margin"])
    return out


def _rows_of(data: Dataset, ids: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the samples ``ids``: only those rows are decoded (any dataset layout)."""
    pos = {int(s): i for i, s in enumerate(data.sample_ids.tolist())}
    batch = data.take([pos[int(s)] for s in ids])
    return batch.images.to(device), batch.labels.to(device)


def _probe(res: Resources, cfg: dict[str, Any], model_name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = res.model(model_name, cfg["model"][model_name])
    data = res.dataset(cfg["dataset"])
    probe = data.slice(0, min(len(data), int(cfg["n_examples"]), PROBE_SAMPLES))
    return model, probe.images.to(res.device), probe.labels.to(res.device)


def _randomised(model: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return bool((model(x) - model(x)).abs().max() > 1e-5)


def _sanity(outcome: SweepOutcome, model: str, base: str, eps: float) -> list[Indicator]:
    """engine/sanity/flags.py's flags on this model as indicators at ``eps``: the probe's (any ε) and those on
    the base suite found at this ε (a flag that names its level counts only there)."""
    out = []
    for f in outcome.flags:
        if f.model != model or not (f.perturbation is None or base in str(f.perturbation)):
            continue
        details = dict(f.details) if isinstance(f.details, dict) else {}
        level = details.get("level")
        if level is not None and not _same(float(level), eps):
            continue
        n = int(details.get("n", 0))
        out.append(Indicator(f.check, True, n, n, f.message, source="sanity", details={**details, "eps": eps}))
    return out


def _untraced(eps: float) -> list[Indicator]:
    """The trace indicators where the base run left no sample robust: nothing to trace, nothing overestimated."""
    why = f"no sample was left robust at ε={eps:g}: nothing to trace (every sample is already broken)"
    return [Indicator(c, False, 0, 0, why, details={"eps": eps})
            for c in ("silent_success", "non_converging_loss", "zero_gradients_path", "bad_initialisation")]


def _traces(nc: NormCheck, model: torch.nn.Module, data: Dataset, suite: AttackSuite, seed: int,
            device: torch.device, eps: float) -> list[Indicator]:
    """Trace-based indicators at ``eps``, on up to TRACE_SAMPLES samples the base run left robust there."""
    ids = nc.outcomes[eps].robust_ids()[:TRACE_SAMPLES]
    if not ids:
        return _untraced(eps)
    x, y = _rows_of(data, ids, device)
    found = trace_indicators(run_trace(model, trace_member(suite), x, y, ids, nc.norm, eps, seed, data.num_classes))
    for ind in found:
        ind.details["eps"] = eps
    return found


def _live(nc: NormCheck) -> Live:
    """The claimed ε still worth attacking: some claim there not refuted and some sample there still robust."""
    live, dead = {}, {}
    for eps in nc.eps:
        ids = nc.outcomes[eps].robust_ids()
        est = estimate([1.0 if ok else 0.0 for ok in nc.outcomes[eps].correct.values()])
        claims = [c.claimed_accuracy for c in nc.claims if c.eps is not None and _same(float(c.eps), eps)]
        if not ids:
            dead[eps] = "nothing_left"
        elif claims and all(est.ci_high < claimed for claimed in claims):
            dead[eps] = "refuted"
        else:
            live[eps] = ids
    return Live(live, dead)


def _run_step(nc: NormCheck, cfg: dict[str, Any], model_name: str, step: escalate.Escalation,
              ids: list[int]) -> RoundResult:
    """One ladder step as its own sweep on the samples ``ids`` at the step's ε; merged into the outcomes."""
    out_dir = Path(str(cfg["out_dir"])).expanduser() / "escalations" / step.perturbation
    log.info("escalation %s on %d sample(s) still robust at ε %s", step.perturbation, len(ids),
             ", ".join(f"{e:g}" for e in step.config["eps"]))
    nc.ran.add(step.kind)
    started = time.perf_counter()
    ecfg = claim_build.escalation_config(cfg, {step.perturbation: step.config}, ids, out_dir)
    rows = _rows(run_sweep(ecfg), str(out_dir))
    before = {e: set(nc.outcomes[e].robust_ids()) for e in step.config["eps"]}
    changed = {f"{e:g}": _merge(nc.outcomes[e], _outcome(rows, model_name, step.perturbation, e), step.perturbation)
               for e in step.config["eps"]}
    broke = len(set().union(*(b - set(nc.outcomes[e].robust_ids()) for e, b in before.items())))
    cost = sum(int(r["grad_evals"]) + int(r["queries"]) for r in rows
               if r["model"] == model_name and r["perturbation"] == step.perturbation)
    return RoundResult(changed, broke, cost, time.perf_counter() - started,
                       {"attack": attack_record(step.config), "out_dir": str(out_dir)})


def _escalate(nc: NormCheck, cfg: dict[str, Any], model_name: str, kinds: dict[str, list[str]],
              base_suite: dict[str, Any], fired_at: dict[str, list[float]], num_classes: int,
              per_sample: int) -> None:
    """Climb the escalation ladder (engine.claims.ladder) for the chosen families at the live claimed ε."""
    n = max((len(o.correct) for o in nc.outcomes.values()), default=0)
    nc.ladder = Ladder(budget=max(1, round(per_sample * n * min(nc.budget, 1.0))))

    def make(kind: str, rung: int, eps: list[float]) -> escalate.Escalation:
        return escalate.build(kind, base_suite, nc.norm, eps or list(nc.eps), nc.at, nc.randomised, nc.budget,
                              rung, num_classes)

    climb(nc.ladder, kinds, make, lambda: _live(nc),
          lambda step, ids: _run_step(nc, cfg, model_name, step, ids), fired_at)
    nc.escalations = nc.ladder.rounds


def _merge(before: Outcome, got: Outcome, perturbation: str) -> dict[str, int]:
    """Samples the escalation broke become broken (per-sample worst case); how many it changed."""
    robust_before = len(before.robust_ids())
    for sid, ok in got.correct.items():
        if before.correct.get(sid) and not ok:
            before.correct[sid] = False
            before.breaker[sid] = f"{perturbation}:{got.breaker[sid]}"
            before.margin[sid] = got.margin[sid]
    after = len(before.robust_ids())
    return {"robust_before": robust_before, "robust_after": after, "n": len(before.correct),
            "broke": robust_before - after}


def _clear(nc: NormCheck, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Mark each fired indicator at each ε cleared when the escalations that address it ran (for masking: BPDA
    restored live gradients), or when no sample is left robust at that ε."""
    bpda_alive = nc.at is not None and "bpda" in nc.ran and alive(GradientView(model, nc.at, "bpda"), x, y)
    for eps, indicators in nc.indicators.items():
        no_left = not nc.outcomes[eps].robust_ids()
        for ind in indicators:
            if ind.fired:
                _clear_one(nc, ind, no_left, bpda_alive)


def _clear_one(nc: NormCheck, ind: Indicator, no_left: bool, bpda_alive: bool) -> None:
    if no_left:
        ind.cleared, ind.cleared_by = True, ["every sample is broken at this ε: nothing left to overestimate"]
        return
    if ind.check in escalate.MASKING and not (nc.gradients_alive and nc.at is None):
        ind.cleared = bool(bpda_alive)
        ind.cleared_by = ["bpda (gradients alive through the identity backward)"] if bpda_alive else []
        return
    need = escalate.addressed_by(ind.check)
    if ind.check in escalate.RANDOMNESS and nc.randomised:
        need = ("eot",)
    elif ind.check in escalate.MASKING:  # live gradients: a weak (or noisy) white-box attack
        need = ("eot",) if nc.randomised else ("plus", "square")
    ind.cleared = bool(need) and all(k in nc.ran for k in need)
    ind.cleared_by = [k for k in need if k in nc.ran]


def _fired(nc: NormCheck, claims: Sequence[Claim]) -> dict[str, list[float]]:
    """Each fired check → the claimed ε where it fired (thin margin: where a claim's margin is thin)."""
    fired: dict[str, list[float]] = {}
    for eps, indicators in nc.indicators.items():
        for i in indicators:
            if i.fired:
                fired.setdefault(i.check, []).append(eps)
    for c in claims:
        eps = float(c.eps)  # type: ignore[arg-type]
        est = estimate([1.0 if ok else 0.0 for ok in nc.outcomes[eps].correct.values()])
        if thin_margin(est, c.claimed_accuracy, THIN_MARGIN) and eps not in fired.get("thin_margin", []):
            fired.setdefault("thin_margin", []).append(eps)
    return fired


def check_norm(cf: ClaimFile, cfg: dict[str, Any], outcome: SweepOutcome, rows: list[dict[str, Any]],
               res: Resources, norm: str, claims: Sequence[Claim], budget: float = 1.0,
               randomised: bool = False, ladder_evals: int = LADDER_EVALS) -> NormCheck:
    """Indicators (at every claimed ε), the escalation ladder and clearing for the adversarial claims of one norm."""
    base = claim_build.BASE_SUITE.format(norm=norm)
    eps_list = sorted({float(c.eps) for c in claims if c.eps is not None})
    nc = NormCheck(norm, base, eps_list, {e: _outcome(rows, cf.model_name, base, e) for e in eps_list},
                   budget=budget, claims=list(claims))
    suite = res.perturbation(base, cfg["perturbation"][base])
    assert isinstance(suite, AttackSuite)
    nc.threat_model = suite.threat_model
    model, x, y = _probe(res, cfg, cf.model_name)
    nc.randomised = randomised or cf.randomised or _randomised(model, x)
    data = res.dataset(cfg["dataset"])
    for eps in eps_list:
        nc.indicators[eps] = _sanity(outcome, cf.model_name, base, eps)
        nc.indicators[eps] += _traces(nc, model, data, suite, int(cfg["seed"]), res.device, eps)
    fired = _fired(nc, claims)
    masked = any(check in escalate.MASKING for check in fired)
    nc.at = cf.non_differentiable or (locate_nondifferentiable(model, x, y) if masked else None)
    nc.gradients_alive = alive(model, x, y)
    kinds = escalate.choose(list(fired), nc.randomised, nc.at, nc.gradients_alive)
    nc.base_robust = {e: o.robust_ids() for e, o in nc.outcomes.items()}
    _escalate(nc, cfg, cf.model_name, kinds, cfg["perturbation"][base], fired, data.num_classes, ladder_evals)
    if "transfer" in nc.ran and nc.at is not None:
        for eps in eps_list:
            nc.indicators[eps].append(transfer_indicator(nc, model, data, suite, res.device, eps))
    _clear(nc, model, x, y)
    return nc


def verify(path: str, args: Sequence[str], command: str | None = None) -> VerifyReport:
    """Validate the claim file and overrides (ConfigError before any compute), run everything, return the
    verdicts with what they were computed on."""
    cf = load_claim_file(path)
    claim_over, hydra_over = claim_build.split_overrides(args)
    st = settings(cf, claim_over)
    cfg = claim_build.base_config(cf, hydra_over, st.n_examples, claim_over, st.budget)
    res = Resources(resolve_device(str(cfg["device"])))
    randomised = _rescore_if_randomised(cf, cfg, res)
    cfg["wandb"] = {**(cfg.get("wandb") or {}), "deferred": True}  # W&B once, with the verdicts (claims/cli.py)
    outcome = run_sweep(cfg)
    out_dir = str(cfg["out_dir"])
    rows = _rows(outcome, out_dir)
    checks: dict[str, NormCheck] = {}
    white = [c for c in cf.claims if c.norm and not c.black_box]  # black-box claims: engine/claims/blackbox.py
    for norm in dict.fromkeys(c.norm for c in white):
        assert norm is not None
        checks[norm] = check_norm(cf, cfg, outcome, rows, res, norm, [c for c in white if c.norm == norm],
                                  st.budget, randomised, st.ladder_evals)
    verdicts = _verdicts(cf, checks, rows, st, res, cfg)
    if cfg.get("quantize", "none") != "none":  # rows score grid examples: say what the float ones gave
        add_grid_parts(verdicts, cf, rows, str(cfg["quantize"]))
    data = res.dataset(cfg["dataset"])
    n_eval = min(len(data), int(cfg["n_examples"]))
    sha = next((t.checkpoint_sha256 for t in outcome.plan.tasks if t.model_name == cf.model_name), None)
    prov = provenance(cf, cfg, sha, data.name, data.num_classes, data.sample_ids[:n_eval].tolist(), st.budget,
                      command, outcome.plan.identity)
    prov["rule"] = {"resolution": st.resolution, "tolerance": st.tolerance, "ladder_budget_per_sample": st.ladder_evals,
                    "rescore": escalate.RESCORE if randomised else 1}
    return VerifyReport(verdicts, Path(out_dir).expanduser(), prov)


def _rescore_if_randomised(cf: ClaimFile, cfg: dict[str, Any], res: Resources) -> bool:
    """Whether the model's forward pass is random (declared, or two passes differ on the probe samples); then every
    example of the base suites is classified ``escalate.RESCORE`` times (engine.perturbations.suite)."""
    if not any(c.norm and not c.black_box for c in cf.claims):
        return False
    try:
        model, x, _ = _probe(res, cfg, cf.model_name)
        randomised = cf.randomised or _randomised(model, x)
    except Exception:
        log.debug("randomness probe failed before the base sweep", exc_info=True)
        randomised = cf.randomised
    if randomised:
        for norm in {c.norm for c in cf.claims if c.norm and not c.black_box}:
            cfg["perturbation"][claim_build.BASE_SUITE.format(norm=norm)]["rescore"] = escalate.RESCORE
    return randomised


def _verdicts(cf: ClaimFile, checks: dict[str, NormCheck], rows: list[dict[str, Any]],
              st: Settings, res: Resources, cfg: dict[str, Any]) -> list[ClaimVerdict]:
    clean = _outcome(rows, cf.model_name, "clean", 0.0)
    verdicts: list[ClaimVerdict] = []
    for c in cf.claims:
        if c.norm and c.black_box:
            names = list(claim_build.QUERY_SUITES[c.access][c.norm])
            tm = res.perturbation(names[0], cfg["perturbation"][names[0]]).threat_model
            v = blackbox_verdict(c, rows, cf.model_name, names, tm, st.rule(), BOUNDARY, st.budget)
        elif c.norm:
            nc = checks[c.norm]
            eps = float(c.eps)  # type: ignore[arg-type]
            v = finish_verdict(c, nc, nc.outcomes[eps], nc.indicators[eps], st.rule(), BOUNDARY, st.budget, eps)
        else:
            members = claim_build.suite_members(str(c.corruptions))
            v = corruption_verdict(c, rows, cf.model_name, members, st.rule(upper_bound=False))
        if c.clean_accuracy is not None:
            clean_part(v, c.clean_accuracy, clean, st.rule(upper_bound=False))
        verdicts.append(v)
    return verdicts


def load_and_check(path: str, args: Sequence[str]) -> None:
    """Only the validation of ``verify`` (claim file, overrides, composed config): for ``--check`` and tests."""
    cf = load_claim_file(path)
    claim_over, hydra_over = claim_build.split_overrides(args)
    st = settings(cf, claim_over)
    claim_build.base_config(cf, hydra_over, st.n_examples, claim_over, st.budget)
