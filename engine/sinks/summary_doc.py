"""The machine-readable summary of a run folder (``report/summary.json``): every number the report shows.

Pure: a loaded ``RunFolder`` in, a JSON-ready dict out. The schema is documented in
docs/results.md ("summary.json"); bump ``SUMMARY_SCHEMA_VERSION`` when it changes.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.stats import budget, leaderboard
from engine.stats import corruption as cm
from engine.stats.aggregate import AccuracyRow, accuracy_area, accuracy_table, worst_case
from engine.stats.compare import PairedRow, norms_of, outcomes_of, pair_headline, paired_comparison, with_bound_note
from engine.stats.intervals import clopper_pearson_interval
from engine.store.rundir import RunFolder

SUMMARY_SCHEMA_VERSION = "3"  # 3: headline, leaderboard, runs; 2: comparisons A = earlier model, Bonferroni
ALL_PAIRS_UP_TO = 4  # models; above, the paired comparisons cover the neighbours in the ranking only


def ordered_models(run: RunFolder) -> list[str]:
    names = list(dict.fromkeys(t["model"] for t in run.tasks))
    return names + sorted(set(run.rows["model"].to_pylist()) - set(names)) if run.rows.num_rows else names


def ordered_perturbations(run: RunFolder) -> list[str]:
    names = list(dict.fromkeys(t["perturbation"] for t in run.tasks))
    return names + sorted(set(run.rows["perturbation"].to_pylist()) - set(names)) if run.rows.num_rows else names


def accuracy_entry(r: AccuracyRow) -> dict[str, Any]:
    cp = clopper_pearson_interval(r.n_correct, r.n)
    return {"model": r.model, "perturbation": r.perturbation, "family": r.family, "norm": r.norm,
            "level": r.level, "n": r.n, "n_correct": r.n_correct, "accuracy": r.accuracy,
            "wilson": [r.ci_low, r.ci_high], "clopper_pearson": list(cp)}


def clean_row(rows: Sequence[AccuracyRow], model: str) -> AccuracyRow | None:
    """The model's clean accuracy: the ``clean`` perturbation, else any attack at ε = 0."""
    mine = [r for r in rows if r.model == model]
    return next((r for r in mine if r.family == "clean"),
                next((r for r in mine if r.family == "attack" and r.level == 0), None))


