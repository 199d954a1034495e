"""A dataset's content identity: one digest of exactly what its rows are read from, with file digests cached by stat.

A loader that reads files says which (``content_source`` → :class:`FileSource`): the sha256 of each file,
joined with what the loader derives from the listing (relative path, label, class count, decoder version). File digests
are remembered in ``<cache_dir>/fingerprints/<hash of the folder>.json`` by (size, mtime_ns, ctime_ns,
inode), so an unchanged 50,000-file folder costs one ``stat`` per file on the next run (figures:
docs/BENCHMARKS.md). A remembered digest is trusted only for a file last changed well before it was hashed
(git's "racy" rule): file times tick coarsely, so a same-size rewrite within one tick of the hashing would
otherwise keep the old digest. ``ctime`` cannot be set back by ``touch -d``, so a restored mtime does
not hide a rewrite either. In-memory sets hash their tensors; any other dataset hashes its decoded rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

IDENTITY_VERSION = 1
RACY_NS = 2_000_000_000  # a file changed this close to its hashing is hashed again next time
NAMED_FILES = 256  # up to this many files, the identity names each file's digest; above, each class folder's
STALE_CACHE_S = 30 * 86400  # cache files of folders unused for this long are removed
CHUNK_ROWS = 1024


def _now_ns() -> int:
    return time.time_ns()


def default_cache_dir() -> Path:
    return Path(os.environ.get("GAUNTLET_CACHE_DIR", "~/.cache/gauntlet")).expanduser()


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class FileDigests:
    """sha256 of files under one folder, remembered by stat in ``<cache_dir>/fingerprints``."""

    def __init__(self, folder: Path, cache_dir: str | Path | None) -> None:
        self.root = folder  # files are given under it; resolved once, for the cache's key only
        self.folder = folder.resolve()
        base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        key = hashlib.blake2b(str(self.folder).encode(), digest_size=12).hexdigest()
        self.cache_file = base / "fingerprints" / f"{key}.json"
        self.hashed = 0  # files read this call (the rest came from the cache)

    def _load(self) -> dict[str, list[Any]]:
        try:
            doc = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            return {}
        with contextlib.suppress(OSError):
            os.utime(self.cache_file)  # in use: not stale
        ok = isinstance(doc, dict) and doc.get("version") == IDENTITY_VERSION and doc.get("folder") == str(self.folder)
        return doc.get("entries", {}) if ok and isinstance(doc.get("entries"), dict) else {}

    def _save(self, entries: Mapping[str, list[Any]]) -> None:
        doc = {"version": IDENTITY_VERSION, "folder": str(self.folder), "entries": entries}
        tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            tmp.replace(self.cache_file)
            self._prune()
        except OSError as exc:  # a read-only cache costs time on the next run, never a wrong digest
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.debug("dataset fingerprint cache %s not written (%s)", self.cache_file, exc)

    def _prune(self) -> None:
        cutoff = time.time() - STALE_CACHE_S
        for f in self.cache_file.parent.glob("*.json"):
            try:
                if f.stat().st_mtime < cutoff:
                    f.unlink()
            except OSError:
                pass

    def relative(self, files: Sequence[Path]) -> list[str]:
        return [f.relative_to(self.root).as_posix() for f in files]

    def __call__(self, files: Sequence[Path], workers: int = 4) -> list[str]:
        """The sha256 of each file, in order; only files whose stat changed (or is racy) are read."""
        cached = self._load()
        rels = self.relative(files)
        out: list[str | None] = []
        fresh: dict[str, list[Any]] = {}
        for rel, f in zip(rels, files, strict=True):
            st = f.stat()
            stat = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            entry = cached.get(rel)
            trusted = (isinstance(entry, list) and len(entry) == 6 and entry[:4] == stat
                       and max(st.st_mtime_ns, st.st_ctime_ns) + RACY_NS < entry[4])
            out.append(entry[5] if trusted and entry else None)
            fresh[rel] = entry if trusted and entry else stat
        todo = [i for i, d in enumerate(out) if d is None]
        started = _now_ns()  # before reading: a change during the read is not trusted later
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, digest in zip(todo, pool.map(_sha256_file, [files[i] for i in todo]), strict=True):
                out[i] = digest
                fresh[rels[i]] = [*fresh[rels[i]][:4], started, digest]
        self.hashed = len(todo)
        if todo or set(fresh) != set(cached):
            self._save(fresh)
        return [d for d in out if d is not None]


def make_identity(kind: str, name: str, source: str, lines: Sequence[str], parts: Mapping[str, Any],
                  **extra: Any) -> dict[str, Any]:
    """The identity record: ``digest`` over kind, ``extra`` and ``lines``; ``parts`` only explain a change."""
    h = hashlib.sha256(json.dumps({"version": IDENTITY_VERSION, "kind": kind, **extra}, sort_keys=True,
                                  default=str).encode())
    for line in lines:
        h.update(line.encode() + b"\n")
    return {"name": name, "kind": kind, "source": source, "digest": h.hexdigest(), "items": len(lines),
            **extra, "parts": dict(parts)}


def files_identity(kind: str, name: str, root: Path, files: Sequence[Path], labels: Sequence[int] | None,
                   cache_dir: str | Path | None, workers: int = 4, **extra: Any) -> dict[str, Any]:
    """Identity of a dataset read from ``files`` under ``root``: each file's path, label (if per file) and sha256.

    Parts name each file up to :data:`NAMED_FILES` files, else each top folder (an image folder's classes).
    """
    hasher = FileDigests(root, cache_dir)
    digests, rels = hasher(files, workers), hasher.relative(files)
    tags = [""] * len(rels) if labels is None else [str(int(y)) for y in labels]
    lines = [f"{r}\t{y}\t{d}" for r, y, d in zip(rels, tags, digests, strict=True)]
    if len(files) <= NAMED_FILES:
        parts: dict[str, Any] = {r: {"sha256": d, "files": 1} for r, d in zip(rels, digests, strict=True)}
    else:
        groups: dict[str, list[str]] = {}
        for r, line in zip(rels, lines, strict=True):
            groups.setdefault(r.split("/", 1)[0] + "/", []).append(line)
        parts = {g: {"sha256": hashlib.sha256("\n".join(ls).encode()).hexdigest(), "files": len(ls)}
                 for g, ls in groups.items()}
    return make_identity(kind, name, str(root), lines, parts, **extra)


@dataclass(frozen=True)
class FileSource:
    """The files a dataset reads and what it derives from them: enough to compute (and re-check) its identity
    without holding its pixels."""

    kind: str
    name: str
    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...] | None = None  # per file (an image folder), else None
    extra: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 4

    def identity(self, cache_dir: str | Path | None) -> dict[str, Any]:
        return files_identity(self.kind, self.name, self.root, self.files, self.labels, cache_dir, self.workers,
                              **self.extra)


def source_of(data: Any) -> FileSource | None:
    """The dataset's :class:`FileSource`, when it reads files and says which."""
    hook = getattr(data, "content_source", None)
    found = hook() if callable(hook) else None
    return found if isinstance(found, FileSource) else None


def _tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        arr = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.data)  # C-contiguous: hashed in place, not copied
    return h.hexdigest()


