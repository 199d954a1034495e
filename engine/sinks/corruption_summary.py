"""The corruption block of the summary: mean corruption accuracy, mCE and relative mCE per model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.stats import corruption as cm
from engine.stats.aggregate import AccuracyRow


def _errors(rows: Sequence[AccuracyRow], model: str) -> tuple[dict[str, np.ndarray], float | None]:
    """``{corruption: [E_1..E_5]}`` and the clean error of ``model`` (None without a clean row)."""
    errors: dict[str, np.ndarray] = {}
    clean = None
    for r in rows:
        if r.model != model:
            continue
        if r.family == "corruption":
            errors.setdefault(r.perturbation, np.full(5, np.nan))[int(r.level) - 1] = 1 - r.accuracy
        elif r.family == "clean":
            clean = 1 - r.accuracy
    return errors, clean


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def _safe(fn, *args: object) -> float | None:  # type: ignore[no-untyped-def]
    try:
        return float(fn(*args))
    except (ValueError, KeyError):
        return None  # e.g. a baseline with zero error: CE is undefined, say so rather than divide


def render_corruption_summary(rows: Sequence[AccuracyRow], models: Sequence[str], baseline: str | None) -> str:
    """Empty when the sweep has no corruption rows.

    ``baseline`` names the model whose errors normalise CE (default: the first
    model), or ``alexnet`` for ImageNet-C's published AlexNet errors (``ic_``
    config keys are mapped back to corruption names).
    """
    if not any(r.family == "corruption" for r in rows):
        return ""
    base_name = baseline or models[0]
    if base_name == "alexnet":
        base_err: cm.Errors | str = "alexnet"
        base_clean = cm.ALEXNET_CLEAN_ERROR
    else:
        raw, base_clean_opt = _errors(rows, base_name)
        base_err, base_clean = raw, (base_clean_opt if base_clean_opt is not None else float("nan"))
    head = ["model", "clean acc %", "mean corruption acc %", f"mCE % (vs {base_name})", "relative mCE %"]
    lines = []
    for model in models:
        errors, clean = _errors(rows, model)
        if not errors:
            continue
        if base_name == "alexnet":
            errors = cm.strip_preset_prefix(errors)
        mca = _safe(cm.mean_corruption_accuracy, errors)
        mce = _safe(cm.mean_corruption_error, errors, base_err)
        rel = None
        if clean is not None and np.isfinite(base_clean):
            rel = _safe(cm.relative_mean_corruption_error, errors, clean, base_err, base_clean)
        lines.append([model, _fmt(None if clean is None else 1 - clean), _fmt(mca), _fmt(mce), _fmt(rel)])
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True)))
           for x in [head, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    if any("n/a" in line[3:] for line in lines):
        out.append(f"n/a: undefined because {base_name} makes no error on some corruption (CE), or its corruption "
                   "error equals its clean error, or a clean row is missing (relative mCE); "
                   "choose another corruption_baseline=<model> or add perturbation clean")
    return "corruption robustness\n" + "\n".join(out)
