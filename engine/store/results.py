"""Read a sweep's results back: only task files whose identity and content verify, optionally one run or seed.

``read(out_dir)`` is the documented one-call reader (docs/results.md). One ``out_dir``
accumulates every invocation that wrote to it, so filter by ``run_id`` or ``seed``
when you want one sweep's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from engine.store.parquet import SCHEMA, ResultStore


def read(out_dir: str | Path, run_id: str | None = None, seed: int | None = None,
         columns: Sequence[str] | None = None, task_ids: Sequence[str] | None = None) -> pa.Table:
    """All verified rows under ``out_dir/results`` (foreign or damaged files skipped with a warning).

    ``task_ids`` restricts to those tasks and raises ``ResultIntegrityError`` if one of them
    has no verified rows (e.g. the tasks ``sweep.json`` lists). Nothing is moved or
    rewritten: a file that fails its checks is only reported here; the next ``gauntlet``
    run on that ``out_dir`` sets it aside and recomputes its task.
    """
    table = ResultStore(out_dir, repair=False).read(task_ids)
    if run_id is not None:
        table = table.filter(pc.equal(table["run_id"], run_id))
    if seed is not None:
        table = table.filter(pc.equal(table["seed"], seed))
    if columns is not None:
        unknown = [c for c in columns if c not in SCHEMA.names]
        if unknown:
            raise KeyError(f"unknown column(s) {unknown}; columns: {SCHEMA.names}")
        table = table.select(list(columns))
    return table
