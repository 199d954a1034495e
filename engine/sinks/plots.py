"""The report's figures as PNG bytes (matplotlib, object API: no global backend or pyplot state).

Accuracy vs ε with 95 % bands (one line per model, a checked claim as a star on it), accuracy vs
severity per corruption as small multiples (a y-axis fitted to the data, each model's clean accuracy
as a dashed reference), a model × perturbation heat map at one level, and who broke a suite's
samples (stacked bars per ε, one distinct colour per attack).
"""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from engine.stats.aggregate import AccuracyRow

DPI = 110
# "who broke": a colour per attack, none of them the green of "robust" or the grey of "clean error"
ATTACK_COLOURS = ("#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
                  "#000080", "#ffbb78", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5")
ROBUST, CLEAN_ERROR = "#4caf50", "#9e9e9e"


@dataclass(frozen=True)
class ClaimMark:
    """A checked claim: ``claimed`` accuracy (fraction) under ``norm`` at ``eps``, drawn as a star."""

    name: str
    norm: str
    eps: float
    claimed: float


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _curves(rows: Sequence[AccuracyRow], perturbation: str) -> dict[str, list[AccuracyRow]]:
    out: dict[str, list[AccuracyRow]] = defaultdict(list)
    for r in rows:
        if r.perturbation == perturbation:
            out[r.model].append(r)
    return {m: sorted(rs, key=lambda r: r.level) for m, rs in out.items()}


def _draw_curves(ax: object, curves: dict[str, list[AccuracyRow]], models: Sequence[str]) -> None:
    for i, model in enumerate(models):
        rs = curves.get(model)
        if not rs:
            continue
        xs = [r.level for r in rs]
        color = f"C{i % 10}"
        ax.fill_between(xs, [100 * r.ci_low for r in rs], [100 * r.ci_high for r in rs],  # type: ignore[attr-defined]
                        color=color, alpha=0.18, linewidth=0)
        ax.plot(xs, [100 * r.accuracy for r in rs], marker="o", color=color,  # type: ignore[attr-defined]
                label=f"{model} (n={rs[0].n})")
    ax.set_ylim(-2, 102)  # type: ignore[attr-defined]
    ax.grid(alpha=0.3)  # type: ignore[attr-defined]


def accuracy_vs_eps(rows: Sequence[AccuracyRow], perturbation: str, models: Sequence[str],
                    claims: Sequence[ClaimMark] = ()) -> bytes:
    """One attack or suite: robust accuracy (%) against ε, a line and a 95 % band per model; each claim of
    the same norm as a black star at its ε and claimed accuracy."""
    curves = _curves(rows, perturbation)
    norm = next((r.norm for rs in curves.values() for r in rs), None)
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    _draw_curves(ax, curves, models)
    for c in (c for c in claims if c.norm == norm):
        ax.plot([c.eps], [100 * c.claimed], marker="*", markersize=15, color="black", linestyle="none",
                label=f"claimed: {c.name} ({100 * c.claimed:.0f} %)", zorder=5)
        ax.annotate(f"claimed {100 * c.claimed:.0f} %", (c.eps, 100 * c.claimed), textcoords="offset points",
                    xytext=(8, 6), fontsize=8)
    ax.set_xlabel(f"ε ({norm})" if norm else "ε")
    ax.set_ylabel("accuracy % (95 % CI band)")
    ax.set_title(perturbation)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def _clean_accuracy(rows: Sequence[AccuracyRow], model: str) -> AccuracyRow | None:
    mine = [r for r in rows if r.model == model]
    return next((r for r in mine if r.family == "clean"),
                next((r for r in mine if r.family == "attack" and r.level == 0), None))


def _fitted_ylim(rows: Sequence[AccuracyRow], refs: Sequence[float]) -> tuple[float, float]:
    """A y-range (%) that holds every band and reference with a margin, at least 10 points tall."""
    lows = [100 * r.ci_low for r in rows] + list(refs)
    highs = [100 * r.ci_high for r in rows] + list(refs)
    lo, hi = max(0.0, min(lows) - 3), min(101.0, max(highs) + 3)
    if hi - lo < 10:
        mid = (lo + hi) / 2
        lo, hi = max(0.0, mid - 5), min(101.0, max(mid - 5, 0.0) + 10)
    return lo, hi


def corruption_grid(rows: Sequence[AccuracyRow], models: Sequence[str]) -> bytes | None:
    """Accuracy vs severity, one small panel per corruption (shared axes fitted to the data, not 0–100), each
    model's clean accuracy as a dashed line in its colour; None without corruptions."""
    names = sorted({r.perturbation for r in rows if r.family == "corruption"})
    if not names:
        return None
    clean = {m: c for m in models if (c := _clean_accuracy(rows, m)) is not None}
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.0 * cols, 2.4 * nrows + 0.6))
    axes = fig.subplots(nrows, cols, sharex=True, sharey=True, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_visible(False)
            continue
        _draw_curves(ax, _curves(rows, names[i]), models)
        for j, m in enumerate(models):
            if m in clean:
                ax.axhline(100 * clean[m].accuracy, color=f"C{j % 10}", linestyle="--", linewidth=1, alpha=0.8)
        ax.set_title(names[i], fontsize=9)
        ax.set_xticks([1, 2, 3, 4, 5])
    axes.flat[0].set_ylim(*_fitted_ylim([r for r in rows if r.family == "corruption"],
                                        [100 * c.accuracy for c in clean.values()]))
    for ax in axes[-1]:
        ax.set_xlabel("severity")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy %")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if clean:
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1))
        labels.append("clean accuracy")
    fig.legend(handles, labels, loc="upper center", ncol=max(1, len(labels)), fontsize=8, frameon=False)
    fig.subplots_adjust(top=1 - 0.5 / (2.4 * nrows + 0.6))
    return _png(fig)


