"""Corruption-robustness metrics (Hendrycks & Dietterich, ICLR 2019) as pure functions over arrays.

``E[c][s-1]`` is a model's top-1 error on corruption ``c`` at severity ``s``. The
corruption error normalises by a baseline model, ``CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c}``;
mCE averages CE over corruptions; relative mCE subtracts each model's clean error
first. CIFAR-10-C papers usually report plain mean accuracy instead. Values are
fractions (multiply by 100 for the papers' percentages).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from engine.errors import ConfigError

# AlexNet's ImageNet-C top-1 error per corruption, averaged over severities 1-5: the
# standard mCE baseline (github.com/hendrycks/robustness; the ALEXNET_ERR list of
# google-research/augmix imagenet.py). With all five severities, Σ_s E_base = 5 × mean.
ALEXNET_IMAGENET_C: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
# AlexNet's clean ImageNet top-1 error as the paper rounds it (43.5 %), for relative mCE.
ALEXNET_CLEAN_ERROR = 0.435

BASELINES: dict[str, Mapping[str, float]] = {"alexnet": ALEXNET_IMAGENET_C}

Errors = Mapping[str, Any]  # corruption → five per-severity errors (or one value for all five)


def error_by_severity(
    correct: Sequence[bool] | np.ndarray,
    corruption: Sequence[str] | np.ndarray,
    severity: Sequence[int] | np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-sample rows → ``{corruption: [E_1, …, E_5]}`` (NaN where a severity has no rows)."""
    ok = np.asarray(correct, dtype=bool)
    names = np.asarray(corruption).astype(str)
    sev = np.asarray(severity).astype(np.int64)
    if not (ok.shape == names.shape == sev.shape) or ok.ndim != 1:
        raise ValueError("correct, corruption and severity must be 1-D arrays of equal length")
    if sev.size and (sev.min() < 1 or sev.max() > 5):
        raise ValueError("severities must be integers 1-5")
    out: dict[str, np.ndarray] = {}
    for name in sorted(set(names.tolist())):
        row = np.full(5, np.nan)
        mask = names == name
        for s in range(1, 6):
            m = mask & (sev == s)
            if m.any():
                row[s - 1] = 1.0 - ok[m].mean()
        out[name] = row
    return out


def _severity_sum(err: Sequence[float] | np.ndarray | float, like: np.ndarray) -> float:
    """Σ_s over the severities present in ``like``; a scalar stands for the same error at every severity."""
    present = ~np.isnan(like)
    if np.ndim(err) == 0:
        return float(np.asarray(err, dtype=np.float64)) * int(present.sum())
    arr = np.asarray(err, dtype=np.float64)
    if arr.shape != like.shape:
        raise ValueError(f"expected {like.shape[0]} per-severity errors, got {arr.shape}")
    if np.isnan(arr[present]).any():
        raise ValueError("the baseline lacks a severity the model was evaluated at")
    return float(arr[present].sum())


def corruption_error(
    err: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray | float
) -> float:
    """CE_c = Σ_s E_{s,c} / Σ_s E^base_{s,c} over the severities the model has (NaN entries skipped)."""
    e = np.asarray(err, dtype=np.float64)
    denom = _severity_sum(baseline, e)
    if denom <= 0:
        raise ValueError("baseline error sums to zero: CE is undefined")
    return float(np.nansum(e)) / denom


def relative_corruption_error(
    err: Sequence[float] | np.ndarray,
    clean_err: float,
    baseline: Sequence[float] | np.ndarray | float,
    baseline_clean_err: float,
) -> float:
    """Relative CE_c = Σ_s (E_{s,c} − E_clean) / Σ_s (E^base_{s,c} − E^base_clean)."""
    e = np.asarray(err, dtype=np.float64)
    n = int((~np.isnan(e)).sum())
    denom = _severity_sum(baseline, e) - n * baseline_clean_err
    if denom == 0:
        raise ValueError("baseline's corruption error equals its clean error: relative CE is undefined")
    return (float(np.nansum(e)) - n * clean_err) / denom


def _baseline(baseline: Errors | str) -> Errors:
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise ConfigError(f"unknown mCE baseline {baseline!r}; known: {', '.join(sorted(BASELINES))}")
        return BASELINES[baseline]
    return baseline


def _names(errors: Errors, baseline: Errors, corruptions: Iterable[str] | None) -> list[str]:
    names = list(corruptions) if corruptions is not None else sorted(errors)
    missing = [c for c in names if c not in baseline]
    if missing:
        raise ConfigError(f"the mCE baseline has no error for {', '.join(missing)}")
    absent = [c for c in names if c not in errors]
    if absent:
        raise ValueError(f"no errors for {', '.join(absent)}")
    if not names:
        raise ValueError("no corruptions to average over")
    return names


def ce_table(
    errors: Errors, baseline: Errors | str = "alexnet", corruptions: Iterable[str] | None = None
) -> dict[str, float]:
    """``{corruption: CE_c}`` for every corruption (default: all in ``errors``)."""
    base = _baseline(baseline)
    return {
        c: corruption_error(np.asarray(errors[c], dtype=np.float64), base[c])
        for c in _names(errors, base, corruptions)
    }


def mean_corruption_error(
    errors: Errors, baseline: Errors | str = "alexnet", corruptions: Iterable[str] | None = None
) -> float:
    """mCE: the mean of CE_c over ``corruptions`` (default: every corruption in ``errors``)."""
    return float(np.mean(list(ce_table(errors, baseline, corruptions).values())))


def relative_mean_corruption_error(
    errors: Errors,
    clean_err: float,
    baseline: Errors | str = "alexnet",
    baseline_clean_err: float | None = None,
    corruptions: Iterable[str] | None = None,
) -> float:
    """Relative mCE: mean over corruptions of the relative CE (needs both models' clean errors)."""
    base = _baseline(baseline)
    if baseline_clean_err is None:
        if baseline != "alexnet":
            raise ConfigError("relative mCE needs baseline_clean_err for a custom baseline")
        baseline_clean_err = ALEXNET_CLEAN_ERROR
    values = [
        relative_corruption_error(
            np.asarray(errors[c], dtype=np.float64), clean_err, base[c], baseline_clean_err
        )
        for c in _names(errors, base, corruptions)
    ]
    return float(np.mean(values))


def mean_corruption_accuracy(errors: Errors, corruptions: Iterable[str] | None = None) -> float:
    """CIFAR-10-C-style score: mean accuracy over every (corruption, severity) evaluated."""
    names = list(corruptions) if corruptions is not None else sorted(errors)
    if not names:
        raise ValueError("no corruptions to average over")
    vals = np.concatenate([np.atleast_1d(np.asarray(errors[c], dtype=np.float64)) for c in names])
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        raise ValueError("no errors to average")
    return float(1.0 - vals.mean())


def strip_preset_prefix(errors: Errors, prefix: str = "ic_") -> dict[str, Any]:
    """Map config keys such as ``ic_gaussian_noise`` back to corruption names (baseline tables use those)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in errors.items()}
