"""Gauntlet: robustness sweeps for image classifiers (plan, run, verify, persist, report)."""

__version__ = "0.1.0"