def heatmap(cells: dict[tuple[str, str], AccuracyRow], models: Sequence[str], columns: Sequence[str],
            title: str) -> bytes:
    """Models (rows) × perturbations (columns), accuracy % written in each cell; blank where absent."""
    import numpy as np

    grid = np.full((len(models), len(columns)), np.nan)
    for (m, p), r in cells.items():
        if m in models and p in columns:
            grid[models.index(m), columns.index(p)] = 100 * r.accuracy
    fig = Figure(figsize=(max(4.0, 0.9 * len(columns) + 2.5), max(2.0, 0.55 * len(models) + 1.4)))
    ax = fig.add_subplot()
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), list(models), fontsize=8)
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy %")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def broken_by_bars(table: pa.Table, suite: str, models: Sequence[str]) -> bytes | None:
    """Per model, stacked bars per ε > 0: samples still robust, broken by each member, clean errors."""
    sub = table.filter(pc.and_(pc.equal(table["perturbation"], suite), pc.greater(table["level"], 0.0)))
    if sub.num_rows == 0:
        return None
    counts: dict[str, dict[float, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for r in sub.select(["model", "level", "correct", "broken_by"]).to_pylist():
        what = "robust" if r["correct"] else (r["broken_by"] or "clean error")
        counts[r["model"]][r["level"]][what] += 1
    shown = [m for m in models if m in counts]
    seen = {k for m in shown for c in counts[m].values() for k in c}
    attacks = sorted(seen - {"robust", "clean error"})
    kinds = ["robust", *attacks, *(["clean error"] if "clean error" in seen else [])]
    fig = Figure(figsize=(3.2 * len(shown) + 1.6, 3.6))
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    for ax, model in zip(axes, shown, strict=True):
        levels = sorted(counts[model])
        bottom = [0] * len(levels)
        labels = [f"{lv:g}" for lv in levels]
        for kind in kinds:
            heights = [counts[model][lv][kind] for lv in levels]
            color = ROBUST if kind == "robust" else (CLEAN_ERROR if kind == "clean error" else
                                                     ATTACK_COLOURS[attacks.index(kind) % len(ATTACK_COLOURS)])
            ax.bar(labels, heights, bottom=bottom, color=color, label=kind)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("ε")
    axes[0].set_ylabel("samples")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(f"{suite}: who broke the samples", fontsize=10)
    return _png(fig)


def transfer_heatmaps(matrix: pa.Table, title: str) -> bytes | None:
    """A transfer matrix (``gauntlet transfer``'s ``transfer.parquet``): one panel per ε, sources (rows) ×
    targets (columns), success rate % and its 95 % interval in each cell, the white-box diagonal outlined."""
    import numpy as np
    from matplotlib.patches import Rectangle

    if matrix.num_rows == 0 or "success" not in matrix.column_names:
        return None
    cells = matrix.to_pylist()
    order = (matrix.schema.metadata or {}).get(b"models", b"").decode().split(",")
    models = [m for m in order if m] or list(dict.fromkeys(c["target"] for c in cells))
    levels = sorted({c["level"] for c in cells})
    ncols = min(3, len(levels))
    nrows = math.ceil(len(levels) / ncols)
    side = 0.95 * len(models) + 1.6
    fig = Figure(figsize=(ncols * side + 1.2, nrows * (side - 0.3) + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im = None
    for k, level in enumerate(levels):
        ax = axes[k // ncols][k % ncols]
        grid = np.full((len(models), len(models)), np.nan)
        text: dict[tuple[int, int], str] = {}
        for c in cells:
            if c["level"] == level and c["source"] in models and c["target"] in models and c["n"]:
                i, j = models.index(c["source"]), models.index(c["target"])
                grid[i, j] = 100 * c["success"]
                text[i, j] = f"{100 * c['success']:.0f}\n[{100 * c['success_low']:.0f}, {100 * c['success_high']:.0f}]"
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="magma_r", aspect="equal")
        for (i, j), t in text.items():
            ax.text(j, i, t, ha="center", va="center", fontsize=7, color="white" if grid[i, j] > 55 else "black")
        for d in range(len(models)):
            ax.add_patch(Rectangle((d - 0.45, d - 0.45), 0.9, 0.9, fill=False, lw=2, ec="#00a0c8", ls="--"))
        ax.set_xticks(range(len(models)), models, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), models, fontsize=8)
        ax.set_xlabel("target", fontsize=8)
        if k % ncols == 0:
            ax.set_ylabel("source", fontsize=8)
        ax.set_title(f"ε = {level:g}", fontsize=9)
    for k in range(len(levels), nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), label="success rate %", shrink=0.8)
    fig.suptitle(title, fontsize=9, wrap=True)
    return _png(fig)