def default_eps(rows: Sequence[AccuracyRow]) -> float | None:
    """The ε > 0 shared by the most attack perturbations (the lower median of ties): the heat map's level."""
    per_level = Counter(lv for _, lv in {(r.perturbation, r.level) for r in rows if r.family == "attack"
                                         and r.level > 0})
    if not per_level:
        return None
    top = max(per_level.values())
    tied = sorted(lv for lv, k in per_level.items() if k == top)
    return tied[(len(tied) - 1) // 2]


def default_severity(rows: Sequence[AccuracyRow], wanted: int | None = None) -> int | None:
    """The heat map's severity: ``wanted`` if given, else 3 if any corruption was run at it, else the lower
    median of the severities run; None without corruptions."""
    if wanted is not None:
        return wanted
    run = sorted({int(r.level) for r in rows if r.family == "corruption"})
    return None if not run else (3 if 3 in run else run[(len(run) - 1) // 2])


def worst_case_entries(run: RunFolder, rows: Sequence[AccuracyRow]) -> list[dict[str, Any]]:
    """Per norm and ε shared by ≥ 2 attacks: per model, samples robust to every one of them."""
    by: dict[tuple[str | None, float], set[str]] = defaultdict(set)
    for r in rows:
        if r.family == "attack" and r.level > 0:
            by[(r.norm, r.level)].add(r.perturbation)
    out = []
    for (norm, level), perts in sorted(by.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if len(perts) < 2:
            continue
        for w in worst_case(run.rows, perts, level):
            out.append({"model": w.model, "norm": norm, "level": level, "perturbations": list(w.perturbations),
                        "n": w.n, "n_robust": w.n_robust, "accuracy": w.accuracy, "excluded": w.excluded,
                        "wilson": [w.ci_low, w.ci_high]})
    return out


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def corruption_entries(rows: Sequence[AccuracyRow], models: Sequence[str],
                       baseline: str | None) -> list[dict[str, Any]]:
    """Mean corruption accuracy and, where defined, mCE / relative mCE against ``baseline`` (first model)."""
    errs: dict[str, dict[str, np.ndarray]] = {}
    for r in rows:
        if r.family == "corruption":
            errs.setdefault(r.model, {}).setdefault(r.perturbation, np.full(5, np.nan))[int(r.level) - 1] = \
                1 - r.accuracy
    if not errs:
        return []
    base = baseline if baseline in errs else next(m for m in models if m in errs)
    base_clean = clean_row(rows, base)
    out = []
    for model in [m for m in models if m in errs]:
        clean = clean_row(rows, model)
        entry: dict[str, Any] = {"model": model, "baseline": base,
                                 "mean_corruption_accuracy": _metric(cm.mean_corruption_accuracy, errs[model]),
                                 "mce": _metric(cm.mean_corruption_error, errs[model], errs[base]),
                                 "relative_mce": None}
        if clean is not None and base_clean is not None:
            entry["relative_mce"] = _metric(cm.relative_mean_corruption_error, errs[model], 1 - clean.accuracy,
                                            errs[base], 1 - base_clean.accuracy)
        out.append(entry)
    return out


def _metric(fn: Any, *args: Any) -> float | None:
    """``fn(*args)`` or None where the metric is undefined (e.g. a baseline without errors): never a made-up number."""
    try:
        return _finite(float(fn(*args)))
    except (ValueError, KeyError, ZeroDivisionError):
        return None


def comparisons(run: RunFolder, models: Sequence[str], ranking: Sequence[str] = ()) -> list[PairedRow]:
    """Every pair of models in the run's order (A = the earlier, difference A − B), every row primary; above
    ``ALL_PAIRS_UP_TO`` models, each model against the next in ``ranking`` (A = the higher ranked)."""
    if len(models) > ALL_PAIRS_UP_TO and len(ranking) > 1:
        pairs = list(itertools.pairwise(ranking))
    else:
        pairs = [(models[i], models[j]) for i in range(len(models)) for j in range(i + 1, len(models))]
    return paired_comparison(run.rows, pairs) if pairs else []


def build_board(run: RunFolder, models: Sequence[str], sort: str | None) -> leaderboard.Leaderboard:
    """The leaderboard of the run's models (each model's per-sample outcomes, every column)."""
    return leaderboard.build({m: outcomes_of(run.rows, m) for m in models}, norms_of([run.rows]), sort)


def headline(board: leaderboard.Leaderboard, rows: Sequence[PairedRow]) -> list[str]:
    """The decision in one or two sentences: two models, their paired verdict over every primary row; more,
    the ranking with its neighbour tests and the verdict between the first two; one, its numbers."""
    top = set(board.ranking[:2])
    pair = [r for r in rows if {r.model_a, r.model_b} == top] if len(top) == 2 else []
    if len(board.models) == 2:
        return with_bound_note([pair_headline(rows)], rows)
    return with_bound_note([leaderboard.ranking_sentence(board)] + ([pair_headline(pair)] if pair else []), rows)


def claim_eps(verdicts: dict[str, Any] | None, rows: Sequence[AccuracyRow]) -> float | None:
    """The ε of the first checked claim that the run's attacks were evaluated at (the heat map's level)."""
    levels = {r.level for r in rows if r.family == "attack"}
    for c in (verdicts or {}).get("claims") or []:
        eps = ((c or {}).get("threat_model") or {}).get("eps") if isinstance(c, dict) else None
        if isinstance(eps, int | float) and any(abs(eps - lv) < 1e-9 for lv in levels):
            return float(eps)
    return None


def _models(run: RunFolder, rows: Sequence[AccuracyRow], models: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": m, "checkpoint_sha256": run.checkpoints.get(m),
             "checkpoint": (run.config.get("model", {}).get(m) or {}).get("checkpoint"),
             "clean": None if (c := clean_row(rows, m)) is None else accuracy_entry(c)} for m in models]


def build_summary(run: RunFolder, eps: float | None = None, severity: int | None = None, sort: str | None = None,
                  sources: Sequence[dict[str, Any]] | None = None, unfinished: str | None = None) -> dict[str, Any]:
    """The whole summary document of ``run`` (see docs/results.md for the schema); ``sources``: the runs a
    gathered run came from (``unfinished``: their status lines), else ``run`` itself."""
    rows = accuracy_table(run.rows)
    models, perts = ordered_models(run), ordered_perturbations(run)
    cfg_perts = run.config.get("perturbation", {}) or {}
    board = build_board(run, models, sort)
    paired = comparisons(run, models, board.ranking)
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "headline": headline(board, paired),
        "run_id": run.run_id,
        "out_dir": str(run.out_dir),
        "runs": list(sources) if sources is not None else [
            {"label": None, "out_dir": str(run.out_dir), "run_id": run.run_id, "command": run.command,
             "unfinished": run.status(), "models": {m: m for m in models}}],
        "command": run.command,
        "tasks": {"planned": len(run.tasks), "finished": run.done},
        "unfinished": run.status() if sources is None else unfinished,  # null when finished; else how to resume
        "datasets": sorted(set(run.rows["dataset"].to_pylist())) if run.rows.num_rows else [],
        "n_rows": run.rows.num_rows,
        "models": _models(run, rows, models),
        "perturbations": [{"name": p, "family": next((r.family for r in rows if r.perturbation == p), None),
                           "norm": next((r.norm for r in rows if r.perturbation == p), None),
                           "tags": (cfg_perts.get(p) or {}).get("tags")} for p in perts],
        "heatmap_level": {"eps": eps if eps is not None else (claim_eps(run.verdicts, rows) or default_eps(rows)),
                          "severity": default_severity(rows, severity)},
        "accuracy": [accuracy_entry(r) for r in rows],
        "area_under_curve": [{"model": a.model, "perturbation": a.perturbation, "levels": list(a.levels),
                              "area": a.area, "normalised": a.normalised, "n_min": a.n_min}
                             for a in accuracy_area(rows)],
        "worst_case": worst_case_entries(run, rows),
        "corruption": corruption_entries(rows, models, run.config.get("corruption_baseline")),
        "leaderboard": leaderboard.as_dict(board),
        "comparisons": [r.as_dict() for r in paired],
        "flags": run.flags,
        "verdicts": run.verdicts,
        "budget_curves": budget_entries(run),
    }


def budget_entries(run: RunFolder) -> list[dict[str, Any]]:
    """Budget curves of the query-based attacks (engine/stats/budget.py), [] when the run has none."""
    t = run.rows
    if t.num_rows == 0 or "queries_to_success" not in t.column_names:
        return []
    cols = ["model", "perturbation", "level", "correct", "queries", "queries_to_success"]
    return [budget.as_dict(c) for c in budget.budget_curves(t.select(cols).to_pylist())]
