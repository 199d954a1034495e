"""Evaluate: tasks and their results, per-process resources, the one evaluation loop and its threat-model checks."""
