"""The extraction report: fidelity and transfer success vs query budget (one curve per answer contract, the
independent model as a dashed reference), and the rows as a table, in one self-contained HTML page.

Reads plain row dicts (the columns of ``extraction.parquet``); it never imports the extraction room.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
COLUMNS = ("contract", "role", "budget", "queries", "fidelity", "accuracy", "target_accuracy", "transfer_success",
           "transfer_attacked", "transfer_outside_ball", "transfer_queries", "copy_model")


def _e(x: object) -> str:
    return html.escape("" if x is None else str(x))


def figure(rows: Sequence[dict[str, Any]]) -> bytes:
    """Two panels: fidelity vs budget, transfer success vs budget; the baseline as a dashed line."""
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 2)
    by_contract: dict[str, list[dict[str, Any]]] = defaultdict(list)
    baselines: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["role"] == "copy":
            by_contract[r["contract"]].append(r)
        else:
            baselines.setdefault(r["contract"], r)
    for ax, key, title in ((panels[0], "fidelity", "Fidelity (agreement with the target)"),
                           (panels[1], "transfer_success", "Transfer success against the target")):
        for contract, pts in by_contract.items():
            pts = sorted(pts, key=lambda r: r["budget"])
            ax.plot([p["budget"] for p in pts], [p[key] for p in pts], marker="o", label=f"copy, {contract}")
        if key == "transfer_success" and baselines:
            base = next(iter(baselines.values()))
            if not math.isnan(base[key]):
                ax.axhline(base[key], linestyle="--", color="grey",
                           label=f"independent model ({base['budget']} true labels)")
        ax.set_xscale("log")
        ax.set_xlabel("stealing queries (budget)")
        ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return _e(v)


def render(rows: Sequence[dict[str, Any]]) -> str:
    """The page: a headline per contract, the figure, the table, the threat model of the rows."""
    eps = rows[0]["eps"] if rows else float("nan")
    tags = json.loads(rows[0]["threat_model"]) if rows else {}
    heads = []
    for contract in dict.fromkeys(r["contract"] for r in rows):
        copies = [r for r in rows if r["contract"] == contract and r["role"] == "copy"]
        if copies:
            best = max(copies, key=lambda r: r["budget"])
            heads.append(f"<li>{_e(contract)}: with {best['budget']} queries the copy agrees with the target on "
                         f"{best['fidelity']:.1%} of the test split; its L∞ ε = {eps:g} examples fool the target "
                         f"on {_cell(best['transfer_success'])} of the samples it classified correctly</li>")
    table = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    img = base64.b64encode(figure(rows)).decode() if rows else ""
    atlas = ", ".join(f"{k} {v}" for k, v in (tags.get("atlas") or {}).items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Gauntlet extraction</title></head><body>"
        f"<h1>Model extraction of {_e(rows[0]['target'] if rows else '')}</h1><ul>{''.join(heads)}</ul>"
        f"<figure><img alt='fidelity and transfer vs budget' src='data:image/png;base64,{img}'></figure>"
        f"<table border='1'><tr>{''.join(f'<th>{c}</th>' for c in COLUMNS)}</tr>{table}</table>"
        f"<p>Threat model: {_e(', '.join(tags.get('knowledge') or []))} adversary; MITRE ATLAS {_e(atlas)}; "
        f"STRIDE {_e(tags.get('stride'))}. Fidelity queries and transfer queries are counted apart from the "
        "stealing budget (columns queries and transfer_queries; docs/extraction.md).</p></body></html>\n")


def write_report(out_dir: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``<out_dir>/report/index.html``, written atomically."""
    folder = Path(out_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    tmp = folder / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(render(rows), encoding="utf-8")
    os.replace(tmp, page)
    return page
