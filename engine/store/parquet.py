"""The results folder: one schema, task files written atomically, reused only when identity and content check out.

A task file ``<task_id>.parquet`` carries, in its Parquet metadata, the task id, the
schema version and a sha256 of its rows (``content_digest``). Compacted files
(``compact-<hash>.parquet``, written by ``engine.store.compact``) hold several tasks, each
with its own digest. A file is reused only when all of that verifies; anything else
is moved aside to ``<out_dir>/quarantine/`` (never deleted) and the task recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from engine.errors import GauntletError
from engine.evaluation.tasks import TaskResult
from engine.store.outdir import pid_alive

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
        # queries the oracle had counted when a query-based attack's success check passed; null when the sample
        # was never broken and for every other perturbation. Optional: files written before it read back with the
        # column all null and keep their digests (content_digest).
        pa.field("queries_to_success", pa.int64(), nullable=True),
        # quantize on (docs/attacks.md): was the float example, before rounding onto the grid, classified correctly?
        # null when the rows are not of rounded attack examples
        pa.field("float_correct", pa.bool_(), nullable=True),
    ]
)
OPTIONAL = frozenset({"queries_to_success"})  # left out of the digest when all null (older files never had it)
SCHEMA_VERSION = "3"  # 3: float_correct; 2: task id and content digest in the metadata
# the columns each readable version's digest covers: a version-2 file reads with float_correct null
DIGEST_FIELDS = {"2": [f for f in SCHEMA if f.name != "float_correct"], "3": list(SCHEMA)}
TASK_FILE = re.compile(r"^[0-9a-f]{20}\.parquet$")
COMPACT_FILE = re.compile(r"^compact-[0-9a-f]{16}\.parquet$")
TMP_FILE = re.compile(r"^\.(?P<name>.+\.parquet)\.(?P<pid>\d+)\.tmp$")


class ResultIntegrityError(GauntletError):
    """A results file that does not verify: not this task's, another schema, or altered content."""


def content_digest(table: pa.Table, version: str = SCHEMA_VERSION) -> str:
    """sha256 over every column's values (those of schema ``version``), in row order (independent of Parquet
    encoding and chunking)."""
    h = hashlib.sha256()
    for field in DIGEST_FIELDS[version]:
        col = table.column(field.name).combine_chunks() if table.num_rows else pa.array([], field.type)
        if field.name in OPTIONAL:
            if col.null_count == len(col):
                continue
            h.update(field.name.encode() + b"\0")
            for v in col.to_pylist():
                h.update(b"\1" if v is None else str(v).encode() + b"\0")
            continue
        h.update(field.name.encode() + b"\0")
        if field.nullable and pa.types.is_boolean(field.type):  # null, false, true → 2, 0, 1 (no object bytes)
            h.update(np.asarray([2 if v is None else int(v) for v in col.to_pylist()], dtype=np.int8).tobytes())
        elif pa.types.is_string(field.type):
            for value in col.to_pylist():
                h.update(b"\1" if value is None else value.encode() + b"\0")
        else:
            h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
    return h.hexdigest()


def check_unique_keys(table: pa.Table, where: str) -> None:
    """Every (task_id, level, sample_id) appears once; a duplicate would double-count a sample."""
    if table.num_rows == 0:
        return
    keys = table.group_by(["task_id", "level", "sample_id"]).aggregate([("sample_id", "count")])
    dup = pc.sum(pc.greater(keys["sample_id_count"], 1)).as_py()
    if dup:
        raise ResultIntegrityError(f"{where}: {dup} (task_id, level, sample_id) key(s) appear more than once")


def to_table(result: TaskResult) -> pa.Table:
    """The task's rows under ``SCHEMA``, with identity, digest and the task's config as file metadata."""
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
    for f in SCHEMA:  # a nullable column the evaluator did not fill (float_correct without quantize) is null
        if f.name not in arrays and f.nullable:
            arrays[f.name] = pa.nulls(n, f.type)
    table = pa.table([arrays[f.name] for f in SCHEMA], schema=SCHEMA)
    check_unique_keys(table, f"task {t.task_id} ({t.describe()})")
    meta = {
        "gauntlet.schema_version": SCHEMA_VERSION,
        "gauntlet.task_id": t.task_id,
        "gauntlet.content_sha256": content_digest(table),
        "gauntlet.task": json.dumps(asdict(t), sort_keys=True, default=str),
        "gauntlet.seconds": f"{result.seconds:.3f}",
        "gauntlet.device": result.device,
    }
    return table.replace_schema_metadata(meta)


