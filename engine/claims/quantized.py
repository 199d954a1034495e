"""``verify`` with ``quantize`` on: each adversarial verdict says the robust accuracy of the float examples too.

The rows of a quantized sweep score the examples rounded onto the grid (engine/evaluation/quantize.py), so the
verdict's measured accuracy is theirs; ``float_correct`` keeps how the float example before rounding was
classified. This adds, per claim, both accuracies on the base suite at the claim's ε and how many float
examples survived rounding, to verdict.json (``quantized``) and, when they differ, to the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.claims.build import BASE_SUITE
from engine.claims.schema import ClaimFile


def grid_part(rows: Sequence[Mapping[str, Any]], model: str, pert: str, eps: float, grid: str) -> dict[str, Any]:
    """Per sample worst case over ``pert``'s rows at ``eps``: robust on the float and on the grid examples."""
    grid_ok: dict[int, bool] = {}
    float_ok: dict[int, bool] = {}
    for r in rows:
        if r["model"] != model or r["perturbation"] != pert or abs(r["level"] - eps) > 1e-12:
            continue
        sid = int(r["sample_id"])
        fc = r["correct"] if r.get("float_correct") is None else r["float_correct"]
        grid_ok[sid] = grid_ok.get(sid, True) and bool(r["correct"])
        float_ok[sid] = float_ok.get(sid, True) and bool(fc)
    n = len(grid_ok)
    broken_float = [s for s, ok in float_ok.items() if not ok]
    return {"grid": grid, "perturbation": pert, "n": n,
            "float_accuracy": sum(float_ok.values()) / n if n else None,
            "grid_accuracy": sum(grid_ok.values()) / n if n else None,
            "float_broken": len(broken_float),
            "survived_rounding": sum(1 for s in broken_float if not grid_ok[s])}


def add_grid_parts(verdicts: Sequence[Any], cf: ClaimFile, rows: Sequence[Mapping[str, Any]],
                   grid: str) -> None:
    """Set ``quantized`` on every adversarial verdict (``ClaimVerdict``s in the claim file's order)."""
    for c, v in zip(cf.claims, verdicts, strict=True):
        if c.norm and c.eps is not None:
            v.quantized = grid_part(rows, cf.model_name, BASE_SUITE.format(norm=c.norm), float(c.eps), grid)


def grid_text(q: Mapping[str, Any] | None) -> list[str]:
    """One line when the float and the grid examples give different robust accuracies (else none)."""
    if not q or q.get("n") in (None, 0) or q["float_accuracy"] == q["grid_accuracy"]:
        return []
    return [f"  {q['grid']} grid: robust accuracy {q['grid_accuracy']:.1%} on the rounded examples (reported) vs "
            f"{q['float_accuracy']:.1%} on the float ones ({q['perturbation']}); {q['survived_rounding']} of "
            f"{q['float_broken']} float adversarial examples survived rounding"]
