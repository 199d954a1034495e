"""Verdicts: one per claim, as a value, as ``verdict.json`` (the agreed schema) and as text; the exit code.

``verdict.json`` holds ``{"claims": [...]}``, each with ``verdict``,
``measured_accuracy``, ``ci_low``, ``ci_high``, ``n``, ``claimed_accuracy``,
``threat_model``, ``statement``, ``indicators``, ``escalations``,
``near_boundary``, ``strongest_attack``, ``samples_needed`` (when inconclusive
for lack of samples) and ``source`` (docs/claims.md).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.claims.decide import decide, estimate
from engine.claims.schema import Claim
from engine.compose.threat_model import ThreatModel, describe, parse_tags

EXIT = {"CONSISTENT": 0, "REFUTED": 1, "INCONCLUSIVE": 3}  # 2: an error before or during the run
SEVERITY = {"CONSISTENT": 0, "INCONCLUSIVE": 1, "REFUTED": 2}


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _adversarial_tm(c: Claim, tm: ThreatModel) -> dict[str, Any]:
    return {"norm": c.norm, "eps": c.eps, "eps_text": c.eps_text, **tm.as_dict()}


def finish_verdict(c: Claim, nc: Any, outcome: Any, resolution: float, boundary: float) -> ClaimVerdict:
    """The verdict on adversarial claim ``c`` from its per-sample worst case ``outcome`` (``nc``: its NormCheck)."""
    scores = [1.0 if ok else 0.0 for ok in outcome.correct.values()]
    est = estimate(scores)
    uncleared = [i.check for i in nc.indicators if i.fired and not i.cleared]
    d = decide(est, c.claimed_accuracy, resolution, uncleared)
    broken = [s for s, ok in outcome.correct.items() if not ok]
    counts = Counter(outcome.breaker[s] for s in broken)
    attacks = {k: v for k, v in counts.items() if k != "clean"}
    near = sum(1 for s in broken if outcome.breaker[s] != "clean" and abs(outcome.margin[s]) <= boundary)
    tm: ThreatModel = nc.threat_model
    return ClaimVerdict(
        verdict=d.verdict, measured_accuracy=est.accuracy, ci_low=est.ci_low, ci_high=est.ci_high, n=est.n,
        claimed_accuracy=c.claimed_accuracy, threat_model=_adversarial_tm(c, tm),
        statement=describe(tm, c.norm, c.eps_text), reason=d.reason,
        indicators=[i.as_dict() for i in nc.indicators], escalations=list(nc.escalations), near_boundary=near,
        strongest_attack=max(attacks, key=lambda k: attacks[k]) if attacks else None,
        broken_by=dict(sorted(counts.items(), key=lambda kv: -kv[1])), samples_needed=d.samples_needed,
        source=c.source, claim=c.name or c.label(),
    )


def corruption_verdict(c: Claim, rows: Sequence[dict[str, Any]], model: str, members: Sequence[str],
                       resolution: float) -> ClaimVerdict:
    """Mean accuracy over the suite's corruptions and severities; the interval is over samples (normal)."""
    per: dict[int, list[bool]] = {}
    for r in rows:
        if r["model"] == model and r["perturbation"] in members:
            per.setdefault(int(r["sample_id"]), []).append(bool(r["correct"]))
    scores = [sum(v) / len(v) for v in per.values()]
    est = estimate(scores)
    sd = None if est.binary or est.n < 2 else \
        (sum((s - est.accuracy) ** 2 for s in scores) / (est.n - 1)) ** 0.5
    d = decide(est, c.claimed_accuracy, resolution, [], sd)
    tm = parse_tags("corruptions", ["natural-shift"], "corruption")
    return ClaimVerdict(
        verdict=d.verdict, measured_accuracy=est.accuracy, ci_low=est.ci_low, ci_high=est.ci_high, n=est.n,
        claimed_accuracy=c.claimed_accuracy,
        threat_model={"corruptions": c.corruptions, "members": list(members), **tm.as_dict()},
        statement=describe(tm, None, None), reason=d.reason, samples_needed=d.samples_needed,
        source=c.source, claim=c.name or c.label(),
    )


