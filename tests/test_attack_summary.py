"""The attack-suite block of the summary: counts and costs come straight from the per-sample rows."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from engine.sinks.attack_summary import render_attack_summary
from engine.store.parquet import SCHEMA


def _row(level: float, correct: bool, broken_by: str = "", grads: int = 0, queries: int = 0, size: float = 0.0,
         pert: str = "aa", model: str = "m") -> dict[str, Any]:
    return {"run_id": "r", "task_id": "t", "model": model, "dataset": "d", "sample_id": 0, "label": 0,
            "perturbation": pert, "family": "attack", "norm": "linf", "level": level, "pred": 0, "correct": correct,
            "margin": 0.0, "perturbation_size": size, "broken_by": broken_by, "grad_evals": grads,
            "queries": queries, "seed": 0}


def test_breakdown_counts_breakers_costs_and_median_norm_per_level() -> None:
    rows = [
        _row(0.0, True),  # ε = 0 is the clean level of a curve: not shown
        _row(0.1, True, grads=1000, queries=5000),
        _row(0.1, False, "apgd-ce", grads=10, queries=2, size=0.1),
        _row(0.1, False, "apgd-t", grads=400, queries=3, size=0.08),
        _row(0.1, False, "apgd-ce", grads=20, queries=2, size=0.09),
        _row(0.1, False, "", grads=0, queries=1),  # misclassified before any attack
        _row(0.1, True, pert="pgd_linf"),  # not a suite: not shown
    ]
    text = render_attack_summary(pa.Table.from_pylist(rows, schema=SCHEMA), ["aa"])
    lines = text.splitlines()
    assert len(lines) == 4 and "pgd_linf" not in text
    cells = lines[3].split()
    assert cells[:4] == ["m", "aa", "ε=0.1", "1/5"]
    assert "apgd-ce 2, (clean error) 1, apgd-t 1" in lines[3]
    assert cells[-3:] == [str(round(1430 / 5)), str(round(5008 / 5)), "0.09"]


def test_no_suites_no_block() -> None:
    table = pa.Table.from_pylist([_row(0.1, True)], schema=SCHEMA)
    assert render_attack_summary(table, []) == ""
    assert render_attack_summary(table, ["other"]) == ""
