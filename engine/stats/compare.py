"""Paired comparison of checkpoints on the same samples: A − B per (perturbation, level), exact McNemar, Holm.

``paired_comparison`` is pure (rows in, rows out); ``compare_runs`` loads one or
several run folders, refuses to pair different datasets, and renders the table that
``gauntlet compare`` prints. The statistics are explained in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import GauntletError
from engine.stats.intervals import PairedCounts, format_p, holm_adjust, mcnemar_exact, newcombe_paired_interval

ALPHA = 0.05


@dataclass(frozen=True)
class PairedRow:
    """One (perturbation, level) of model A against model B on the samples both were evaluated on."""

    model_a: str
    model_b: str
    perturbation: str
    family: str
    level: float
    counts: PairedCounts
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    only_in_a: int  # samples evaluated for A but not B (excluded)
    only_in_b: int

    @property
    def n(self) -> int:
        return self.counts.n

    @property
    def accuracy_a(self) -> float:
        return (self.counts.both + self.counts.only_a) / self.n if self.n else float("nan")

    @property
    def accuracy_b(self) -> float:
        return (self.counts.both + self.counts.only_b) / self.n if self.n else float("nan")

    @property
    def difference(self) -> float:
        return self.counts.difference

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(counts=asdict(self.counts), n=self.n, accuracy_a=self.accuracy_a, accuracy_b=self.accuracy_b,
                 difference=self.difference, sentence=sentence(self))
        return d


def json_safe(x: Any) -> Any:
    """NaN (an undefined number, e.g. a difference over zero shared samples) becomes null: valid JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    return x


def level_phrase(family: str, level: float) -> str:
    if family == "clean":
        return "on clean inputs"
    if family == "corruption":
        return f"at severity {int(level)}"
    return f"at ε = {level:g}"


def sentence(row: PairedRow) -> str:
    """The row in words, winner first when Holm-adjusted p < 0.05, else 'no significant difference'."""
    where = f"{'' if row.family == 'clean' else f'under {row.perturbation} '}{level_phrase(row.family, row.level)}"
    p = format_p(row.p_holm) + " (Holm)"
    if row.n == 0:
        return f"{row.model_a} vs {row.model_b} {where}: no sample evaluated for both"
    if row.p_holm < ALPHA and row.difference != 0:
        sign = 1 if row.difference > 0 else -1
        win, lose = (row.model_a, row.model_b) if sign > 0 else (row.model_b, row.model_a)
        lo, hi = sorted((sign * row.ci_low, sign * row.ci_high))
        verb = "more accurate" if row.family == "clean" else "more robust"
        return (f"{win} is {verb} than {lose} {where}: {100 * sign * row.difference:+.1f} pp "
                f"[{100 * lo:.1f}, {100 * hi:.1f}], {p}")
    return (f"no significant difference between {row.model_a} and {row.model_b} {where}: "
            f"{100 * row.difference:+.1f} pp [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}], {p}")


def _outcomes(table: pa.Table, model: str) -> dict[tuple[str, str, float], dict[tuple[str, int], bool]]:
    """``{(perturbation, family, level): {(dataset, sample_id): correct}}`` for one model."""
    out: dict[tuple[str, str, float], dict[tuple[str, int], bool]] = defaultdict(dict)
    cols = table.select(["model", "perturbation", "family", "level", "dataset", "sample_id", "correct"])
    for r in cols.filter(pc.equal(cols["model"], model)).to_pylist():
        out[(r["perturbation"], r["family"], float(r["level"]))][(r["dataset"], r["sample_id"])] = bool(r["correct"])
    return out


def _pair(model_a: str, model_b: str, key: tuple[str, str, float], a: dict[tuple[str, int], bool],
          b: dict[tuple[str, int], bool]) -> PairedRow:
    common = a.keys() & b.keys()
    cells = [0, 0, 0, 0]  # both, only A, only B, neither
    for s in common:
        cells[(0 if a[s] else 2) + (0 if b[s] else 1)] += 1
    counts = PairedCounts(*cells)
    lo, hi = newcombe_paired_interval(counts)
    p = mcnemar_exact(counts.only_a, counts.only_b)
    return PairedRow(model_a, model_b, key[0], key[1], key[2], counts, lo, hi, p, p,
                     len(a.keys() - common), len(b.keys() - common))


def paired_comparison(table: pa.Table, pairs: Sequence[tuple[str, str]]) -> list[PairedRow]:
    """Rows for every (A, B) in ``pairs`` and every (perturbation, level) both have; Holm across all of them.

    Attack rows at ε = 0 are left out when the table has a clean perturbation (they
    repeat it). Samples are matched by (dataset, sample_id); those present for only one
    model are excluded and counted in ``only_in_a`` / ``only_in_b``.
    """
    has_clean = table.num_rows > 0 and "clean" in set(table["family"].to_pylist())
    cache: dict[str, dict[tuple[str, str, float], dict[tuple[str, int], bool]]] = {}
    rows: list[PairedRow] = []
    for model_a, model_b in pairs:
        oa = cache.setdefault(model_a, _outcomes(table, model_a))
        ob = cache.setdefault(model_b, _outcomes(table, model_b))
        for key in sorted(oa.keys() & ob.keys()):
            if has_clean and key[1] == "attack" and key[2] == 0:
                continue
            rows.append(_pair(model_a, model_b, key, oa[key], ob[key]))
    adjusted = holm_adjust([r.p_value for r in rows])
    return [replace(r, p_holm=q) for r, q in zip(rows, adjusted, strict=True)]


