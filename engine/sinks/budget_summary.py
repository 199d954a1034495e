"""The budget-curve block of the terminal summary and the report: query-based attacks at 100 / 1,000 / 10,000."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from engine.compose.threat_model import canonical_tags
from engine.errors import ConfigError
from engine.stats.budget import UPPER_BOUND_NOTE, BudgetCurve, budget_curves

COLUMNS = ["model", "perturbation", "level", "correct", "queries", "queries_to_success"]


def curves_of(table: pa.Table) -> list[BudgetCurve]:
    """Budget curves of every query-based perturbation in ``table`` (rows with a queries_to_success)."""
    if table.num_rows == 0 or "queries_to_success" not in table.column_names:
        return []
    return budget_curves(table.select(COLUMNS).to_pylist())


def dense_curves(table: pa.Table, points: int = 25) -> list[BudgetCurve]:
    """The curves at log-spaced budgets from 1 to the most queries spent (for the report's plot)."""
    if table.num_rows == 0 or "queries_to_success" not in table.column_names:
        return []
    rows = table.select(COLUMNS).to_pylist()
    top = max((int(r["queries"]) for r in rows), default=1)
    grid = sorted({max(1, round(top ** (k / (points - 1)))) for k in range(points)})
    return budget_curves(rows, budgets=grid)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _lines(curves: Sequence[BudgetCurve]) -> tuple[list[str], list[list[str]]]:
    budgets = [p.budget for p in curves[0].points]
    head = ["model", "perturbation", "level", *(f"succ%@{b:,}" for b in budgets),
            *(f"rob%@{b:,}" for b in budgets), "mean q", "median q", "censored", "reach"]
    body = [[c.model, c.perturbation, f"ε={c.level:g}", *(_pct(p.success) for p in c.points),
             *(_pct(p.robust) for p in c.points),
             "—" if c.mean_queries is None else f"{c.mean_queries:.0f}",
             "—" if c.median_queries is None else f"{c.median_queries:.0f}",
             f"{c.censored}/{c.attacked}", f"{c.max_queries:,}"] for c in curves]
    return head, body


TITLE = ("query budget curves: success % among samples correct before the attack (Kaplan-Meier, unbroken samples "
         "censored at the queries they spent + 1), robust accuracy % at each budget; — = budget not reached; "
         "reach = the largest success or censoring time")


def render_budget_table(curves: Sequence[BudgetCurve]) -> str:
    """The summary block ("" when the run has no query-based attack)."""
    if not curves:
        return ""
    head, body = _lines(curves)
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(s.ljust(w) if i < 3 else s.rjust(w) for i, (s, w) in enumerate(zip(line, widths,
                                                                                               strict=True)))

    return "\n".join([TITLE, f"note: {UPPER_BOUND_NOTE}", fmt(head), "  ".join("-" * w for w in widths),
                      *(fmt(line) for line in body)])


def render_budget_summary(table: pa.Table, black_box: Sequence[str] = ()) -> str:
    """The budget block, or (no query-based attack in the run) the upper-bound note alone when ``black_box``
    names perturbations of black-box attacks only."""
    block = render_budget_table(curves_of(table))
    if block or not black_box:
        return block
    return f"black-box perturbations ({', '.join(black_box)}): {UPPER_BOUND_NOTE}"


def black_box_names(perturbations: Sequence[dict[str, Any]]) -> list[str]:
    """Perturbations of summary.json whose tags make them black-box only."""
    out = []
    for p in perturbations:
        try:
            words = canonical_tags(p.get("tags"))
        except ConfigError:
            continue
        if p.get("family") == "attack" and "black-box" in words and "white-box" not in words:
            out.append(str(p["name"]))
    return out


def budget_html(entries: Sequence[dict[str, Any]], black_box: Sequence[str] = ()) -> str:
    """The report's section from summary.json's ``budget_curves``; without curves, the upper-bound note when
    ``black_box`` names black-box perturbations; else ""."""
    if not entries:
        if not black_box:
            return ""
        return (f"<p class='flag'>black-box perturbations ({html.escape(', '.join(black_box))}): "
                f"{html.escape(UPPER_BOUND_NOTE)}</p>")
    budgets = [p["budget"] for p in entries[0]["points"]]
    head = ["model", "perturbation", "level", *(f"succ % @{b:,}" for b in budgets),
            *(f"rob % @{b:,}" for b in budgets), "mean q", "median q", "censored", "reach"]
    rows = []
    for c in entries:
        cells = [c["model"], c["perturbation"], f"ε={c['level']:g}",
                 *(_pct(p["success"]) for p in c["points"]), *(_pct(p["robust_accuracy"]) for p in c["points"]),
                 "—" if c["mean_queries"] is None else f"{c['mean_queries']:.0f}",
                 "—" if c["median_queries"] is None else f"{c['median_queries']:.0f}",
                 f"{c['censored']}/{c['attacked']}", f"{c['max_queries']:,}"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in cells) + "</tr>")
    return (f"<h3>Query budget curves</h3><p>{html.escape(TITLE)}.</p><p class='flag'>{html.escape(UPPER_BOUND_NOTE)}"
            "</p><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table>")
