"""Read a run folder for reports and comparisons: its rows, plan, ``sweep.json``, flags, verdicts, command.

A sweep records its plan (``plan.json``: the tasks it will produce and the command that
resumes it) before any compute and ``sweep.json`` when it has finished; ``load_run``
compares the latest plan with the verified task files, so a killed or failed run is read
as what it is: unfinished, N of M tasks, with the command that completes it. It also reads the dataset
identities a run folder records (why a re-run recomputed).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import GauntletError

PLAN_FILE = "plan.json"
_LAUNCH: dict[str, Any] = {}  # set by the ``gauntlet`` entry point: the command a resume repeats


def set_launch_command(argv: Sequence[str], cwd: str | Path) -> None:
    """Remember ``gauntlet <argv>`` run in ``cwd``; sweeps started from Python record no command."""
    _LAUNCH.update(argv=list(argv), cwd=str(Path(cwd).resolve()))


def launch_command() -> str | None:
    """``cd <cwd> && gauntlet <args>``, quoted for a POSIX shell, or None when not launched by ``gauntlet``."""
    if "argv" not in _LAUNCH:
        return None
    return f"cd {shlex.quote(_LAUNCH['cwd'])} && {shlex.join(['gauntlet', *_LAUNCH['argv']])}"


def record_plan(out_dir: str | Path, run_id: str, config: Mapping[str, Any],
                tasks: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``<out_dir>/plan.json`` atomically before compute: what this invocation will produce.

    ``sweep.json`` is written only at the end, so this file is how a later ``gauntlet report``
    or ``compare`` knows that a run was cut short, by how much, and how to resume it.
    """
    doc = {"run_id": run_id, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": launch_command(),
           "config": dict(config), "tasks": [dict(t) for t in tasks]}
    path = Path(out_dir).expanduser() / PLAN_FILE
    tmp = path.with_name(f".{PLAN_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GauntletError(f"{path} is not valid JSON ({exc}); delete it or re-run the step that writes it") from None


@dataclass(frozen=True)
class RunFolder:
    """What a sweep left in its ``out_dir``; optional files are empty when absent.

    ``tasks`` are the latest invocation's planned tasks, ``rows`` the rows of those that have
    verified results (all of them when the run is finished).
    """

    out_dir: Path
    run_id: str
    config: dict[str, Any]
    tasks: list[dict[str, Any]]
    rows: pa.Table
    flags: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, Any] | None = None
    command: str | None = None
    finished_tasks: int = -1  # tasks with verified results; -1: all of them
    summarised: bool = True  # sweep.json describes this run (it ran to its end)
    holder: str | None = None  # the live process that holds the folder, if one does

    @property
    def checkpoints(self) -> dict[str, str]:
        """Model name → checkpoint sha256, from the task list."""
        return {t["model"]: t.get("checkpoint_sha256", "") for t in self.tasks}

    @property
    def done(self) -> int:
        return len(self.tasks) if self.finished_tasks < 0 else self.finished_tasks

    @property
    def unfinished(self) -> bool:
        return self.done < len(self.tasks) or not self.summarised

    def status(self) -> str | None:
        """One line naming an unfinished run (N of M tasks) and how to resume it; None when finished."""
        if not self.unfinished:
            return None
        m = len(self.tasks)
        if self.holder is not None:
            return (f"{self.out_dir} is still running ({self.holder}): {self.done} of {m} task(s) have results "
                    "so far; numbers from it are partial")
        how = (f"resume with: {self.command}" if self.command else
               "resume by re-running the same gauntlet command (it was not recorded: the sweep was started "
               "from Python)")
        if self.done == m:
            return (f"{self.out_dir} is unfinished: all {m} task(s) have results, but the sweep stopped before "
                    f"writing its summary and sanity flags (no sweep.json for run {self.run_id}); {how}")
        return (f"{self.out_dir} is UNFINISHED: {self.done} of {m} task(s) have verified results (the run was "
                f"interrupted or failed, or result files were removed or failed their checks; numbers cover only "
                f"those tasks); {how} — finished tasks are reused")


def _command(out_dir: Path) -> str | None:
    """``gauntlet <overrides>`` of the newest Hydra job folder under ``out_dir/hydra``, if one exists."""
    candidates = sorted((out_dir / "hydra").glob("*/.hydra/overrides.yaml"))
    if not candidates:
        return None
    lines = candidates[-1].read_text().splitlines()
    overrides = [line[2:] for line in lines if line.startswith("- ")]
    return " ".join(["gauntlet", *(shlex.quote(o) for o in overrides)])


def _holder(root: Path) -> str | None:
    """``pid N on HOST, started T`` when a live process on this host holds ``root``'s lock."""
    from engine.store.outdir import LOCK_NAME, pid_alive

    try:
        doc = json.loads((root / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    pid = doc.get("pid") if isinstance(doc, dict) else None
    if not isinstance(pid, int) or doc.get("host") != socket.gethostname() or not pid_alive(pid):
        return None
    return f"pid {pid}, started {doc.get('started')}"


def _latest(root: Path) -> tuple[dict[str, Any], bool]:
    """The latest invocation's record (``plan.json`` when newer than ``sweep.json``) and whether it finished."""
    sweep, plan = root / "sweep.json", root / PLAN_FILE
    if not sweep.is_file() and not plan.is_file():
        raise GauntletError(f"{root} is not a Gauntlet run folder (no sweep.json or plan.json); pass the out_dir "
                            "of a sweep, e.g. gauntlet report runs/default")
    done = _json(sweep) if sweep.is_file() else None
    planned = _json(plan) if plan.is_file() else None
    for doc, path in ((done, sweep), (planned, plan)):
        if doc is not None and not isinstance(doc, dict):
            raise GauntletError(f"{path} is not a Gauntlet record (a JSON object); delete it and re-run the sweep")
    if planned is not None and (done is None or planned.get("run_id") != done.get("run_id")):
        return planned, False
    assert done is not None
    if planned is not None and planned.get("command"):
        done = {**done, "command": planned["command"]}
    return done, True


def load_run(out_dir: str | Path) -> RunFolder:
    """Load ``out_dir`` (finished or not); one clear error when it is not a Gauntlet run folder."""
    from engine.store.parquet import ResultStore

    root = Path(out_dir).expanduser()
    meta, summarised = _latest(root)
    tasks = [t for t in meta.get("tasks", []) if isinstance(t, dict) and "task_id" in t]
    store = ResultStore(root, repair=False)  # verified reads only; a bad file is reported, never moved here
    finished = [t["task_id"] for t in tasks if store.verify(t["task_id"])]
    rows = store.read(finished if tasks else None)
    flags_path, verdict_path = root / "flags.json", root / "verdict.json"
    flags = list(_json(flags_path).get("flags", [])) if summarised and flags_path.is_file() else []
    verdicts = _json(verdict_path) if verdict_path.is_file() else None
    command = meta.get("command") or _command(root)
    return RunFolder(root, str(meta.get("run_id", "")), dict(meta.get("config", {})), tasks, rows, flags,
                     verdicts, command, len(finished) if tasks else -1, summarised,
                     None if summarised else _holder(root))


def read_rows(out_dir: str | Path, task_ids: list[str] | None = None) -> pa.Table:
    """The verified result rows of ``out_dir`` (only ``task_ids``' when given) under the one schema.

    A foreign, damaged or missing task file is an error here, never a wrong number.
    """
    from engine.store.results import read

    return read(out_dir, task_ids=task_ids)


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
