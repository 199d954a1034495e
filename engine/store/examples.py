"""Saved adversarial examples (``save_examples``): one safetensors file per task beside its rows, and the reader.

``<out_dir>/examples/<task_id>.safetensors`` holds the task's kept examples (engine/evaluation/examples.py)
as plain tensors — ``x`` (float32, N×C×H×W, the exact input the model scored), ``clean``, ``level``
(float64), ``sample_id`` (int64) and, when every ``x`` is on that grid, ``x_uint8`` or ``x_uint16`` —
and, in its metadata, the task id, the save mode and cap, the sha256 of those tensors and the content
digest of the task's rows. safetensors holds no code: reading a hostile file runs nothing.

A file is written atomically after its task's rows; the driver writes it, never a worker. It counts
only while its digests match: a task whose rows exist but whose examples are missing, altered, from
other rows or saved with another ``save_examples``/cap is recomputed by the next sweep that saves
examples (the rows come out the same), with one log line saying why.

    ex = engine.store.examples.load("runs/default")   # ex.x, ex.clean, ex.keys (task, level, sample id + rows)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from engine.errors import GauntletError
from engine.evaluation.tasks import TaskResult
from engine.store.parquet import ResultStore

log = logging.getLogger(__name__)

FOLDER = "examples"
FORMAT_VERSION = "1"
GRID_TENSORS = {"x_uint8": (255, np.uint8), "x_uint16": (65535, np.uint16)}
KEY_COLUMNS = ("task_id", "model", "perturbation", "family", "norm", "level", "sample_id", "label", "pred",
               "correct", "broken_by", "float_correct")


def path_for(out_dir: str | Path, task_id: str) -> Path:
    return Path(out_dir).expanduser() / FOLDER / f"{task_id}.safetensors"


def tensors_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _grid_copies(x: np.ndarray) -> dict[str, np.ndarray]:
    """``x`` as integers too when it lies exactly on the 8-bit (else 16-bit) grid: ``k / M`` in float32."""
    for name, (m, dtype) in GRID_TENSORS.items():
        k = np.rint(x.astype(np.float64) * m)
        if len(x) and np.array_equal((k.astype(np.float32) / np.float32(m)).astype(np.float32), x):
            return {name: k.astype(dtype)}
    return {}


def write(out_dir: str | Path, result: TaskResult, rows_digest: str) -> Path | None:
    """Write ``result``'s examples (nothing when it carries none) atomically, tied to its rows' digest."""
    ex = result.examples
    if ex is None:
        return None
    t = result.task
    tensors = {"x": ex["x"], "clean": ex["clean"], "level": ex["level"], "sample_id": ex["sample_id"],
               **_grid_copies(ex["x"])}
    meta = {"gauntlet.examples_version": FORMAT_VERSION, "gauntlet.task_id": t.task_id,
            "gauntlet.save_examples": t.save_examples, "gauntlet.cap": str(t.examples_cap),
            "gauntlet.quantize": t.quantize, "gauntlet.rows_sha256": rows_digest,
            "gauntlet.tensors_sha256": tensors_digest(tensors), "gauntlet.count": str(len(ex["x"])),
            "gauntlet.model": t.model_name, "gauntlet.perturbation": t.perturbation_name}
    final = path_for(out_dir, t.task_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=meta)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def read_file(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Metadata and tensors of one examples file (``SafetensorError``/``OSError`` when unreadable)."""
    with safe_open(str(path), framework="np") as f:
        meta = dict(f.metadata() or {})
        return meta, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def problem(path: Path, task_id: str, rows_digest: str, mode: str | None = None, cap: int | None = None) -> str:
    """Why ``path`` cannot stand for ``task_id``'s examples ('' when it can): missing, unreadable, altered,
    of other rows, or (when ``mode``/``cap`` are given) saved with another setting."""
    if not path.is_file():
        return "no examples file"
    try:
        meta, tensors = read_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        return f"unreadable examples file ({exc})"
    if meta.get("gauntlet.examples_version") != FORMAT_VERSION or meta.get("gauntlet.task_id") != task_id:
        return "not this task's examples file"
    if meta.get("gauntlet.tensors_sha256") != tensors_digest(tensors):
        return "examples altered or corrupt (sha256 mismatch)"
    shape = _shape_problem(tensors)
    if shape:
        return shape
    if meta.get("gauntlet.rows_sha256") != rows_digest:
        return "examples of other rows (the task's rows were rewritten since)"
    if mode is not None and (meta.get("gauntlet.save_examples"), meta.get("gauntlet.cap")) != (mode, str(cap)):
        return (f"examples saved with save_examples={meta.get('gauntlet.save_examples')}, "
                f"cap {meta.get('gauntlet.cap')}")
    return ""


def _shape_problem(tensors: Mapping[str, np.ndarray]) -> str:
    """'' when the tensors are what ``write`` writes: x and clean float32 N×…, level and sample_id of length N."""
    missing = [k for k in ("x", "clean", "level", "sample_id") if k not in tensors]
    if missing:
        return f"examples file without {missing}"
    n = len(tensors["x"])
    if tensors["x"].dtype != np.float32 or tensors["clean"].shape != tensors["x"].shape or \
            len(tensors["level"]) != n or len(tensors["sample_id"]) != n:
        return "examples file with inconsistent tensors"
    return ""