def clean_part(v: ClaimVerdict, claimed: float, clean: Any, resolution: float) -> None:
    """Add the clean-accuracy check; a refuted clean claim refutes the claim as a whole."""
    est = estimate([1.0 if ok else 0.0 for ok in clean.correct.values()])
    d = decide(est, claimed, resolution, [])
    v.clean = {"verdict": d.verdict, "claimed_accuracy": claimed, "measured_accuracy": est.accuracy,
               "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n, "reason": d.reason}
    if SEVERITY[d.verdict] > SEVERITY[v.verdict]:
        v.verdict = d.verdict
        v.reason += f"; clean accuracy: {d.reason}"
        if d.samples_needed and not v.samples_needed:
            v.samples_needed = d.samples_needed


def exit_code(verdicts: Sequence[ClaimVerdict]) -> int:
    """0 when every claim is CONSISTENT, 1 when any is REFUTED, 3 when none is refuted but some INCONCLUSIVE."""
    return max((EXIT[v.verdict] for v in verdicts), key=lambda c: {0: 0, 3: 1, 1: 2}[c], default=0)


def write_verdicts(out_dir: Path, verdicts: Sequence[ClaimVerdict], claim_file: str) -> Path:
    """``OUT_DIR/verdict.json`` (atomic), next to results/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"claim_file": claim_file, "exit_code": exit_code(verdicts), "claims": [v.as_dict() for v in verdicts]}
    tmp = out_dir / ".verdict.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    path = out_dir / "verdict.json"
    tmp.replace(path)
    return path


def render(verdicts: Sequence[ClaimVerdict]) -> str:
    """The verdicts as text for the terminal."""
    lines = []
    for v in verdicts:
        lines.append(f"{v.verdict:<12} {v.claim}: claimed {v.claimed_accuracy:.1%}, measured "
                     f"{v.measured_accuracy:.1%} [95% CI {v.ci_low:.1%}, {v.ci_high:.1%}], n={v.n}")
        lines.append(f"  {v.reason}")
        if v.samples_needed:
            lines.append(f"  samples needed to decide: about {v.samples_needed}")
        if v.clean:
            c = v.clean
            lines.append(f"  clean accuracy: {c['verdict']}, claimed {c['claimed_accuracy']:.1%}, measured "
                         f"{c['measured_accuracy']:.1%} [{c['ci_low']:.1%}, {c['ci_high']:.1%}]")
        lines.append(f"  threat model: {v.statement}")
        if v.strongest_attack:
            lines.append(f"  strongest attack: {v.strongest_attack}; broken by: "
                         + ", ".join(f"{k} {n}" for k, n in v.broken_by.items()))
        if v.threat_model.get("norm"):
            lines.append(f"  adversarial examples within 1e-4 of the decision boundary: {v.near_boundary}")
        for i in v.indicators:
            if i["fired"]:
                state = "cleared by " + ", ".join(i["cleared_by"]) if i["cleared"] else "NOT cleared"
                lines.append(f"  indicator {i['check']} ({i['source']}): {state}: {i['message']}")
        quiet = [i["check"] for i in v.indicators if not i["fired"]]
        if quiet:
            lines.append(f"  indicators checked, not fired: {', '.join(quiet)}")
        for e in v.escalations:
            lines.append(f"  escalation {e['perturbation']} ({', '.join(map(str, e['reasons']))}): {_changed(e)}")
        if v.source:
            lines.append(f"  source: {v.source}")
    return "\n".join(lines)


def _changed(e: dict[str, Any]) -> str:
    ch = e.get("changed")
    if not isinstance(ch, dict):
        return str(ch)
    return "; ".join(f"ε={eps}: robust {c['robust_before']} → {c['robust_after']} of {c['n']}" for eps, c in ch.items())
