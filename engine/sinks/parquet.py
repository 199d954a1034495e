"""One Parquet file per task under ``<out_dir>/results/``: one schema, written atomically, read as a dataset."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from engine.tasks import TaskResult

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("perturbation", pa.string(), nullable=False),
        pa.field("family", pa.string(), nullable=False),
        pa.field("norm", pa.string(), nullable=True),
        pa.field("level", pa.float64(), nullable=False),
        pa.field("pred", pa.int64(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("margin", pa.float64(), nullable=False),
        pa.field("perturbation_size", pa.float64(), nullable=False),
        pa.field("broken_by", pa.string(), nullable=False),
        pa.field("grad_evals", pa.int64(), nullable=False),
        pa.field("queries", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
    ]
)
SCHEMA_VERSION = "1"


def to_table(result: TaskResult) -> pa.Table:
    """The task's rows under ``SCHEMA``, with the task's config as file metadata."""
    t = result.task
    n = len(result.columns["sample_id"])

    def const(value: object, typ: pa.DataType) -> pa.Array:
        return pa.array([value] * n, type=typ)

    arrays = {
        "run_id": const(t.run_id, pa.string()),
        "task_id": const(t.task_id, pa.string()),
        "model": const(t.model_name, pa.string()),
        "dataset": const(t.dataset_name, pa.string()),
        "perturbation": const(t.perturbation_name, pa.string()),
        "family": const(result.family, pa.string()),
        "norm": const(result.norm, pa.string()),
        "seed": const(t.seed, pa.int64()),
    }
    for name, values in result.columns.items():
        arrays[name] = pa.array(values, type=SCHEMA.field(name).type)
    table = pa.table([arrays[f.name] for f in SCHEMA], schema=SCHEMA)
    meta = {
        "gauntlet.schema_version": SCHEMA_VERSION,
        "gauntlet.task": json.dumps(asdict(t), sort_keys=True, default=str),
        "gauntlet.seconds": f"{result.seconds:.3f}",
        "gauntlet.device": result.device,
    }
    return table.replace_schema_metadata({**(SCHEMA.metadata or {}), **meta})


class ResultStore:
    """The results folder. Files are named ``<task_id>.parquet``; temporaries start with a dot."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir).expanduser() / "results"

    def path_for(self, task_id: str) -> Path:
        return self.dir / f"{task_id}.parquet"

    def has(self, task_id: str) -> bool:
        """True when a complete file for the task exists (its footer reads back)."""
        path = self.path_for(task_id)
        if not path.exists():
            return False
        try:
            pq.read_metadata(path)
        except (pa.ArrowInvalid, OSError) as exc:
            log.warning("results file %s is unreadable (%s); the task will be recomputed", path, exc)
            return False
        return True

    def write(self, result: TaskResult) -> Path:
        """Write under a dot-prefixed temporary name, fsync, then rename into place."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(result.task.task_id)
        tmp = self.dir / f".{final.name}.{os.getpid()}.tmp"
        try:
            pq.write_table(to_table(result), tmp, compression="zstd")
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def read(self, task_ids: Iterable[str] | None = None) -> pa.Table:
        """All rows (or only those of ``task_ids``) as one table under ``SCHEMA``."""
        if task_ids is None:
            paths = sorted(str(p) for p in self.dir.glob("*.parquet"))
        else:
            paths = [str(self.path_for(t)) for t in task_ids]
        if not paths:
            return SCHEMA.empty_table()
        return ds.dataset(paths, schema=SCHEMA, format="parquet").to_table()
