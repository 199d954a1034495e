"""Exceptions that carry a user-facing message: what went wrong and how to fix it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


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


def subcommand_start(argv: Sequence[str], usage: str) -> int | None:
    """The opening every ``gauntlet <subcommand>`` shares: no arguments → usage on stderr, exit 2; ``-h`` /
    ``--help`` → usage, exit 0; otherwise INFO logging on stderr and None (go on)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(levelname)s] %(name)s: %(message)s")
    return None


def error_exit(exc: GauntletError) -> int:
    """One ``error:`` line on stderr; the exit code: 2, or 128 + the signal for an interrupted run."""
    print(f"error: {exc}", file=sys.stderr)
    return int(getattr(exc, "exit_code", 2))
