"""The attack-suite block of the summary: per model, suite and ε, who broke the samples and at what cost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def render_attack_summary(table: pa.Table, suites: Collection[str]) -> str:
    """One line per (model, suite, ε > 0): robust count, ``broken_by`` counts, mean cost per sample.

    ``suites`` names the perturbations to show (attack suites of several members: for a
    single attack the breakdown says nothing the accuracy table does not). The cost is
    what was spent at that ε (reuse across ε makes later levels cheap); the last column
    is the median norm of the adversarial examples that count at that ε.
    """
    if not suites or table.num_rows == 0:
        return ""
    mask = pc.and_(pc.is_in(table["perturbation"], value_set=pa.array(sorted(suites))),
                   pc.greater(table["level"], 0.0))
    rows = table.filter(mask).select(["model", "perturbation", "level", "correct", "broken_by", "grad_evals",
                                      "queries", "perturbation_size"]).to_pylist()
    if not rows:
        return ""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["perturbation"], r["level"]), []).append(r)
    header = ("model", "suite", "level", "robust", "broken by", "grads/sample", "queries/sample", "median ‖δ‖")
    lines = []
    for (model, pert, level), rs in sorted(groups.items()):
        robust = sum(r["correct"] for r in rs)
        by = Counter(r["broken_by"] or "(clean error)" for r in rs if not r["correct"])
        sizes = sorted(r["perturbation_size"] for r in rs if not r["correct"] and r["broken_by"])
        lines.append((
            model, pert, f"ε={level:g}", f"{robust}/{len(rs)}",
            ", ".join(f"{k} {v}" for k, v in sorted(by.items(), key=lambda kv: (-kv[1], kv[0]))) or "-",
            f"{sum(r['grad_evals'] for r in rs) / len(rs):.0f}",
            f"{sum(r['queries'] for r in rs) / len(rs):.0f}",
            f"{sizes[len(sizes) // 2]:.4g}" if sizes else "-",
        ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {3, 5, 6, 7}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                   strict=True)))

    out = ["attack suites: who broke each sample (per-sample worst case) and the cost spent at each ε",
           fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(line) for line in lines]
    return "\n".join(out)