@dataclass
class Pending:
    """Why tasks with verified rows are recomputed for their examples (reason → count), for one log line each."""

    reasons: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)  # compacted tasks: rows reused, examples not saved

    def lines(self) -> list[str]:
        lines = [f"{n} task(s) recomputed to save their examples: {why}" for why, n in sorted(self.reasons.items())]
        return lines + [f"{n} compacted task(s) (gauntlet compact) have no examples saved as asked ({why}): their "
                        "rows are reused and no examples are saved for them; run the sweep into a fresh out_dir to "
                        "save them" for why, n in sorted(self.kept.items())]


def done_fn(store: ResultStore, mode: str, cap: int, pending: Pending) -> Callable[[str], bool]:
    """The planner's "already done" test: verified rows, and verified examples when the sweep saves them."""
    if mode == "none":
        return store.has

    def done(task_id: str) -> bool:
        if not store.has(task_id):
            return False
        entry = store.index[task_id]
        why = problem(path_for(store.out_dir, task_id), task_id, entry.digest, mode, cap)
        if why and entry.compacted:  # a rewritten task file would clash with its compacted copy: keep the rows
            pending.kept[why] = pending.kept.get(why, 0) + 1
            return True
        if why:
            pending.reasons[why] = pending.reasons.get(why, 0) + 1
        return not why

    return done


@dataclass(frozen=True)
class Examples:
    """Saved examples of a run folder: row i of ``x`` (and ``clean``) is keyed by row i of ``keys``.

    ``keys`` holds (task_id, level, sample_id) and the task's row for it (model, perturbation, label,
    pred, correct, broken_by, float_correct); ``x_uint`` is ``x`` as the integer image (uint8 / uint16)
    where every example is on one grid, else None.
    """

    x: torch.Tensor
    clean: torch.Tensor
    keys: pa.Table
    x_uint: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)


def _task_files(root: Path) -> list[Path]:
    folder = root / FOLDER
    return sorted(p for p in folder.glob("*.safetensors") if len(p.stem) == 20) if folder.is_dir() else []


def _verified(store: ResultStore, path: Path) -> tuple[dict[str, np.ndarray], pa.Table] | None:
    """The tensors of ``path`` and the rows of their keys, or None (with a warning) when they do not verify."""
    task_id = path.stem
    if not store.verify(task_id):
        log.warning("skipping %s: its task has no verified rows in %s", path, store.dir)
        return None
    why = problem(path, task_id, store.index[task_id].digest)
    if why:
        log.warning("skipping %s: %s", path, why)
        return None
    tensors = read_file(path)[1]
    try:
        return tensors, _keys(store, task_id, tensors)
    except KeyError:
        log.warning("skipping %s: it holds a (level, sample_id) its task's rows do not have", path)
        return None


def _keys(store: ResultStore, task_id: str, tensors: Mapping[str, np.ndarray]) -> pa.Table:
    """The task's rows for each example's (level, sample_id), in the examples' order."""
    rows = store.read([task_id])
    index = {(lv, sid): i for i, (lv, sid) in enumerate(zip(rows["level"].to_pylist(),
                                                           rows["sample_id"].to_pylist(), strict=True))}
    take = [index[(float(lv), int(sid))] for lv, sid in zip(tensors["level"], tensors["sample_id"], strict=True)]
    return rows.take(pa.array(take, type=pa.int64())).select(list(KEY_COLUMNS))


def load(out_dir: str | Path, task_ids: Iterable[str] | None = None, model: str | None = None,
         perturbation: str | None = None) -> Examples:
    """Every verified example under ``out_dir`` (optionally of some tasks, one model, one perturbation).

    Files that fail a check are skipped with a warning, never half read; nothing is moved.
    """
    root = Path(out_dir).expanduser()
    if not (root / "results").is_dir():
        raise GauntletError(f"{root} is not a Gauntlet run folder (no results/); pass the out_dir of a sweep, "
                            "e.g. engine.store.examples.load('runs/default')")
    store = ResultStore(root, repair=False)
    wanted = None if task_ids is None else set(task_ids)
    xs, cleans, uints, keys = [], [], [], []
    for path in _task_files(root):
        if wanted is not None and path.stem not in wanted:
            continue
        found = _verified(store, path)
        if found is None or not len(found[0]["x"]):
            continue
        tensors, k = found
        if (model is not None and k["model"][0].as_py() != model) or \
                (perturbation is not None and k["perturbation"][0].as_py() != perturbation):
            continue
        xs.append(tensors["x"])
        cleans.append(tensors["clean"])
        uints.append(next((tensors[n] for n in GRID_TENSORS if n in tensors), None))
        keys.append(k)
    if not xs:
        empty = torch.zeros(0)
        return Examples(empty, empty, pa.table({c: pa.array([], pa.null()) for c in KEY_COLUMNS}))
    grids = [u for u in uints if u is not None]
    grid = len(grids) == len(uints) and len({u.dtype for u in grids}) == 1
    return Examples(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(cleans)),
                    pa.concat_tables(keys), _integer_image(np.concatenate(grids)) if grid else None)


def _integer_image(u: np.ndarray) -> torch.Tensor:
    """uint8 stays uint8; uint16 (which torch barely supports) becomes int32, values unchanged."""
    return torch.from_numpy(u if u.dtype == np.uint8 else u.astype(np.int32))