def write_atomic(table: pa.Table, final: Path) -> None:
    """Write under ``.<name>.<pid>.tmp``, fsync, then rename into place (readers never see half a file)."""
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Entry:
    """Where a task's rows live and the digest they must have."""

    path: Path
    digest: str
    compacted: bool
    version: str = SCHEMA_VERSION  # the schema version the file was written under (which columns its digest covers)


class ResultStore:
    """The results folder of one ``out_dir``: verified reads, atomic writes, nothing silently reused."""

    def __init__(self, out_dir: str | Path, repair: bool = True) -> None:
        """``repair=False`` (readers): files that fail their checks are skipped and reported, not moved."""
        self.out_dir = Path(out_dir).expanduser()
        self.repair = repair
        self.dir = self.out_dir / "results"
        self.quarantine_dir = self.out_dir / "quarantine"
        self.quarantined: list[tuple[Path, str]] = []
        self._verified: set[str] = set()
        self._index: dict[str, Entry] | None = None

    def path_for(self, task_id: str) -> Path:
        return self.dir / f"{task_id}.parquet"

    # -- scanning ------------------------------------------------------------------------------
    def foreign_files(self) -> list[Path]:
        """Files in ``results/`` that are neither task files, compacted files nor temporaries."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir()
                      if not (TASK_FILE.match(p.name) or COMPACT_FILE.match(p.name) or p.name.startswith(".")))

    def _scan(self) -> dict[str, Entry]:
        """Task id → entry, from the footers only (cheap); content is verified on first use."""
        index: dict[str, Entry] = {}
        if not self.dir.is_dir():
            return index
        for path in sorted(self.dir.glob("*.parquet")):
            if not (TASK_FILE.match(path.name) or COMPACT_FILE.match(path.name)):
                continue
            try:
                meta = pq.read_schema(path).metadata or {}
            except (pa.ArrowInvalid, OSError) as exc:
                self._set_aside(path, f"unreadable ({exc})")
                continue
            entries = file_entries(path, meta)
            if isinstance(entries, str):
                self._set_aside(path, entries)
                continue
            clash = sorted(set(entries) & set(index))
            if clash:  # one task in two files: keep the first, set the other aside
                self._set_aside(path, f"task {clash[0]} is also in {index[clash[0]].path.name}")
                continue
            index.update(entries)
        return index

    @property
    def index(self) -> dict[str, Entry]:
        if self._index is None:
            self._index = self._scan()
        return self._index

    def report_foreign(self) -> list[Path]:
        foreign = self.foreign_files()
        for p in foreign:
            log.warning("ignoring %s: not a Gauntlet task file (results/ holds only <task_id>.parquet)", p)
        return foreign

    # -- verification --------------------------------------------------------------------------
    def _set_aside(self, path: Path, reason: str) -> None:
        """Move a file that fails its checks to ``quarantine/`` (never delete) and say so."""
        if self._index is not None:
            self._index = {k: e for k, e in self._index.items() if e.path != path}
        self.quarantined.append((path, reason))
        if not self.repair:
            log.warning("skipping results file %s: %s", path, reason)
            return
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}"
        shutil.move(str(path), target)
        log.warning("results file %s: %s; moved to %s and its task(s) will be recomputed", path, reason, target)

    def _rows_of(self, task_id: str, entry: Entry) -> pa.Table:
        table = pq.read_table(entry.path, schema=SCHEMA)
        if entry.compacted:
            table = table.filter(pc.equal(table["task_id"], task_id))
        return table

    def verify(self, task_id: str) -> bool:
        """True when the task's rows exist, are the task's own and match their digest; else set aside."""
        if task_id in self._verified:
            return True
        entry = self.index.get(task_id)
        if entry is None:
            return False
        try:
            table = self._rows_of(task_id, entry)
        except (pa.ArrowInvalid, OSError) as exc:
            self._set_aside(entry.path, f"unreadable ({exc})")
            return False
        problem = content_problem(table, task_id, entry.digest, entry.version)
        if problem:
            self._set_aside(entry.path, problem)
            return False
        self._verified.add(task_id)
        return True

    has = verify

    def set_aside(self, task_ids: Iterable[str], reason: str) -> int:
        """Move the files of ``task_ids`` (those written alone) to ``quarantine/``; how many were moved."""
        moved = 0
        for task_id in task_ids:
            entry = self.index.get(task_id)
            if entry is not None and not entry.compacted and entry.path.exists():
                self._verified.discard(task_id)
                self._set_aside(entry.path, reason)
                moved += 1
        return moved

    def clean_temporaries(self) -> list[Path]:
        """Remove ``.<file>.<pid>.tmp`` left by killed runs whose process is gone."""
        removed = []
        for p in self.dir.glob(".*.tmp") if self.dir.is_dir() else ():
            m = TMP_FILE.match(p.name)
            if m and not pid_alive(int(m["pid"])):
                p.unlink(missing_ok=True)
                removed.append(p)
                log.info("removed stray temporary %s (its process %s is gone)", p, m["pid"])
        return removed

    # -- writing and reading -------------------------------------------------------------------
    def write(self, result: TaskResult) -> Path:
        """Write one task's file atomically and index it as verified."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(result.task.task_id)
        table = to_table(result)
        write_atomic(table, final)
        digest = (table.schema.metadata or {})[b"gauntlet.content_sha256"].decode()
        self.index[result.task.task_id] = Entry(final, digest, compacted=False)
        self._verified.add(result.task.task_id)
        return final

    def read(self, task_ids: Iterable[str] | None = None) -> pa.Table:
        """Rows of ``task_ids`` (default: every task file that verifies) as one table under ``SCHEMA``."""
        ids = list(self.index) if task_ids is None else list(task_ids)
        parts = []
        for task_id in ids:
            if not self.verify(task_id):
                if task_ids is not None:
                    raise ResultIntegrityError(f"task {task_id} has no verified results in {self.dir}")
                continue
            parts.append(self._rows_of(task_id, self.index[task_id]))
        if not parts:
            return SCHEMA.empty_table()
        table = pa.concat_tables(parts).replace_schema_metadata(None)
        check_unique_keys(table, str(self.dir))
        return table


