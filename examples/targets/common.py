"""Shared by the example target servers: loading an embedded model, counting what arrives, injected faults.

The servers count every request and image they answer (and every 429 they send) so that tests can compare
Gauntlet's reported totals with the server's own count; ``GET /stats`` returns the counts, and ``--count-file``
appends one JSON line per request so the count survives a killed server.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
FAULTS = ("none", "malformed", "wrong_classes", "nan", "missing_field", "slow", "flaky")


def load_model(name: str) -> torch.nn.Module:
    """An embedded model (configs/model/<name>.yaml) on CPU, taking [0, 1] pixels, in eval mode."""
    from engine.models.loader import build_model, default_cache_dir, ensure_checkpoint

    cfg: dict[str, Any] = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
    cache = os.environ.get("GAUNTLET_CACHE_DIR") or str(default_cache_dir())
    cfg["checkpoint"] = str(cfg["checkpoint"]).replace("${cache_dir}", cache)
    ensure_checkpoint(name, cfg, progress=False, cache_dir=cache)
    return build_model(name, cfg, torch.device("cpu"))


class Counter:
    """Requests and images answered, 429s sent; thread-safe, optionally mirrored to a JSON-lines file."""

    def __init__(self, count_file: str | None = None) -> None:
        self.requests = self.images = self.throttled = 0
        self._lock = threading.Lock()
        self._file = Path(count_file) if count_file else None

    def add(self, images: int = 0, throttled: int = 0) -> None:
        with self._lock:
            self.requests += 0 if throttled else 1
            self.images += images
            self.throttled += throttled
            if self._file is not None:
                with self._file.open("a") as fh:
                    fh.write(json.dumps({"images": images, "throttled": throttled}) + "\n")

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "images": self.images, "throttled": self.throttled}


class RateGate:
    """At most ``rate`` accepted requests per second (a minimum spacing); past it the caller answers 429."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                return False
            self._next = now + self.interval
            return True


def faulty(scores: list[list[float]], fault: str) -> Any:
    """Scores as a faulty server would return them (for the fault tests); ``none`` leaves them alone."""
    if fault == "wrong_classes":
        return [row[:-1] for row in scores]
    if fault == "nan":
        return [[float("nan"), *row[1:]] for row in scores]
    return scores


async def require_token(request: Any, call_next: Any) -> Any:
    """With TARGET_TOKEN set in the server's environment, every request but health needs ``Bearer <token>``."""
    from fastapi.responses import JSONResponse

    token = os.environ.get("TARGET_TOKEN")
    open_paths = ("/health", "/v2/health/ready", "/v2/health/live", "/stats")
    if token and request.url.path not in open_paths and request.headers.get("authorization") != f"Bearer {token}":
        return JSONResponse({"error": "unauthorised"}, status_code=401)
    return await call_next(request)


class Flaky:
    """Every other request fails with HTTP 503 (fault ``flaky``: the client must retry and count it)."""

    def __init__(self) -> None:
        self._n = 0
        self._lock = threading.Lock()

    def fails_now(self) -> bool:
        with self._lock:
            self._n += 1
            return self._n % 2 == 1


def base_app(count_file: str | None, rate: float | None, fault: str,
             fault_control: bool) -> tuple[Any, Counter, RateGate, dict[str, str], Flaky]:
    """What both example servers start from: a FastAPI app behind the token check, its request counter, rate gate,
    injected-fault state and flaky switch, and ``POST /fault/{mode}`` (tests only: refused without
    ``--fault-control``)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    app.middleware("http")(require_token)
    state = {"fault": fault}

    @app.post("/fault/{mode}")
    def set_fault(mode: str) -> Any:
        """Switch the injected fault (tests); only with --fault-control."""
        if not fault_control or mode not in FAULTS:
            return JSONResponse({"error": "fault control is off"}, 403)
        state["fault"] = mode
        return {"fault": mode}

    return app, Counter(count_file), RateGate(rate), state, Flaky()
