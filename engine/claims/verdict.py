"""Verdicts: one per claim, as a value, as ``verdict.json`` (the agreed schema) and as text; the exit code.

``verdict.json`` holds what the verdicts were computed on (``gauntlet_version``,
``command``, ``claim_file``, ``model``, ``dataset``, ``samples``, ``attacks``:
engine/claims/provenance.py) and ``{"claims": [...]}``, each with ``verdict``,
``measured_accuracy``, ``ci_low``, ``ci_high``, ``n``, ``claimed_accuracy``,
``difference_pp``, ``threat_model`` (ε also in /255), ``statement``, ``caveat``,
``indicators`` (measured at this claim's ε), ``escalations`` (every ladder round,
run or skipped), ``ladder`` (its budget, what it spent, why it stopped, whether it
converged at this claim's ε), ``rule`` (the rule of engine.claims.decide that
decided), ``near_boundary``, ``strongest_attack``, ``samples_needed`` (when more
samples would decide) and ``source`` (docs/claims.md). ``verdict.txt`` is the
same, rendered.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.claims.decide import Blockers, Rule, decide, estimate
from engine.claims.quantized import grid_text
from engine.claims.schema import Claim
from engine.compose.threat_model import ThreatModel, describe, parse_tags

EXIT = {"CONSISTENT": 0, "REFUTED": 1, "INCONCLUSIVE": 3}  # 2: an error before or during the run
SEVERITY = {"CONSISTENT": 0, "INCONCLUSIVE": 1, "REFUTED": 2}
UPPER_BOUND = ("an attacked accuracy is an upper bound on robust accuracy (a stronger attack can only lower it), "
               "not a certificate: {what}")


@dataclass
class ClaimVerdict:
    """The verdict on one claim and the evidence behind it."""

    verdict: str
    measured_accuracy: float
    ci_low: float
    ci_high: float
    n: int
    claimed_accuracy: float
    threat_model: dict[str, Any]
    statement: str
    reason: str
    indicators: list[dict[str, Any]] = field(default_factory=list)
    escalations: list[dict[str, Any]] = field(default_factory=list)
    near_boundary: int = 0
    strongest_attack: str | None = None
    broken_by: dict[str, int] = field(default_factory=dict)
    samples_needed: int | None = None
    source: str | None = None
    claim: str = ""
    clean: dict[str, Any] | None = None
    difference_pp: float | None = None  # measured − claimed, in percentage points
    caveat: str | None = None
    rule: str = ""  # the rule that decided (engine.claims.decide.RULES)
    ladder: dict[str, Any] | None = None  # the escalation ladder of this claim's norm (engine.claims.ladder)
    quantized: dict[str, Any] | None = None  # quantize on: float vs grid robust accuracy (engine.claims.quantized)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    """The verdicts of one ``gauntlet verify`` run and what they were computed on (provenance.py)."""

    verdicts: list[ClaimVerdict]
    out_dir: Path
    provenance: dict[str, Any] = field(default_factory=dict)


def pp(measured: float, claimed: float) -> float | None:
    """measured − claimed in percentage points (None when nothing was measured)."""
    return None if math.isnan(measured) else round(100 * (measured - claimed), 2)


def eps_255(eps: float) -> str:
    """ε in 0-255 units, e.g. ``8/255``."""
    return f"{255 * eps:.4g}/255"


def _adversarial_tm(c: Claim, tm: ThreatModel) -> dict[str, Any]:
    assert c.eps is not None
    return {"norm": c.norm, "eps": c.eps, "eps_text": c.eps_text, "eps_255": round(255 * c.eps, 4), **tm.as_dict()}


def _caveat(verdict: str) -> str:
    what = {"CONSISTENT": "these attacks did not refute the claim; that does not prove the model robust",
            "REFUTED": "verified adversarial examples show the claim is too high; the true robust accuracy can "
                       "only be lower than measured",
            "INCONCLUSIVE": "the evidence neither refutes nor supports the claim"}[verdict]
    return UPPER_BOUND.format(what=what)


def finish_verdict(c: Claim, nc: Any, outcome: Any, indicators: Sequence[Any], rule: Rule, boundary: float,
                   budget: float = 1.0, eps: float | None = None) -> ClaimVerdict:
    """The verdict on adversarial claim ``c`` from its per-sample worst case ``outcome``, the indicators measured
    at its ε and the escalation ladder (``nc``: its NormCheck); attacks below their full ``budget`` cannot
    support a claim."""
    scores = [1.0 if ok else 0.0 for ok in outcome.correct.values()]
    est = estimate(scores)
    uncleared = [i.check for i in indicators if i.fired and not i.cleared]
    ladder = getattr(nc, "ladder", None)
    at = float(c.eps if eps is None else eps)  # type: ignore[arg-type]
    d = decide(est, c.claimed_accuracy, rule,
               Blockers(uncleared, ladder.not_converged(at) if ladder is not None else "", budget))
    broken = [s for s, ok in outcome.correct.items() if not ok]
    counts = Counter(outcome.breaker[s] for s in broken)
    attacks = {k: v for k, v in counts.items() if k != "clean"}
    near = sum(1 for s in broken if outcome.breaker[s] != "clean" and abs(outcome.margin[s]) <= boundary)
    tm: ThreatModel = nc.threat_model
    return ClaimVerdict(
        verdict=d.verdict, measured_accuracy=est.accuracy, ci_low=est.ci_low, ci_high=est.ci_high, n=est.n,
        claimed_accuracy=c.claimed_accuracy, threat_model=_adversarial_tm(c, tm),
        statement=describe(tm, c.norm, c.eps_text), reason=d.reason,
        indicators=[i.as_dict() for i in indicators], escalations=list(nc.escalations), near_boundary=near,
        strongest_attack=max(attacks, key=lambda k: attacks[k]) if attacks else None,
        broken_by=dict(sorted(counts.items(), key=lambda kv: -kv[1])), samples_needed=d.samples_needed,
        source=c.source, claim=c.name or c.label(), difference_pp=pp(est.accuracy, c.claimed_accuracy),
        caveat=_caveat(d.verdict), rule=d.rule, ladder=ladder.as_dict(at) if ladder is not None else None,
    )


def corruption_verdict(c: Claim, rows: Sequence[dict[str, Any]], model: str, members: Sequence[str],
                       rule: Rule) -> ClaimVerdict:
    """Mean accuracy over the suite's corruptions and severities; the interval is over samples (normal)."""
    per: dict[int, list[bool]] = {}
    for r in rows:
        if r["model"] == model and r["perturbation"] in members:
            per.setdefault(int(r["sample_id"]), []).append(bool(r["correct"]))
    scores = [sum(v) / len(v) for v in per.values()]
    est = estimate(scores)
    sd = None if est.binary or est.n < 2 else \
        (sum((s - est.accuracy) ** 2 for s in scores) / (est.n - 1)) ** 0.5
    d = decide(est, c.claimed_accuracy, rule, None, sd)
    tm = parse_tags("corruptions", ["natural-shift"], "corruption")
    return ClaimVerdict(
        verdict=d.verdict, measured_accuracy=est.accuracy, ci_low=est.ci_low, ci_high=est.ci_high, n=est.n,
        claimed_accuracy=c.claimed_accuracy,
        threat_model={"corruptions": c.corruptions, "members": list(members), **tm.as_dict()},
        statement=describe(tm, None, None), reason=d.reason, samples_needed=d.samples_needed,
        source=c.source, claim=c.name or c.label(), difference_pp=pp(est.accuracy, c.claimed_accuracy),
        rule=d.rule,
    )


