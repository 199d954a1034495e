"""Black-box claims (``threat_model.access: label_only | score_based``): judged on the query-based attacks' rows.

The base perturbations of such a claim are query-based attacks through the oracle (engine.claims.build
``QUERY_SUITES``), not AutoAttack: a claim about an adversary who sees only labels (or scores) within a query
budget is checked by attacks under that same access. A sample counts as robust at the claim's budget unless
some attack broke it within ``queries`` (its ``queries_to_success``; a run with a larger budget serves a claim
with a smaller one). Gradient indicators and the escalation ladder do not apply (no gradients are used); the
verdict states the access and the budget, and, like every attacked accuracy, the measured number is an upper
bound on robust accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from engine.claims.decide import Rule
from engine.claims.schema import Claim
from engine.claims.verdict import ClaimVerdict, finish_verdict
from engine.compose.threat_model import ThreatModel


@dataclass
class BlackBoxOutcome:
    """Per sample at the claim's ε and budget: robust or not, who broke it, the margin of its example."""

    correct: dict[int, bool]
    breaker: dict[int, str]
    margin: dict[int, float]


def blackbox_outcome(rows: Sequence[dict[str, Any]], model: str, perturbations: Sequence[str], eps: float,
                     queries: int) -> BlackBoxOutcome:
    """The per-sample worst case over ``perturbations`` at ``eps``, counting only successes within ``queries``."""
    out = BlackBoxOutcome({}, {}, {})
    for r in rows:
        if r["model"] != model or r["perturbation"] not in perturbations:
            continue
        if not math.isclose(float(r["level"]), eps, rel_tol=0, abs_tol=1e-12):
            continue
        sid = int(r["sample_id"])
        q = r.get("queries_to_success")
        robust = bool(r["correct"]) or (q is not None and int(q) > queries)
        if sid not in out.correct or (out.correct[sid] and not robust):
            out.correct[sid] = robust
            out.breaker[sid] = "" if robust else (r["broken_by"] or "clean")
            out.margin[sid] = float(r["margin"])
    return out


def blackbox_verdict(c: Claim, rows: Sequence[dict[str, Any]], model: str, perturbations: Sequence[str],
                     tm: ThreatModel, rule: Rule, boundary: float, budget: float) -> ClaimVerdict:
    """The verdict on black-box claim ``c``; ``tm``: the attacks' threat model, here given the claim's access
    and budget. A reduced ``budget`` (< 1) can refute the claim but not support it, as for white-box claims."""
    assert c.eps is not None and c.queries is not None
    outcome = blackbox_outcome(rows, model, perturbations, float(c.eps), c.queries)
    stated = replace(tm, access=c.access, queries=c.queries)
    nc = SimpleNamespace(threat_model=stated, escalations=[], ladder=None)
    v = finish_verdict(c, nc, outcome, [], rule, boundary, budget)
    v.threat_model["attacks"] = list(perturbations)
    v.reason += (f"; black-box: {', '.join(perturbations)} with {c.access.replace('_', '-')} access, "
                 f"{c.queries:,} queries per sample")
    return v
