"""The transfer matrix from a transfer sweep's rows: success rate per (source, target, ε) with 95 % intervals.

Definition. For target model T, source model S and ε > 0, over the sweep's samples:

* ``n`` = the samples T classifies correctly on the clean input (its ``clean`` rows);
* ``fooled`` = those of them that T misclassifies on the example crafted on S at ε (the transfer attack's rows;
  for S = T the white-box attack's own rows);
* success rate = fooled / n, with a Wilson 95 % interval (``engine.stats.intervals``).

Each cell also carries T's attacked accuracy on all samples under those examples (correct / all, Wilson 95 %),
the number a robustness table shows; like any attacked accuracy it is an upper bound on T's robust accuracy.
The diagonal's self-transfer rows must equal the white-box rows exactly (``pred``, ``correct``, ``margin``,
``perturbation_size``); ``diagonal_matches`` records whether they do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from engine.stats.intervals import wilson_interval

COMPARED = ("pred", "correct", "margin", "perturbation_size")  # a self-transfer row equals its white-box row


@dataclass(frozen=True)
class Cell:
    """One (source, target, ε) entry of the matrix."""

    source: str
    target: str
    level: float
    perturbation: str  # the rows it is read from: the transfer attack, or the white-box attack on the diagonal
    n: int  # samples the target classifies correctly clean
    fooled: int
    success: float
    success_low: float
    success_high: float
    n_all: int
    accuracy: float  # the target's attacked accuracy on all samples under these examples
    accuracy_low: float
    accuracy_high: float
    white_box: bool  # source == target
    diagonal_matches: bool | None  # self-transfer rows == white-box rows (diagonal only)


def _rows(table: pa.Table, model: str, pert: str) -> dict[str, np.ndarray]:
    """One (model, perturbation)'s columns, sorted by (level, sample_id)."""
    m = np.asarray(table.column("model").to_numpy(zero_copy_only=False) == model) & np.asarray(
        table.column("perturbation").to_numpy(zero_copy_only=False) == pert)
    cols = {c: table.column(c).to_numpy(zero_copy_only=False)[m] for c in ("level", "sample_id", *COMPARED)}
    order = np.lexsort((cols["sample_id"], cols["level"]))
    return {k: v[order] for k, v in cols.items()}


def rows_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Same samples at the same levels, and ``COMPARED`` columns equal bit for bit."""
    keys = ("level", "sample_id", *COMPARED)
    return all(len(a[k]) == len(b[k]) and bool(np.array_equal(a[k], b[k])) for k in keys)


def _cell(source: str, target: str, level: float, pert: str, clean_ok: dict[int, bool],
          rows: dict[str, np.ndarray], match: bool | None) -> Cell:
    at = rows["level"] == level
    ids, correct = rows["sample_id"][at], rows["correct"][at].astype(bool)
    base = np.array([clean_ok.get(int(i), False) for i in ids], dtype=bool)
    n, fooled, n_all, ok = int(base.sum()), int((base & ~correct).sum()), len(ids), int(correct.sum())
    s_lo, s_hi = wilson_interval(fooled, n) if n else (float("nan"), float("nan"))
    a_lo, a_hi = wilson_interval(ok, n_all) if n_all else (float("nan"), float("nan"))
    return Cell(source, target, float(level), pert, n, fooled, fooled / n if n else float("nan"), s_lo, s_hi,
                n_all, ok / n_all if n_all else float("nan"), a_lo, a_hi, source == target, match)


def transfer_matrix(table: pa.Table, models: Sequence[str], attack: str, transfer_of: dict[str, str]) -> list[Cell]:
    """Every (source, target, ε > 0) cell, sources and targets in ``models`` order; ``transfer_of`` maps a source
    model to the name of the transfer attack crafted on it."""
    cells = []
    for target in models:
        clean = _rows(table, target, "clean")
        clean_ok = {int(i): bool(c) for i, c in zip(clean["sample_id"], clean["correct"], strict=True)}
        white = _rows(table, target, attack)
        match = rows_equal(white, _rows(table, target, transfer_of[target]))
        levels = sorted({float(v) for v in white["level"] if v > 0})
        for source in models:
            own = source == target
            pert = attack if own else transfer_of[source]
            rows = white if own else _rows(table, target, pert)
            for level in levels:
                cells.append(_cell(source, target, level, pert, clean_ok, rows, match if own else None))
    return cells


def to_table(cells: Sequence[Cell], meta: dict[str, str]) -> pa.Table:
    """The matrix as an Arrow table (one row per cell), ``meta`` in the schema's metadata."""
    rows: list[dict[str, Any]] = [asdict(c) for c in cells]
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    return table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})


def _pct(c: Cell) -> str:
    if c.n == 0:
        return "n/a (n=0)"
    return f"{100 * c.success:5.1f} [{100 * c.success_low:.1f}, {100 * c.success_high:.1f}]"


def render_matrix(cells: Sequence[Cell], models: Sequence[str], attack: str) -> str:
    """The terminal block: per ε, sources (rows) × targets (columns), success rate % [95 % CI], diagonal marked."""
    width = max(20, *(len(m) + 1 for m in models))
    src_w = max(8, *(len(m) for m in models)) + 2
    lines = [f"Transfer matrix ({attack}): success rate % [95% CI] = share of the target's clean-correct samples "
             "that the source's examples fool; * = the white-box diagonal"]
    by_key = {(c.source, c.target, c.level): c for c in cells}
    for level in sorted({c.level for c in cells}):
        lines.append("")
        lines.append(f"{'ε=' + format(level, 'g'):<{src_w}}" + "".join(f"{t:>{width}}" for t in models))
        for s in models:
            row = f"{s:<{src_w}}"
            for t in models:
                c = by_key.get((s, t, level))
                text = "" if c is None else _pct(c) + ("*" if c.white_box else " ")
                row += f"{text:>{width}}"
            lines.append(row.rstrip())
    n_by_target = {c.target: c.n for c in cells}
    lines.append("")
    lines.append("n (clean-correct samples per target): " + ", ".join(f"{t} {n_by_target.get(t, 0)}" for t in models))
    bad = sorted({c.target for c in cells if c.diagonal_matches is False})
    if bad:
        lines.append(f"warning: the transfer from {', '.join(bad)} to itself differs from its white-box rows "
                     "(non-deterministic kernels?); the diagonal shows the white-box rows")
    else:
        lines.append("diagonal: each model's transfer from itself equals its white-box rows exactly")
    return "\n".join(lines)
