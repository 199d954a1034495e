"""Budget curves (engine/stats/budget.py), the queries_to_success column (old runs stay readable), and a real
sweep of the query-based attacks through the summary, Parquet, the report and ``gauntlet verify``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from engine.sinks.budget_summary import render_budget_table
from engine.stats.budget import UPPER_BOUND_NOTE, budget_curves, kaplan_meier
from engine.store.parquet import SCHEMA, ResultStore
from tests.conftest import run_cli


def _row(q2s: int | None, queries: int, correct: bool, level: float = 0.1, pert: str = "hsj") -> dict[str, Any]:
    return {"model": "m", "perturbation": pert, "level": level, "correct": correct, "queries": queries,
            "queries_to_success": q2s}


def test_kaplan_meier_matches_a_hand_computation() -> None:
    # events at 10, 50, 50; censored at 30 and 100 (5 at risk)
    assert kaplan_meier([10, 50, 50], [30, 100], 9) == 0.0
    assert math.isclose(kaplan_meier([10, 50, 50], [30, 100], 10), 1 - 4 / 5)
    assert math.isclose(kaplan_meier([10, 50, 50], [30, 100], 49), 1 - 4 / 5)
    # at 50: 4 at risk after the event at 10, one censored at 30 leaves 3; 2 events → S = 4/5 · 1/3
    assert math.isclose(kaplan_meier([10, 50, 50], [30, 100], 50), 1 - (4 / 5) * (1 / 3))
    assert kaplan_meier([], [5, 6], 10) == 0.0


def test_curves_count_successes_within_each_budget_and_censor_failures() -> None:
    rows = [_row(50, 50, False), _row(900, 900, False), _row(5000, 5000, False), _row(None, 10_000, True),
            _row(None, 1, False),  # wrong before the attack: not attacked, counts against robust accuracy
            _row(None, 0, True, level=0.0)]  # ε = 0 rows are not a curve
    (c,) = budget_curves(rows)
    assert (c.n, c.attacked, c.broken, c.censored, c.max_queries) == (5, 4, 3, 1, 10_001)
    assert [p.broken for p in c.points] == [1, 2, 3]
    assert [p.success for p in c.points] == [0.25, 0.5, 0.75]
    assert [p.robust for p in c.points] == [3 / 5, 2 / 5, 1 / 5]
    assert c.mean_queries == pytest.approx((50 + 900 + 5000) / 3) and c.median_queries == 900


def test_a_budget_the_run_did_not_reach_is_not_reported() -> None:
    rows = [_row(40, 40, False), _row(None, 300, True), _row(None, 300, True)]
    (c,) = budget_curves(rows)
    assert [p.success for p in c.points] == [pytest.approx(1 / 3), None, None]
    text = render_budget_table([c])
    assert UPPER_BOUND_NOTE in text and "censored" in text and "—" in text and "2/3" in text


def test_perturbations_without_queries_to_success_have_no_curve() -> None:
    rows = [_row(None, 1, True, pert="pgd"), _row(None, 1, False, pert="pgd"), _row(7, 7, False)]
    assert [c.perturbation for c in budget_curves(rows)] == ["hsj"]
    assert [c.perturbation for c in budget_curves(rows, perturbations={"pgd"})] == ["pgd"]


def _old_digest(table: pa.Table) -> str:
    """content_digest as written before queries_to_success existed (every field of the old schema)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for field in SCHEMA:
        if field.name in ("queries_to_success", "float_correct"):  # neither existed in schema version 2
            continue
        col = table.column(field.name).combine_chunks()
        h.update(field.name.encode() + b"\0")
        if pa.types.is_string(field.type):
            for value in col.to_pylist():
                h.update(b"\1" if value is None else value.encode() + b"\0")
        else:
            h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
    return h.hexdigest()


def test_a_result_file_written_before_the_column_still_verifies(tmp_path: Path) -> None:
    old_fields = [f for f in SCHEMA if f.name not in ("queries_to_success", "float_correct")]
    row = {"run_id": "r", "task_id": "0123456789abcdef0123", "model": "m", "dataset": "d", "sample_id": 1,
           "label": 2, "perturbation": "p", "family": "attack", "norm": "linf", "level": 0.1, "pred": 3,
           "correct": False, "margin": -1.0, "perturbation_size": 0.1, "broken_by": "p", "grad_evals": 5,
           "queries": 0, "seed": 0}
    table = pa.Table.from_pylist([row], schema=pa.schema(old_fields))
    meta = {"gauntlet.schema_version": "2", "gauntlet.task_id": row["task_id"],
            "gauntlet.content_sha256": _old_digest(table), "gauntlet.task": "{}"}
    (tmp_path / "results").mkdir()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "results" / f"{row['task_id']}.parquet")
    store = ResultStore(tmp_path)
    assert store.verify(row["task_id"]) and not store.quarantined
    got = store.read([row["task_id"]])
    assert got.column("queries_to_success").to_pylist() == [None] and got.column("grad_evals").to_pylist() == [5]
    assert got.column("float_correct").to_pylist() == [None]


@pytest.fixture(scope="module")
def query_run(tmp_path_factory: pytest.TempPathFactory, embedded_checkpoints: dict[str, str]) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("budget") / "run"
    proc = run_cli(f"out_dir={out}", "n_examples=6", "batch_size=3", "progress=false", "wandb=disabled",
                   "model=[digits_cnn]", "perturbation=[rays_linf,square_linf_remote]",
                   "perturbation.rays_linf.eps=[0.2]", "perturbation.rays_linf.budget=150",
                   "perturbation.square_linf_remote.eps=[0.1,0.2]", "perturbation.square_linf_remote.budget=150")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_a_sweep_prints_budget_curves_and_stores_queries_to_success(query_run: tuple[Path, str]) -> None:
    out, stdout = query_run
    assert "query budget curves" in stdout and UPPER_BOUND_NOTE in stdout
    table = ds.dataset(str(out / "results"), format="parquet").to_table()
    rows = table.to_pylist()
    broken = [r for r in rows if r["level"] > 0 and not r["correct"] and r["broken_by"]]
    assert broken and all(r["queries_to_success"] is not None and 1 <= r["queries_to_success"] <= 150
                          for r in broken)
    assert all(r["queries_to_success"] is None for r in rows if r["correct"])
    assert all(r["queries"] <= 150 for r in rows)


def test_the_report_has_the_budget_table_and_plot(query_run: tuple[Path, str]) -> None:
    out, _ = query_run
    proc = run_cli("report", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (out / "report" / "index.html").read_text()
    assert "Query budget curves" in page and "fig-budget_curves" in page and "upper bounds on robust" in page
    summary = json.loads((out / "report" / "summary.json").read_text())
    curves = {(c["perturbation"], c["level"]) for c in summary["budget_curves"]}
    assert curves == {("rays_linf", 0.2), ("square_linf_remote", 0.1), ("square_linf_remote", 0.2)}
    tms = json.loads((out / "sweep.json").read_text())["threat_models"]
    assert tms["rays_linf"]["access"] == "label_only" and tms["rays_linf"]["queries"] == 150


def test_when_every_sample_is_broken_every_budget_is_known() -> None:
    (c,) = budget_curves([_row(40, 40, False), _row(7, 7, False)])
    assert [p.success for p in c.points] == [1.0, 1.0, 1.0] and [p.robust for p in c.points] == [0.0, 0.0, 0.0]