def clean_part(v: ClaimVerdict, claimed: float, clean: Any, rule: Rule) -> None:
    """Add the clean-accuracy check (an estimate, not a bound: ``rule`` with ``upper_bound`` False); a refuted
    clean claim refutes the claim as a whole."""
    est = estimate([1.0 if ok else 0.0 for ok in clean.correct.values()])
    d = decide(est, claimed, rule)
    v.clean = {"verdict": d.verdict, "claimed_accuracy": claimed, "measured_accuracy": est.accuracy,
               "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n, "reason": d.reason,
               "difference_pp": pp(est.accuracy, claimed), "rule": d.rule}
    if SEVERITY[d.verdict] > SEVERITY[v.verdict]:
        v.verdict, v.rule = d.verdict, f"clean: {d.rule}"
        if v.caveat is not None:
            v.caveat = _caveat(d.verdict)
        v.reason += f"; clean accuracy: {d.reason}"
        if d.samples_needed and not v.samples_needed:
            v.samples_needed = d.samples_needed


def exit_code(verdicts: Sequence[ClaimVerdict]) -> int:
    """0 when every claim is CONSISTENT, 1 when any is REFUTED, 3 when none is refuted but some INCONCLUSIVE."""
    return max((EXIT[v.verdict] for v in verdicts), key=lambda c: {0: 0, 3: 1, 1: 2}[c], default=0)


