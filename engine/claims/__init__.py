"""Checking a vendor's robustness claim: claim files, sanity indicators, escalation, verdicts (docs/claims.md)."""