def rows_identity(data: Any, kind: str) -> dict[str, Any]:
    """Identity of a dataset without files: its rows' images, labels and ids, decoded in chunks."""
    images, labels, ids = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for start in range(0, len(data), CHUNK_ROWS):
        rows = data.slice(start, min(start + CHUNK_ROWS, len(data)))
        images.update(_tensor_digest(rows.images.float()).encode())
        labels.update(_tensor_digest(rows.labels.long()).encode())
        ids.update(_tensor_digest(rows.sample_ids.long()).encode())
    parts = {k: {"sha256": h.hexdigest(), "files": 0} for k, h in (("images", images), ("labels", labels),
                                                                  ("sample_ids", ids))}
    lines = [f"{k}\t{v['sha256']}" for k, v in parts.items()]
    return make_identity(kind, str(data.name), kind, lines, parts, num_classes=int(data.num_classes),
                         image_shape=list(data.image_shape), rows=len(data))


def identity_of(data: Any, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The content identity of a built dataset (see the module docstring); JSON-serialisable."""
    source = source_of(data)
    if source is not None:
        return source.identity(cache_dir)
    from engine.data import SampleSet

    return rows_identity(data, "tensors in memory" if isinstance(data, SampleSet) else "decoded rows")


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between two identities of one dataset config, in a few words (files named)."""
    before, after = old.get("parts"), new.get("parts") or {}
    if not isinstance(before, Mapping):  # known only by its digest (a task file's footer)
        return "content differs"
    if old.get("kind") != new.get("kind"):
        return f"now read as {new.get('kind')}, was {old.get('kind')}"
    said = [f"{k}: new" for k in after if k not in before]
    said += [f"{k}: removed" for k in before if k not in after]
    for k in after:
        if k in before and before[k] != after[k]:
            n_new, n_old = (after[k] or {}).get("files", 1), (before[k] or {}).get("files", 1)
            said.append(f"{k}: content differs" + (f" ({n_new} files, was {n_old})" if n_new != n_old else ""))
    skip = {"digest", "parts", "items", "name", "source"}
    said += [f"{k}: {old.get(k)} → {new.get(k)}" for k in sorted((set(old) | set(new)) - skip)
             if old.get(k) != new.get(k)]
    if not said:
        return "content differs"
    return "; ".join(said[:5]) + (f"; and {len(said) - 5} more" if len(said) > 5 else "")