def render_paired(rows: Sequence[PairedRow]) -> str:
    """A fixed-width table of the rows, then one sentence per row."""
    if not rows:
        return "paired comparison: no (perturbation, level) evaluated for both models"
    head = ("A", "B", "perturbation", "level", "n", "acc A %", "acc B %", "A − B pp [95% CI]", "A only", "B only",
            "p (McNemar)", "p (Holm)", "excluded")
    body = []
    for r in rows:
        lvl = "-" if r.family == "clean" else (f"s{int(r.level)}" if r.family == "corruption" else f"ε={r.level:g}")
        body.append((r.model_a, r.model_b, r.perturbation, lvl, str(r.n), f"{100 * r.accuracy_a:.1f}",
                     f"{100 * r.accuracy_b:.1f}",
                     f"{100 * r.difference:+.1f} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]",
                     str(r.counts.only_a), str(r.counts.only_b), f"{r.p_value:.3g}", f"{r.p_holm:.3g}",
                     f"{r.only_in_a}+{r.only_in_b}"))
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
             for x in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = ["", "A − B: Newcombe's hybrid score interval for paired proportions; p: exact McNemar on the "
             "discordant pairs (A only = A right, B wrong); Holm-adjusted across the "
             f"{len(rows)} rows above; excluded = samples evaluated for only A + only B.", ""]
    return "\n".join([*lines, *notes, *(sentence(r) for r in rows)])


def _dataset_identity(run: Any) -> tuple[tuple[str, ...], str]:
    """The dataset names in a run's rows and its dataset config (as canonical JSON)."""
    names = tuple(sorted(set(run.rows["dataset"].to_pylist()))) if run.rows.num_rows else ()
    return names, json.dumps(run.config.get("dataset"), sort_keys=True, default=str)


def merge_runs(out_dirs: Sequence[str | Path]) -> tuple[pa.Table, list[str]]:
    """All rows of the runs as one table plus the model labels in order, refusing different datasets.

    A model name already seen in an earlier run is relabelled ``name@<folder name>``.
    """
    from engine.store.rundir import load_run

    runs = [load_run(d) for d in out_dirs]
    ref = _dataset_identity(runs[0])
    for run in runs[1:]:
        other = _dataset_identity(run)
        if other != ref:
            raise GauntletError(
                f"cannot pair runs over different datasets: {runs[0].out_dir} has {', '.join(ref[0]) or 'no rows'} "
                f"({ref[1]}), {run.out_dir} has {', '.join(other[0]) or 'no rows'} ({other[1]}); a paired comparison "
                "needs the same samples (matched by dataset and sample_id): run both models on one dataset config")
    tables, labels = [], []
    for run in runs:
        table = run.rows
        names = list(dict.fromkeys(table["model"].to_pylist()))
        mapping = {m: (m if m not in labels else f"{m}@{run.out_dir.name}") for m in names}
        if any(k != v for k, v in mapping.items()):
            table = table.set_column(table.schema.get_field_index("model"), "model",
                                     pa.array([mapping[m] for m in table["model"].to_pylist()], pa.string()))
        labels += list(mapping.values())
        tables.append(table)
    return pa.concat_tables(tables), labels


def _pairs(labels: Sequence[str], baseline: str | None) -> list[tuple[str, str]]:
    """Every model against ``baseline`` (A = the other, B = baseline), or all pairs in order without one."""
    if baseline is not None:
        if baseline not in labels:
            raise GauntletError(f"--baseline {baseline!r} is not among the models: {', '.join(labels)}")
        return [(m, baseline) for m in labels if m != baseline]
    return [(labels[j], labels[i]) for i in range(len(labels)) for j in range(i + 1, len(labels))]


def compare_runs(out_dirs: Sequence[str | Path], baseline: str | None = None) -> list[PairedRow]:
    """Paired rows for the models of one or several run folders."""
    table, labels = merge_runs(out_dirs)
    if len(labels) < 2:
        raise GauntletError(f"need at least two models to compare, found {', '.join(labels) or 'none'} in "
                            f"{', '.join(str(d) for d in out_dirs)}")
    return paired_comparison(table, _pairs(labels, baseline))


def main(argv: Sequence[str]) -> int:
    """``gauntlet compare OUT_A [OUT_B …] [--baseline MODEL] [--json FILE]``: print the paired table."""
    parser = argparse.ArgumentParser(prog="gauntlet compare", description=(
        "Compare checkpoints on the same samples: A − B per (perturbation, level) with a 95 % paired interval, "
        "exact McNemar p-values and Holm adjustment. Samples are matched by dataset and sample_id."))
    parser.add_argument("out_dirs", nargs="+", help="run folders (the out_dir of finished sweeps)")
    parser.add_argument("--baseline", help="compare every other model against this one (default: all pairs)")
    parser.add_argument("--json", dest="json_path", help="also write the rows as JSON to this file")
    args = parser.parse_args(list(argv))
    try:
        rows = compare_runs(args.out_dirs, args.baseline)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_paired(rows))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(json_safe([r.as_dict() for r in rows]), indent=2) + "\n")
    return 0
