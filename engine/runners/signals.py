"""SIGINT and SIGTERM while a sweep runs: one clear stop, whichever runner holds the work.

The driver (``engine.sweep``) runs its tasks inside :func:`interruptible`: the first signal raises
:class:`Interrupted` in the main thread, the runner's clean-up runs (Ray actors killed, the private
instance shut down, thread counts restored), and the driver says in one line what is kept and how
to resume. :func:`keeping_handlers` protects those handlers from libraries that install their own
(``ray.init`` replaces SIGTERM's with ``sys.exit(15)``, and Ray's native handler prints a stack dump).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from engine.errors import GauntletError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(GauntletError):
    """SIGINT or SIGTERM during a sweep: the rows written so far stay; the CLI exits 128 + the signal."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def interruptible() -> Iterator[None]:
    """In the main thread, SIGINT and SIGTERM raise :class:`Interrupted` once; repeats while it unwinds are
    ignored, so the clean-up finishes. Elsewhere (a sweep run from a thread) signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    before = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def keeping_handlers() -> Iterator[None]:
    """Put back the SIGINT/SIGTERM handlers that held before the block (e.g. around ``ray.init``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in before.items():
            if h is not None:  # always re-set: a native handler installed meanwhile is invisible to getsignal
                signal.signal(s, h)
