"""The run folder's query ledger (``remote_ledger.json``): what each remote target was sent, across resumed runs.

The run's budget counts what every attempt spent, killed ones included: the limiter writes the target's total to
``remote_spent.<target>.txt`` after every reservation, so a killed sweep leaves its spend behind and the resumed
run starts from it. Finished
tasks add their counts (calls, cached, retries, 429s, timeouts, excluded samples) for the summary. No secrets:
endpoints are written without query strings, and never a header.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.remote.accounting import CallStats, LocalLimiter
from engine.remote.model import install_limiter, is_remote, remote_settings, target_key

LEDGER = "remote_ledger.json"
_LEDGERS: dict[Path, RunLedger] = {}
_LOCK = threading.Lock()


class RunLedger:
    """One per run folder and process; every write is atomic (temporary file + rename)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LEDGER
        self._lock = threading.Lock()
        self.doc: dict[str, Any] = {"targets": {}}
        if self.path.exists():
            try:
                self.doc = json.loads(self.path.read_text())
            except ValueError:
                self.doc = {"targets": {}}  # a torn file cannot happen (atomic writes); a hand-edited one is reset
        self.latencies: dict[str, list[float]] = {}  # this run's call latencies, per target
        self.at_start: dict[str, int] = {}  # each target's spend when this run began (earlier runs of the folder)

    @classmethod
    def of(cls, out_dir: Path) -> RunLedger:
        key = Path(out_dir).resolve()
        with _LOCK:
            if key not in _LEDGERS:
                _LEDGERS[key] = cls(key)
            return _LEDGERS[key]

    def _target(self, key: str) -> dict[str, Any]:
        return self.doc["targets"].setdefault(key, dict.fromkeys(CallStats.COUNTS, 0))

    def spent_file(self, key: str) -> Path:
        """Where the limiter of target ``key`` keeps its running total (one small file per target)."""
        return self.path.parent / f"remote_spent.{key.replace(':', '-')}.txt"

    def spent(self, key: str) -> int:
        """Images the target received in this run folder, killed attempts included."""
        try:
            return int(self.spent_file(key).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def targets(self) -> dict[str, dict[str, Any]]:
        """Per target: the finished tasks' counts and the run's spend (from the limiter's file)."""
        return {key: {**entry, "spent": self.spent(key)} for key, entry in self.doc["targets"].items()}

    def add_task(self, key: str, remote: Mapping[str, Any], endpoint: str, run_budget: int | None) -> None:
        with self._lock:
            entry = self._target(key)
            for name in CallStats.COUNTS:
                entry[name] = int(entry.get(name, 0)) + int(remote.get(name, 0))
            entry["endpoint"], entry["run_budget"] = endpoint, run_budget
            entry["tasks"] = int(entry.get("tasks", 0)) + 1
            self.latencies.setdefault(key, []).extend(float(v) for v in remote.get("latencies", []))
            self._save()

    def declare(self, key: str, run_budget: int | None) -> None:
        """A target of this run: listed (with its spend) even if no task of it finishes."""
        with self._lock:
            self._target(key)["run_budget"] = run_budget
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(f".{LEDGER}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def percentiles(self, key: str) -> tuple[float, float] | None:
        lat = np.asarray(self.latencies.get(key, []), dtype=float) * 1000.0
        return (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if lat.size else None


def install_run_limiters(models: Mapping[str, Mapping[str, Any]], out_dir: Path) -> RunLedger | None:
    """One limiter per remote target of the sweep, starting from what the ledger says was already spent."""
    remote = {name: cfg for name, cfg in models.items() if is_remote(cfg)}
    if not remote:
        return None
    forget(out_dir)  # read the file afresh: it may have changed since an earlier sweep of this process
    ledger = RunLedger.of(out_dir)
    for name, cfg in remote.items():
        block, key = remote_settings(name, cfg), target_key(name, cfg)
        limiter = LocalLimiter(block.get("run_budget"), block.get("rate_limit"), int(block.get("concurrency") or 4),
                               already_spent=ledger.spent(key), spent_file=str(ledger.spent_file(key)))
        install_limiter(key, limiter)
        ledger.at_start[key] = ledger.spent(key)
        ledger.declare(key, block.get("run_budget"))
    return ledger


def record_task(out_dir: Path, models: Mapping[str, Mapping[str, Any]], model_name: str,
                remote: Mapping[str, Any] | None) -> None:
    """Add a finished task's oracle spend to the ledger (no-op for a local model)."""
    cfg = models.get(model_name)
    if remote is None or not is_remote(cfg):
        return
    assert cfg is not None
    block = remote_settings(model_name, cfg)
    RunLedger.of(out_dir).add_task(target_key(model_name, cfg), remote, str(remote.get("endpoint", "?")),
                                   block.get("run_budget"))


def forget(out_dir: Path) -> None:
    """Drop the process's cached ledger of ``out_dir`` (end of a sweep)."""
    with _LOCK:
        _LEDGERS.pop(Path(out_dir).resolve(), None)
