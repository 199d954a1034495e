"""``gauntlet compact OUT_DIR``: merge many small task files into fewer large ones without changing a row.

Each compacted file keeps, per task, the digest its rows had when first written, so
resume still recognises (and verifies) every compacted task.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.errors import ConfigError
from engine.seeding import stable_hash
from engine.store.outdir import OutDirLock
from engine.store.parquet import (
    SCHEMA,
    SCHEMA_VERSION,
    ResultStore,
    content_digest,
    content_problem,
    file_entries,
    write_atomic,
)

log = logging.getLogger(__name__)


def _write_group(store: ResultStore, task_ids: list[str]) -> tuple[Path, dict[str, str]]:
    tables = [store.read([t]) for t in task_ids]
    # verified just now; digested again under the version this file is written with (older files lack columns)
    digests = {t: content_digest(table) for t, table in zip(task_ids, tables, strict=True)}
    path = store.dir / f"compact-{stable_hash(sorted(task_ids), 16)}.parquet"
    meta = {"gauntlet.schema_version": SCHEMA_VERSION, "gauntlet.tasks": json.dumps(digests, sort_keys=True)}
    write_atomic(pa.concat_tables(tables).replace_schema_metadata(meta), path)
    return path, digests


def compact(out_dir: str | Path, max_rows: int = 1_000_000) -> tuple[int, int]:
    """Merge the per-task files of ``out_dir`` into files of at most ``max_rows`` rows.

    Returns (task files merged, compacted files written). A merged file is checked
    (every task's digest) before the task files it replaces are removed.
    """
    path = Path(str(out_dir)).expanduser()
    if not (path / "results").is_dir():
        raise ConfigError(f"{out_dir} has no results/ folder; give the out_dir of a Gauntlet run")
    with OutDirLock(path):
        store = ResultStore(path)
        singles = [t for t, e in store.index.items() if not e.compacted and store.verify(t)]
        groups: list[list[str]] = [[]]
        rows = 0
        for task_id in sorted(singles):
            n = pq.read_metadata(store.index[task_id].path).num_rows
            if groups[-1] and rows + n > max_rows:
                groups.append([])
                rows = 0
            groups[-1].append(task_id)
            rows += n
        written = 0
        for group in (g for g in groups if len(g) > 1):
            old = [store.index[t].path for t in group]
            merged, digests = _write_group(store, group)
            _check_merged(merged, digests)
            for p in old:
                p.unlink()
            written += 1
            log.info("merged %d task files into %s", len(group), merged.name)
        merged_count = sum(len(g) for g in groups if len(g) > 1)
    return merged_count, written


def _check_merged(path: Path, digests: dict[str, str]) -> None:
    """Every task of a freshly merged file reads back with its original digest, or the merge is undone."""
    entries = file_entries(path, pq.read_schema(path).metadata or {})
    table = pq.read_table(path, schema=SCHEMA)
    problems = ["not a compacted file"] if isinstance(entries, str) or set(entries) != set(digests) else []
    for task_id, digest in digests.items():
        problem = content_problem(table.filter(pc.equal(table["task_id"], task_id)), task_id, digest)
        problems += [problem] if problem else []
    if problems:
        path.unlink()
        raise ConfigError(f"compacted file {path.name} did not verify ({problems[0]}); the task files were kept")


def main(argv: list[str]) -> int:
    """``gauntlet compact OUT_DIR [--max-rows N]``; returns the exit code."""
    import argparse

    from engine.errors import GauntletError

    parser = argparse.ArgumentParser(prog="gauntlet compact", description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--max-rows", type=int, default=1_000_000, help="rows per compacted file (default 1e6)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        merged, written = compact(args.out_dir, args.max_rows)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"compacted {merged} task file(s) into {written} file(s) under {Path(args.out_dir).expanduser() / 'results'}")
    return 0