def file_entries(path: Path, meta: dict[bytes, bytes]) -> dict[str, Entry] | str:
    """The tasks a file claims to hold, or why it cannot be used (wrong schema version, no identity)."""
    version = meta.get(b"gauntlet.schema_version", b"").decode()
    if version not in DIGEST_FIELDS:
        return (f"schema version {version or 'missing'} (this Gauntlet writes {SCHEMA_VERSION} and reads "
                f"{', '.join(DIGEST_FIELDS)})")
    if COMPACT_FILE.match(path.name):
        try:
            digests = json.loads(meta.get(b"gauntlet.tasks", b"{}"))
        except ValueError:
            return "its task list is not valid JSON"
        if not isinstance(digests, dict) or not digests:
            return "it names no tasks"
        return {str(k): Entry(path, str(v), True, version) for k, v in digests.items()}
    task_id = meta.get(b"gauntlet.task_id", b"").decode()
    digest = meta.get(b"gauntlet.content_sha256", b"").decode()
    if task_id != path.name.removesuffix(".parquet"):
        return f"its metadata names task {task_id or 'none'}, not the one in its file name"
    if not digest:
        return "it has no content digest"
    return {task_id: Entry(path, digest, False, version)}


def content_problem(table: pa.Table, task_id: str, digest: str, version: str = SCHEMA_VERSION) -> str:
    if table.num_rows == 0:
        return f"no rows for task {task_id}"
    ids = pc.unique(table["task_id"]).to_pylist()
    if ids != [task_id]:
        return f"its rows belong to task(s) {sorted(ids)[:3]}, not {task_id}"
    if content_digest(table, version) != digest:
        return "its content does not match the sha256 recorded when it was written (altered or corrupt)"
    try:
        check_unique_keys(table, task_id)
    except ResultIntegrityError as exc:
        return str(exc)
    return ""


def dataset_paths(out_dir: str | Path) -> list[str]:
    """Paths of the task and compacted files under ``out_dir/results`` (for ``pyarrow.dataset``)."""
    store = ResultStore(out_dir, repair=False)
    return sorted(str(e.path) for e in {e.path: e for e in store.index.values()}.values())


def as_dataset(out_dir: str | Path) -> ds.Dataset:
    """A ``pyarrow.dataset`` over the valid result files only (foreign files left out)."""
    return ds.dataset(dataset_paths(out_dir), schema=SCHEMA, format="parquet")
