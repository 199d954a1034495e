"""Read a finished run folder for reports and comparisons: its rows, ``sweep.json``, flags, verdicts, command,
and the dataset identities it records."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import GauntletError


def read_rows(out_dir: str | Path, task_ids: list[str] | None = None) -> pa.Table:
    """The verified result rows of ``out_dir`` (only ``task_ids``' when given) under the one schema.

    The single place reports and comparisons read Parquet from: ``engine.store.results.read``,
    so a foreign, damaged or missing task file is an error here, never a wrong number.
    """
    from engine.store.results import read

    return read(out_dir, task_ids=task_ids)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GauntletError(f"{path} is not valid JSON ({exc}); delete it or re-run the step that writes it") from None


@dataclass(frozen=True)
class RunFolder:
    """What a sweep left in its ``out_dir``; optional files are empty when absent."""

    out_dir: Path
    run_id: str
    config: dict[str, Any]
    tasks: list[dict[str, Any]]
    rows: pa.Table
    flags: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, Any] | None = None
    command: str | None = None

    @property
    def checkpoints(self) -> dict[str, str]:
        """Model name → checkpoint sha256, from the task list."""
        return {t["model"]: t.get("checkpoint_sha256", "") for t in self.tasks}


def _command(out_dir: Path) -> str | None:
    """``gauntlet <overrides>`` of the newest Hydra job folder under ``out_dir/hydra``, if one exists."""
    candidates = sorted((out_dir / "hydra").glob("*/.hydra/overrides.yaml"))
    if not candidates:
        return None
    lines = candidates[-1].read_text().splitlines()
    overrides = [line[2:] for line in lines if line.startswith("- ")]
    return " ".join(["gauntlet", *(shlex.quote(o) for o in overrides)])


def load_run(out_dir: str | Path) -> RunFolder:
    """Load ``out_dir``; one clear error when it is not a finished Gauntlet run."""
    root = Path(out_dir).expanduser()
    sweep = root / "sweep.json"
    if not sweep.is_file():
        raise GauntletError(f"{root} is not a Gauntlet run folder (no sweep.json); pass the out_dir of a "
                            "finished sweep, e.g. gauntlet report runs/default")
    meta = _json(sweep)
    tasks = list(meta.get("tasks", []))
    rows = read_rows(root, [t["task_id"] for t in tasks] if tasks else None)
    flags_path, verdict_path = root / "flags.json", root / "verdict.json"
    flags = list(_json(flags_path).get("flags", [])) if flags_path.is_file() else []
    verdicts = _json(verdict_path) if verdict_path.is_file() else None
    return RunFolder(root, str(meta.get("run_id", "")), dict(meta.get("config", {})), tasks, rows, flags,
                     verdicts, _command(root))


def recorded_identities(out_dir: str | Path, task_files: list[Path] | None = None) -> list[dict[str, Any]]:
    """Dataset identities ``out_dir`` records, newest first, one per digest: each ``sweep.json``'s (with the parts
    that name files), then the digests in the footers of those ``task_files`` written after the newest
    ``sweep.json`` (a killed run never writes its sidecars; finished runs' tasks are in their ``sweep.json``).

    Unreadable sidecars and footers are skipped: they only explain a recomputation, never decide one.
    """
    root = Path(out_dir).expanduser()
    sweeps = sorted((p for p in [root / "sweep.json", *(root / "sweeps").glob("*/sweep.json")] if p.is_file()),
                    key=lambda p: p.stat().st_mtime_ns, reverse=True)
    newest = sweeps[0].stat().st_mtime_ns if sweeps else -1
    found: dict[str, dict[str, Any]] = {}
    for path in sweeps:
        try:
            ident = json.loads(path.read_text()).get("dataset_identity")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(ident, dict) and isinstance(ident.get("digest"), str):
            found.setdefault(ident["digest"], ident)
    for path in task_files or []:
        try:
            if path.stat().st_mtime_ns <= newest:
                continue
            task = json.loads((pq.read_schema(path).metadata or {}).get(b"gauntlet.task", b"{}"))
        except (OSError, ValueError, pa.ArrowInvalid):
            continue
        digest = task.get("dataset_identity") if isinstance(task, dict) else None
        if isinstance(digest, str) and digest:
            found.setdefault(digest, {"digest": digest, "name": task.get("dataset_name", "")})
    return list(found.values())
