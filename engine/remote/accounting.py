"""Every query counted: per-sample budgets per scope, the run's budget, rate and concurrency limits, call statistics.

Shared by every oracle (in-process, Open Inference Protocol, upload). Per-sample counts include cache hits (an
attack that asks the same thing twice is charged twice, as the paper's query count is); the run's budget and the
``sent`` total count only rows that reached the endpoint, so ``sent`` equals the server's own image count.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from engine.errors import ConfigError
from engine.remote.api import QueryBudgetExhausted

# Sample ids below zero are charged to the run only (a remote model's forward pass: clean accuracy, corruptions).
RUN_ONLY = -1


@runtime_checkable
class Limiter(Protocol):
    """The run's budget, request rate and concurrency: one per run (under Ray, one actor shared by all workers)."""

    def reserve(self, rows: int) -> None:
        """Take ``rows`` from the run's budget, or raise QueryBudgetExhausted taking nothing."""
        ...

    def refund(self, rows: int) -> None:
        """Give back rows reserved for a call that never reached the endpoint."""
        ...

    def spent(self) -> int:
        """Rows taken from the run's budget so far (what earlier, killed attempts spent included)."""
        ...

    def slot(self) -> AbstractContextManager[None]:
        """Hold one of the concurrent-request slots, after waiting for the request-rate limit."""
        ...

    def throttle(self, seconds: float) -> None:
        """The endpoint answered 429: nobody starts a request for ``seconds``, and requests are spaced wider."""
        ...

    def relax(self) -> None:
        """A request succeeded: the spacing added by earlier 429s shrinks again."""
        ...


class LocalLimiter:
    """A thread-safe :class:`Limiter` for one process."""

    def __init__(self, run_budget: int | None = None, rate_per_s: float | None = None,
                 concurrency: int = 4, already_spent: int = 0, spent_file: str | None = None) -> None:
        if run_budget is not None and run_budget < 0:
            raise ConfigError(f"remote run_budget must be ≥ 0 or null, got {run_budget}")
        if rate_per_s is not None and rate_per_s <= 0:
            raise ConfigError(f"remote rate_limit must be > 0 requests/s or null, got {rate_per_s}")
        if concurrency < 1:
            raise ConfigError(f"remote concurrency must be ≥ 1, got {concurrency}")
        self.run_budget = run_budget
        self.rate_per_s = rate_per_s
        self.concurrency = concurrency
        self._spent = int(already_spent)
        # the run folder's record of this target's spend, rewritten (atomically) after every change, so a killed
        # sweep leaves it behind; under Ray the one limiter actor writes it (engine/runners/ray.py)
        self.spent_file = spent_file
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._next_start = 0.0
        self._penalty = 0.0  # extra spacing (s) after 429s: doubled on each, shrunk by 5 % per success

    def reserve(self, rows: int) -> None:
        with self._lock:
            if self.run_budget is not None and self._spent + rows > self.run_budget:
                raise QueryBudgetExhausted(
                    f"the run's query budget ({self.run_budget}) would be exceeded: {self._spent} spent, "
                    f"{rows} more asked; nothing was sent")
            self._spent += rows
            self._persist(rows)

    def refund(self, rows: int) -> None:
        with self._lock:
            self._spent = max(0, self._spent - rows)
            self._persist(rows)

    def resync(self, spent: int) -> None:
        """Take the total another holder of this target's budget reached (the Ray limiter actor, after a run)."""
        with self._lock:
            self._spent = int(spent)
            self._persist(1)

    def _persist(self, changed: int) -> None:
        """Under the lock: totals reach the file in order."""
        if self.spent_file is None or not changed:
            return
        tmp = f"{self.spent_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{self._spent}\n")
        os.replace(tmp, self.spent_file)

    def spent(self) -> int:
        return self._spent

    def throttle(self, seconds: float) -> None:
        with self._lock:
            self._next_start = max(self._next_start, time.monotonic() + seconds)
            self._penalty = min(1.0, max(2.0 * self._penalty, 0.02))

    def relax(self) -> None:
        with self._lock:
            self._penalty = 0.0 if self._penalty < 1e-3 else 0.95 * self._penalty

    def _wait_rate(self) -> None:
        with self._lock:
            interval = max(1.0 / self.rate_per_s if self.rate_per_s else 0.0, self._penalty)
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + interval
        if start > now:
            time.sleep(start - now)

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot (False if none freed within ``timeout``), then wait for the rate limit."""
        if not self._slots.acquire(timeout=timeout):
            return False
        try:
            self._wait_rate()
        except BaseException:
            self._slots.release()
            raise
        return True

    def release(self) -> None:
        self._slots.release()

    @contextmanager
    def slot(self):  # type: ignore[no-untyped-def]
        self.acquire()
        try:
            yield
        finally:
            self.release()


class LeasedLimiter(LocalLimiter):
    """A limiter whose slots are leases: one held longer than ``lease_s`` (its holder died: a killed Ray worker)
    is taken back, so a lost worker cannot shrink the run's concurrency for good. Served by the Ray limiter actor."""

    def __init__(self, *args: Any, lease_s: float = 120.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lease_s = lease_s
        self._leases: dict[int, float] = {}
        self._next_token = 0
        self._lease_lock = threading.Lock()
        self.reclaimed = 0

    def acquire_lease(self) -> int:
        while not self.acquire(timeout=min(1.0, self.lease_s)):
            self._reclaim()
        with self._lease_lock:
            self._next_token += 1
            self._leases[self._next_token] = time.monotonic()
            return self._next_token

    def release_lease(self, token: int) -> None:
        with self._lease_lock:
            held = self._leases.pop(token, None) is not None
        if held:  # a reclaimed lease was released already
            self.release()

    def _reclaim(self) -> None:
        now = time.monotonic()
        with self._lease_lock:
            stale = [t for t, start in self._leases.items() if now - start > self.lease_s]
            for token in stale:
                del self._leases[token]
        for _ in stale:
            self.reclaimed += 1
            self.release()


@dataclass
class CallStats:
    """Per-run call statistics an oracle reports (summary, report, Parquet run metadata)."""

    calls: int = 0  # HTTP requests (or model calls) that returned an answer
    rows: int = 0  # rows asked, cache hits included
    cached: int = 0  # rows answered from the cache
    sent: int = 0  # rows that reached the endpoint (equals the server's image count)
    retries: int = 0
    throttled: int = 0  # HTTP 429 answers
    timeouts: int = 0
    failed: int = 0  # calls that failed after their retries
    excluded: int = 0  # samples excluded under on_error: skip
    latencies: list[float] = field(default_factory=list)

    COUNTS: ClassVar[tuple[str, ...]] = ("calls", "rows", "cached", "sent", "retries", "throttled", "timeouts",
                                         "failed", "excluded")

    def as_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies, dtype=float) * 1000.0
        p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if lat.size else (0.0, 0.0)
        return {"calls": self.calls, "rows": self.rows, "cached": self.cached, "sent": self.sent,
                "retries": self.retries, "throttled": self.throttled, "timeouts": self.timeouts,
                "failed": self.failed, "excluded": self.excluded,
                "latency_p50_ms": round(p50, 3), "latency_p99_ms": round(p99, 3)}


