"""Exceptions that carry a user-facing message: what went wrong and how to fix it."""

from __future__ import annotations


class GauntletError(Exception):
    """A problem the user can fix; the CLI prints its message and exits non-zero."""


class ConfigError(GauntletError):
    """A config value is invalid (wrong type, out of range, unknown name)."""


class CheckpointError(GauntletError):
    """A checkpoint is missing, corrupt, or does not fit its architecture."""


class ThreatModelViolation(GauntletError):
    """A perturbed batch breaks its threat model (outside the ε ball, [0, 1], or non-finite)."""


class ModelOutputError(GauntletError):
    """A model returned logits that cannot be scored (NaN/inf, wrong shape)."""
