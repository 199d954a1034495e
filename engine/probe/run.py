"""Run the probe: a reference answer, load at increasing concurrency, then crafted inputs, each followed by a
check that the service is up and still answers the reference image as before. Stops by itself at the request
cap or the deadline, whichever comes first; what was skipped is a row saying so, never a silent gap.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.compose.threat_model import parse_tags
from engine.errors import ConfigError, GauntletError
from engine.probe import payloads
from engine.remote.api import QueryBudgetExhausted
from engine.remote.http import safe_url
from engine.remote.raw import RawClient, RawResult

PROBE_TAGS = {"knowledge": "black-box", "goal": "none", "stride": "denial-of-service",
              "atlas": ["AML.T0029", "AML.T0034", "AML.T0040"]}
CASES = ("largest_allowed", "oversized", "malformed", "bomb", "slow_client")
CRAFTED_SHARE = 3 * len(CASES) + 2  # each case, its health check and its reference re-check, plus spare


@dataclass(frozen=True)
class ProbeSettings:
    url: str
    max_requests: int
    duration_s: float
    levels: tuple[int, ...] = (1, 2, 4, 8)
    timeout_s: float = 10.0
    health: str = "/health"
    field: str = "file"
    side: int = 32  # the contract's image size: the largest input it allows
    channels: int = 1
    oversize_side: int = 2048
    bomb_side: int = 20000
    slow_chunk: int = 64
    slow_pause_s: float = 0.05
    allow_remote: bool = False


def tags() -> dict[str, Any]:
    return parse_tags("gauntlet probe", PROBE_TAGS).as_dict()


def _upload(client: RawClient, data: bytes, field: str, timeout_s: float | None = None) -> RawResult:
    return client.request(files={field: ("x.png", data, "image/png")}, timeout_s=timeout_s)


def _label(r: RawResult) -> int | None:
    return r.body.get("label") if r.status == 200 and isinstance(r.body, dict) else None


def _level(client: RawClient, s: ProbeSettings, image: bytes, ref: int, c: int, n: int, until: float
           ) -> dict[str, Any]:
    """``n`` requests of the reference image from ``c`` threads (or fewer, at the level's deadline)."""
    results: list[RawResult] = []
    issued = [0]
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < until:
            with lock:
                if issued[0] >= n:
                    return
                issued[0] += 1
            try:
                r = _upload(client, image, s.field)
            except QueryBudgetExhausted:  # the cap is shared with the crafted phase: stop, never overspend
                return
            with lock:
                results.append(r)

    with ThreadPoolExecutor(max_workers=c) as pool:
        for f in [pool.submit(worker) for _ in range(c)]:
            f.result()
    done = results
    ms = np.array([r.seconds * 1000 for r in done if r.status is not None]) if done else np.zeros(0)
    errors = sum(1 for r in done if _label(r) != ref)
    return {"phase": "load", "case": f"concurrency {c}", "concurrency": c, "requests": len(done),
            "errors": errors, "error_rate": errors / len(done) if done else float("nan"),
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def _after(client: RawClient, s: ProbeSettings, image: bytes, ref: int) -> tuple[bool, bool]:
    """(up, correct): the health route answers or the reference image does; the answer is the reference one."""
    health = client.request("GET", s.health, timeout_s=min(s.timeout_s, 5.0))
    again = _upload(client, image, s.field)
    return (health.status == 200 or again.status == 200), _label(again) == ref


def _verdict(r: RawResult, timeout_s: float) -> str:
    if r.status is None:
        return f"hung: no answer within {timeout_s:g} s" if r.error == "timeout" else f"no answer ({r.error})"
    if r.status < 300:
        return "answered"
    return f"refused (HTTP {r.status})" if r.status < 500 else f"server error (HTTP {r.status})"


def _send_case(client: RawClient, s: ProbeSettings, case: str, image: bytes) -> RawResult:
    if case == "slow_client":
        return client.slow_upload(image, s.slow_chunk, s.slow_pause_s, s.field)
    data = {"largest_allowed": lambda: payloads.noise(s.side, s.channels, 1),
            "oversized": lambda: payloads.noise(s.oversize_side, s.channels, 2),
            "malformed": payloads.malformed, "bomb": lambda: payloads.bomb(s.bomb_side)}[case]()
    return _upload(client, data, s.field)


def crafted(client: RawClient, s: ProbeSettings, image: bytes, ref: int, deadline: float) -> list[dict[str, Any]]:
    rows = []
    down = ""
    for case in CASES:
        row: dict[str, Any] = {"phase": "crafted", "case": case}
        if down:  # a service that stopped answering is not probed further: what follows would measure nothing
            rows.append({**row, "note": f"skipped: the service was down after {down}"})
            continue
        if time.monotonic() >= deadline or client.left() < 3:
            rows.append({**row, "note": "skipped: the probe's duration or request cap was reached"})
            continue
        r = _send_case(client, s, case, image)
        up, correct = _after(client, s, image, ref)
        down = "" if up else case
        rows.append({**row, "requests": 1, "status": r.status, "seconds": round(r.seconds, 3),
                     "note": _verdict(r, s.timeout_s), "stayed_up": up, "correct_after": correct})
    return rows


def probe(s: ProbeSettings, image: np.ndarray) -> list[dict[str, Any]]:
    """Every row of the probe against ``s.url`` (``image``: an H×W uint8 the service should classify)."""
    if s.max_requests < CRAFTED_SHARE + len(s.levels) + 1:
        raise ConfigError(f"probe max_requests={s.max_requests} is too small: the crafted inputs alone take "
                          f"{CRAFTED_SHARE}; give at least {CRAFTED_SHARE + len(s.levels) + 1}")
    tm = tags()
    start = time.monotonic()
    deadline = start + s.duration_s
    client = RawClient(s.url, s.max_requests, s.timeout_s, s.allow_remote)
    try:
        ref_png = payloads.png(image)
        first = _upload(client, ref_png, s.field)
        ref = _label(first)
        if ref is None:
            raise GauntletError(f"probe: {safe_url(s.url)} did not answer a valid {image.shape} image "
                                f"({_verdict(first, s.timeout_s)}); nothing else was sent")
        share = (s.max_requests - CRAFTED_SHARE - 1) // len(s.levels)
        load_until = start + 0.6 * s.duration_s
        rows = []
        for i, c in enumerate(s.levels):
            until = start + (load_until - start) * (i + 1) / len(s.levels)
            rows.append(_level(client, s, ref_png, ref, c, share, until))
        rows += crafted(client, s, ref_png, ref, deadline)
    finally:
        client.close()
    meta = {"target": safe_url(s.url), "host": client.host, "requests_total": client.sent,
            "threat_model": json.dumps(tm, sort_keys=True), "atlas": PROBE_TAGS["atlas"],
            "stride": PROBE_TAGS["stride"]}
    return [{**meta, **r} for r in rows]
