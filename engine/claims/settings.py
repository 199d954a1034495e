"""The settings of one ``gauntlet verify`` run from the claim file and the command line: sample count, the verdict
rule's resolution and tolerance, the attack budget scale and the escalation ladder's budget.

Each bad value is one ``ConfigError`` naming the override and what it takes, before any compute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.claims.decide import Rule
from engine.claims.ladder import LADDER_EVALS
from engine.claims.schema import ClaimFile
from engine.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """What the verdicts are decided with (docs/claims.md)."""

    n_examples: int | None
    resolution: float
    tolerance: float
    budget: float  # ``budget=``: the attacks' iterations and queries × this (< 1: can refute, never confirm)
    ladder_evals: int  # ``ladder_budget=``: model evaluations per sample for the whole escalation ladder

    def rule(self, upper_bound: bool = True) -> Rule:
        return Rule(self.resolution, self.tolerance, upper_bound)


def settings(cf: ClaimFile, claim_over: Mapping[str, str]) -> Settings:
    """The run's settings: the claim file's, overridden from the command line."""
    return Settings(_int_override(claim_over.get("n_examples")),
                    _fraction("resolution", claim_over.get("resolution"), cf.resolution, 0.0, 1.0),
                    _fraction("tolerance", claim_over.get("tolerance"), cf.tolerance, -1e-12, 0.5),
                    _budget_override(claim_over.get("budget")),
                    _ladder_override(claim_over.get("ladder_budget")))


def _int_override(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"n_examples={value!r} must be a positive integer") from None
    if n < 1:
        raise ConfigError(f"n_examples={value!r} must be a positive integer")
    return n


def _fraction(key: str, value: str | None, default: float, low: float, high: float) -> float:
    """A fraction in (``low``, ``high``) (exclusive), or the claim file's ``default``."""
    if value is None:
        return default
    try:
        r = float(value)
    except ValueError:
        r = float("nan")
    if not low < r < high:
        example = "0.1 for 10 pp" if key == "resolution" else "0.02 for 2 pp"
        lower = "0" if low < 0 else f"{low:g}"
        raise ConfigError(f"{key}={value!r} must be a fraction in [{lower}, {high:g}), e.g. {example}"
                          if low < 0 else f"{key}={value!r} must be a fraction in ({lower}, {high:g}), e.g. {example}")
    return r


def _budget_override(value: str | None) -> float:
    if value is None:
        return 1.0
    try:
        b = float(value)
    except ValueError:
        b = float("nan")
    if not 0 < b <= 1:
        raise ConfigError(f"budget={value!r} must be a fraction in (0, 1] of every attack's iterations and "
                          "queries (1 = the full AutoAttack budget; below 1 a verdict can refute, never confirm)")
    return b


def _ladder_override(value: str | None) -> int:
    if value is None:
        return LADDER_EVALS
    try:
        e = int(float(value))
    except ValueError:
        e = -1
    if e < 0:
        raise ConfigError(f"ladder_budget={value!r} must be a number of model evaluations per sample ≥ 0 for the "
                          f"whole escalation ladder (default {LADDER_EVALS:,}; 0 runs no escalation, and a claim "
                          "that would need one cannot be CONSISTENT)")
    return e