def write_verdicts(report: VerifyReport) -> Path:
    """``OUT_DIR/verdict.json`` and ``OUT_DIR/verdict.txt`` (atomic), next to results/."""
    out_dir = report.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {**report.provenance, "exit_code": exit_code(report.verdicts),
           "claims": [v.as_dict() for v in report.verdicts]}
    for name, text in (("verdict.txt", render(report) + "\n"), ("verdict.json", json.dumps(doc, indent=2,
                                                                                          default=str) + "\n")):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / name)
    return out_dir / "verdict.json"


def render(report: VerifyReport | Sequence[ClaimVerdict]) -> str:
    """The verdicts as text (terminal and verdict.txt): what they were computed on, then one block per claim."""
    verdicts = report.verdicts if isinstance(report, VerifyReport) else list(report)
    head = render_provenance(report.provenance) if isinstance(report, VerifyReport) else []
    lines = [*head, *([""] if head else [])]
    for v in verdicts:
        lines += _render_claim(v)
    return "\n".join(lines)


def _render_claim(v: ClaimVerdict) -> list[str]:
    tm = v.threat_model
    eps = ""
    if tm.get("norm") and tm.get("eps") is not None and "/255" not in str(tm.get("eps_text")):
        eps = f" (= {eps_255(float(tm['eps']))})"
    diff = "" if v.difference_pp is None else f", {v.difference_pp:+.1f} pp vs the claim"
    lines = [f"{v.verdict:<12} {v.claim}{eps}: claimed {v.claimed_accuracy:.1%}, measured "
             f"{v.measured_accuracy:.1%} [95% CI {v.ci_low:.1%}, {v.ci_high:.1%}], n={v.n}{diff}",
             f"  {v.reason}"]
    if v.samples_needed:
        lines.append(f"  samples needed to decide: about {v.samples_needed}")
    if v.clean:
        c = v.clean
        lines.append(f"  clean accuracy: {c['verdict']}, claimed {c['claimed_accuracy']:.1%}, measured "
                     f"{c['measured_accuracy']:.1%} [{c['ci_low']:.1%}, {c['ci_high']:.1%}]"
                     + ("" if c.get("difference_pp") is None else f", {c['difference_pp']:+.1f} pp"))
    lines.append(f"  threat model: {v.statement}")
    if v.strongest_attack:
        lines.append(f"  strongest attack: {v.strongest_attack}; broken by: "
                     + ", ".join(f"{k} {n}" for k, n in v.broken_by.items()))
    if tm.get("norm"):
        lines.append(f"  adversarial examples within 1e-4 of the decision boundary: {v.near_boundary}")
    lines += _render_evidence(v)
    lines += grid_text(v.quantized)
    if v.caveat:
        lines.append(f"  note: {v.caveat}")
    if v.source:
        lines.append(f"  source: {v.source}")
    return lines


def _render_evidence(v: ClaimVerdict) -> list[str]:
    lines = []
    for i in v.indicators:
        if i["fired"]:
            state = "cleared by " + ", ".join(i["cleared_by"]) if i["cleared"] else "NOT cleared"
            lines.append(f"  indicator {i['check']} ({i['source']}): {state}: {i['message']}")
    quiet = [i["check"] for i in v.indicators if not i["fired"]]
    if quiet:
        lines.append(f"  indicators checked at this ε, not fired: {', '.join(quiet)}")
    eps = v.threat_model.get("eps")
    for e in v.escalations:
        rung = f" rung {e['rung']}" if "rung" in e else ""
        cost = f"; {e['cost']:,} model evaluations, {e.get('wall_s', 0):g} s" if e.get("status") == "ran" else ""
        lines.append(f"  escalation {e['perturbation']}{rung} ({', '.join(map(str, e['reasons']))}): "
                     f"{_changed(e, eps)}{cost}")
    if v.ladder:
        lines.append(f"  {_ladder_text(v.ladder)}")
    return lines