class SampleLedger:
    """Per-sample queries within scopes: used (cache hits included), budget, queries to success."""

    def __init__(self, default_budget: int | None) -> None:
        if default_budget is not None and default_budget < 1:
            raise ConfigError(f"remote budget_per_sample must be ≥ 1 or null, got {default_budget}")
        self.default_budget = default_budget
        self.scope_key = ""
        self.budget = default_budget
        self._used: dict[str, dict[int, int]] = defaultdict(dict)
        self._success: dict[str, dict[int, int]] = defaultdict(dict)
        self._lock = threading.Lock()

    @contextmanager
    def scope(self, key: str, budget_per_sample: int | None):  # type: ignore[no-untyped-def]
        if budget_per_sample is not None and budget_per_sample < 1:
            raise ConfigError(f"a scope's budget per sample must be ≥ 1 or null, got {budget_per_sample}")
        saved = (self.scope_key, self.budget)
        self.scope_key = key
        self.budget = budget_per_sample if budget_per_sample is not None else self.default_budget
        try:
            yield
        finally:
            self.scope_key, self.budget = saved

    def used(self, ids: list[int]) -> list[int]:
        table = self._used[self.scope_key]
        return [table.get(i, 0) for i in ids]

    def remaining(self, ids: list[int]) -> list[int]:
        big = np.iinfo(np.int64).max
        if self.budget is None:
            return [big] * len(ids)
        return [big if i < 0 else max(0, self.budget - u) for i, u in zip(ids, self.used(ids), strict=True)]

    def charge_check(self, ids: list[int]) -> None:
        """Raise QueryBudgetExhausted (charging nothing) if one query per row would take a sample past its budget."""
        if self.budget is None:
            return
        table = self._used[self.scope_key]
        want: dict[int, int] = defaultdict(int)
        for i in ids:
            want[i] += 1
        over = [i for i, n in want.items() if i >= 0 and table.get(i, 0) + n > self.budget]
        if over:
            raise QueryBudgetExhausted(
                f"sample(s) {sorted(over)[:5]} would pass their budget of {self.budget} queries in scope "
                f"{self.scope_key!r}; nothing was sent")

    def charge(self, ids: list[int]) -> None:
        """Charge one query per row (after :meth:`charge_check`)."""
        with self._lock:
            table = self._used[self.scope_key]
            for i in ids:
                table[i] = table.get(i, 0) + 1

    def mark_success(self, ids: list[int]) -> None:
        """Record the queries each sample had used when it first succeeded (later marks are ignored)."""
        table, done = self._used[self.scope_key], self._success[self.scope_key]
        for i in ids:
            done.setdefault(i, table.get(i, 0))

    def to_success(self, ids: list[int]) -> list[int]:
        """Queries to success per sample, -1 where it has not succeeded (censored)."""
        done = self._success[self.scope_key]
        return [done.get(i, -1) for i in ids]

    def totals(self) -> dict[str, int]:
        """Rows charged per scope (cache hits included)."""
        return {k: sum(v.values()) for k, v in self._used.items()}


def stats_mark(oracle: object) -> tuple[dict[str, Any], int] | None:
    """A mark of an oracle's statistics (None for an oracle without them), for :func:`stats_since`."""
    stats = getattr(oracle, "stats", None)
    if not isinstance(stats, CallStats):
        return None
    return stats.as_dict(), len(stats.latencies)


def stats_since(oracle: object, mark: tuple[dict[str, Any], int] | None) -> dict[str, Any] | None:
    """What an oracle spent since ``mark``: counts, and the latencies (s) of the calls made since."""
    stats = getattr(oracle, "stats", None)
    if mark is None or not isinstance(stats, CallStats):
        return None
    before, n = mark
    now = stats.as_dict()
    delta: dict[str, Any] = {k: now[k] - before[k] for k in CallStats.COUNTS}
    delta["latencies"] = list(stats.latencies[n:])
    delta["endpoint"] = getattr(oracle, "endpoint", "?")
    return delta
