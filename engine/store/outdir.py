"""The output folder: checked writable before any compute, and held by one Gauntlet process at a time."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from engine.errors import ConfigError, GauntletError

log = logging.getLogger(__name__)

LOCK_NAME = ".gauntlet.lock"


class OutDirBusy(GauntletError):
    """Another live Gauntlet process holds the output folder."""


def check_out_dir(out_dir: str | Path, create: bool = True, given: str | None = None) -> Path:
    """``out_dir`` (``~`` expanded) is a folder that exists or can be created, and is writable; else ConfigError.

    ``create=False`` (the command-line check before Hydra) leaves nothing behind: folders it had
    to create for the write test are removed again. ``given`` is what the user wrote when
    ``out_dir`` is its resolved value (an interpolation).
    """
    given = str(out_dir) if given is None else given
    shown = f"out_dir={given}" + ("" if given == str(out_dir) else f" (resolves to {str(out_dir)!r})")
    if not str(out_dir).strip():
        raise ConfigError(f"{shown} is empty: results would land in the current folder and Hydra's log under the "
                          "filesystem root; name a folder, e.g. out_dir=runs/mine")
    path = Path(str(out_dir)).expanduser()
    for p in (path / "results", path, *path.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{shown}: {p} is a file, not a folder; choose another out_dir=…")
    created = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".gauntlet-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = "is on a read-only filesystem" if exc.errno == errno.EROFS else f"is not writable ({exc.strerror})"
        raise ConfigError(f"{shown}: {path} {why}; choose a writable out_dir=…") from None
    finally:
        if not create:
            for p in created:
                with contextlib.suppress(OSError):  # not there (mkdir failed) or no longer empty: leave it
                    p.rmdir()
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutDirLock:
    """``<out_dir>/.gauntlet.lock`` naming the holder (pid, host, start time, command).

    A second run on the same folder is refused while the holder lives; a lock left by
    a process that is gone (same host) is taken over with a warning.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LOCK_NAME
        self.held = False

    def _holder(self) -> dict[str, object]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(sys.argv)}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and isinstance(pid, int) and not pid_alive(pid):
                    log.warning("taking over %s left by process %s, which is gone", self.path, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise OutDirBusy(
                    f"out_dir {self.path.parent} is in use by another Gauntlet run (pid {pid} on {host}, "
                    f"started {holder.get('started')}: {holder.get('command')}). Wait for it to finish, or use "
                    f"another out_dir=…; if that process is gone (e.g. another machine), delete {self.path}."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise OutDirBusy(f"could not take the lock {self.path}; delete it if no Gauntlet run uses {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutDirLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
