"""Compose: config schemas, the ``_target_`` policy, level lists and the threat-model structure."""