STOPPED = {"not_needed": "not needed (no indicator fired, no thin margin, no declared defence)",
           "converged": "converged (the last round of every family broke at most {share:.0%} of what it attacked)",
           "top_rung": "stopped at the strongest rung of a family that was still breaking samples",
           "budget": "stopped at its budget",
           "refuted": "stopped: every claim it could still change is refuted",
           "nothing_left": "stopped: no sample left to break"}


def _ladder_text(lad: dict[str, Any]) -> str:
    how = STOPPED.get(lad.get("stopped", ""), str(lad.get("stopped"))).format(share=lad.get("converged_share", 0))
    text = (f"ladder: {how}; {lad.get('spent_evals', 0):,} of {lad.get('budget_evals', 0):,} model evaluations "
            "spent")
    if lad.get("not_converged"):
        text += f"; NOT converged at this ε: {lad['not_converged']}"
    return text


def _changed(e: dict[str, Any], eps: Any = None) -> str:
    ch = e.get("changed")
    if not isinstance(ch, dict):
        return str(ch)
    items = [(k, c) for k, c in ch.items() if eps is None or k == f"{float(eps):g}"] or list(ch.items())
    return "; ".join(f"ε={eps_255(float(k))}: robust {c['robust_before']} → {c['robust_after']} of {c['n']}"
                     for k, c in items)


def render_provenance(p: dict[str, Any]) -> list[str]:
    """What the verdicts were computed on, as the lines above them."""
    if not p:
        return []
    cf, m, d, s, a = p["claim_file"], p["model"], p["dataset"], p["samples"], p["attacks"]
    title = f" — {cf['title']}" if cf.get("title") else ""
    source = f" (source: {cf['source']})" if cf.get("source") else ""
    lines = [f"claim file: {cf['path']}{title}{source}; sha256 {cf['sha256'][:16]}…",
             f"model: {m['name']} ({m['arch']}), checkpoint {m['checkpoint']}, sha256 {m['checkpoint_sha256']}",
             f"dataset: {d['name']} ({d['config'].get('_target_')}{_where(d)}), {d['num_classes']} classes"]
    if s["selection"] == "subset":
        pick = f"a {s['mode']} subset (n={s['n']}, seed={s['seed']})"
    else:
        pick = f"the first {s['count']} (dataset order: {s.get('dataset_order')})"
    lines.append(f"samples: {pick}: {s['count']} samples, ids sha256 {s['ids_sha256'][:16]}…")
    for name, rec in a["base"].items():
        if rec.get("members"):
            members = ", ".join(_budget_text(mm) for mm in rec["members"])
            lines.append(f"attacks: {name} at ε {[eps_255(float(e)) for e in rec.get('eps', [])]}: {members}")
        elif rec.get("budget") is not None:  # a query-based attack (black-box claims)
            lines.append(f"attacks: {name} ({rec['type']}) at ε {[eps_255(float(e)) for e in rec.get('eps', [])]}: "
                         f"{int(rec['budget']):,} queries per sample through the oracle")
    if a.get("budget", 1) < 1:
        lines.append(f"attack budget: {a['budget']:g}× the iterations and queries (reduced: can refute, not confirm)")
    rule = p.get("rule") or {}
    if rule:
        lines.append(f"rule: resolution ±{100 * rule['resolution']:g} pp, tolerance {100 * rule['tolerance']:g} pp; "
                     f"escalation ladder budget {rule['ladder_budget_per_sample']:,} model evaluations per sample")
    if rule.get("rescore", 1) > 1:
        lines.append(f"randomised model: every adversarial example is classified {rule['rescore']} times and a "
                     f"sample counts as robust only if all {rule['rescore']} classify it correctly")
    lines.append(f"gauntlet {p['gauntlet_version']}: {p.get('command') or '(command not recorded)'}")
    return lines


def _where(d: dict[str, Any]) -> str:
    ident = d.get("identity", {})
    places = [f"{k}={v.get('path')}" + (f", {v['files']} files" if "files" in v else "") for k, v in ident.items()
              if isinstance(v, dict)]
    return "; " + "; ".join(places) if places else ""


def _budget_text(m: dict[str, Any]) -> str:
    keys = [k for k in ("n_iter", "n_restarts", "n_queries", "n_target_classes", "eot") if k in m]
    return f"{m['name']} (" + ", ".join(f"{k} {m[k]}" for k in keys) + ")" if keys else str(m["name"])
