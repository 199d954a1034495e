"""Oracles over HTTP: the Open Inference Protocol (KServe v2 / Triton / MLServer) and a file-upload endpoint.

One :class:`Transport` per oracle sends every request: the auth header read from an environment variable (kept in
memory only, never in a message, result or log), timeouts, retries with exponential back-off that honour HTTP
429 ``Retry-After``, the limiter's request rate and concurrency. A call that still fails raises RemoteError naming
the endpoint and the status; nothing is ever made up in its place.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import torch

from engine.errors import ConfigError
from engine.remote.api import RemoteError
from engine.remote.oracle import BaseOracle, Reply

logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would drown the sweep log


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: what messages and results may name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts, retries and the auth header (by environment variable name: the value never leaves memory)."""

    timeout_s: float = 10.0
    retries: int = 3  # for timeouts, connection errors and 5xx
    throttle_retries: int = 50  # for 429: the endpoint asked us to slow down, not to give up
    backoff_s: float = 0.25
    max_backoff_s: float = 30.0
    auth_env: str | None = None
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"

    def headers(self) -> dict[str, str]:
        if not self.auth_env:
            return {}
        token = os.environ.get(self.auth_env)
        if not token:
            raise ConfigError(f"remote auth: environment variable {self.auth_env} is not set or empty")
        return {self.auth_header: f"{self.auth_scheme} {token}".strip()}


class RemoteCallError(RemoteError):
    """A RemoteError that knows whether any row reached the endpoint (``unsent``: the budget is refunded)."""

    def __init__(self, message: str, unsent: bool = False) -> None:  # one-argument form: re-raised with context
        super().__init__(message)
        self.unsent = unsent


class Transport:
    """Sends requests for one oracle and counts them into its stats (thread-safe)."""

    def __init__(self, oracle: BaseOracle, url: str, settings: HttpSettings) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"remote url must start with http:// or https://, got {safe_url(url)!r}")
        self.oracle, self.url, self.settings = oracle, url, settings
        self.name = safe_url(url)
        self._client = httpx.Client(timeout=settings.timeout_s, headers=settings.headers())
        self._lock = threading.Lock()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self.oracle.stats, key, getattr(self.oracle.stats, key) + value)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Exponential back-off, or the endpoint's ``Retry-After`` (seconds) where it asks for longer."""
        delay = min(self.settings.max_backoff_s, self.settings.backoff_s * (2 ** attempt))
        after = response.headers.get("Retry-After") if response is not None else None
        if after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date: keep the exponential back-off
                delay = min(self.settings.max_backoff_s, max(delay, float(after)))
        return delay

    def _attempt(self, kwargs: dict[str, Any]) -> tuple[httpx.Response | None, str, float]:
        """One request inside a limiter slot: (response or None, what happened, latency)."""
        with self.oracle.limiter.slot():
            start = time.perf_counter()
            try:
                response = self._client.post(self.url, **kwargs)
            except httpx.TimeoutException:
                self._count(timeouts=1)
                return None, f"timed out after {self.settings.timeout_s} s", 0.0
            except httpx.TransportError as err:
                return None, f"connection failed ({type(err).__name__})", 0.0
            return response, f"HTTP {response.status_code}", time.perf_counter() - start

    def post(self, **kwargs: Any) -> Any:
        """POST with retries; the decoded JSON body. Raises RemoteCallError naming endpoint and status."""
        failures = throttles = 0
        reached = False
        while True:
            response, status, latency = self._attempt(kwargs)
            code = response.status_code if response is not None else 0
            # rows reached the endpoint unless every answer was a refusal to start (429) or no connection
            reached = reached or (response is not None and code != 429) or status.startswith("timed out")
            if code == 429:
                throttles += 1
                self._count(throttled=1)
                if throttles > self.settings.throttle_retries:
                    break
                self.oracle.limiter.throttle(self._delay(0, response))  # every thread waits, then spaces wider
                continue
            if response is not None and code < 400:
                self.oracle.limiter.relax()
                with self._lock:
                    self.oracle.stats.calls += 1
                    self.oracle.stats.latencies.append(latency)
                return self._json(response)
            if response is not None and code < 500:
                raise RemoteCallError(f"endpoint {self.name}: HTTP {code} (not retried)", False)
            failures += 1
            if failures > self.settings.retries:
                break
            self._count(retries=1)
            time.sleep(self._delay(failures - 1, response))
        raise RemoteCallError(
            f"endpoint {self.name}: {status} after {failures + throttles} attempt(s); no prediction was "
            "made for this batch", unsent=not reached)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return json.loads(response.content)
        except ValueError:
            raise RemoteCallError(f"endpoint {self.name}: the response body is not JSON (field: body)",
                                  False) from None

    def close(self) -> None:
        self._client.close()


def _parallel(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    """``fn`` over ``items`` in order, ``workers`` at a time (the limiter still caps requests in flight)."""
    if len(items) <= 1 or workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def _field(body: Any, path: str, endpoint: str) -> Any:
    """``body`` at a dotted path (``result.scores``, ``predictions.0.label``); a clear error naming the path."""
    node = body
    for part in [p for p in path.split(".") if p]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise RemoteError(f"endpoint {endpoint}: the response has no field {path!r} (missing at {part!r})")
    return node


def _floats(values: Any, what: str, endpoint: str) -> torch.Tensor:
    try:
        return torch.tensor(values, dtype=torch.float64)
    except (TypeError, ValueError):
        raise RemoteError(f"endpoint {endpoint}: field {what!r} is not a list of numbers") from None


def _label_of(value: Any, what: str, endpoint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
        raise RemoteError(f"endpoint {endpoint}: field {what!r} is not an integer class label (got {value!r:.40})")
    return int(value)


class OIPOracle(BaseOracle):
    """``POST {url}/v2/models/{model}/infer`` with one batched input tensor (UINT8 pixels or FP32 in [0, 1])."""

    def __init__(self, url: str, model_name: str, *, http: HttpSettings | None = None, input_name: str = "input-0",
                 output_name: str | None = None, tensor: str = "fp32", max_batch: int = 64, binary: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if tensor not in ("fp32", "uint8"):
            raise ConfigError(f"remote tensor must be 'fp32' or 'uint8', got {tensor!r}")
        if max_batch < 1:
            raise ConfigError(f"remote max_batch must be ≥ 1, got {max_batch}")
        infer = f"{url.rstrip('/')}/v2/models/{model_name}/infer"
        self.transport = Transport(self, infer, http or HttpSettings())
        self.endpoint = self.transport.name
        self.scores_field = "outputs.data"
        self.input_name, self.output_name, self.tensor, self.max_batch = input_name, output_name, tensor, max_batch
        self.binary = binary  # the binary tensor data extension (Triton, KServe): raw bytes after a JSON header

    def _fetch(self, grid: torch.Tensor, payloads: list[bytes] | None) -> Reply:
        chunks = list(torch.split(grid, self.max_batch))
        replies = _parallel(self._one, chunks, self.limiter_concurrency())
        labels = torch.cat([r.labels for r in replies])
        scores = None if self.output == "label" else torch.cat([r.scores for r in replies])
        return Reply(labels, scores)

    def limiter_concurrency(self) -> int:
        return int(getattr(self.limiter, "concurrency", 4))

    def _one(self, chunk: torch.Tensor) -> Reply:
        flat = chunk.reshape(-1) if self.tensor == "uint8" else chunk.reshape(-1).float() / 255.0
        spec: dict[str, Any] = {"name": self.input_name, "shape": list(chunk.shape),
                                "datatype": "UINT8" if self.tensor == "uint8" else "FP32"}
        raw = flat.numpy().astype("<f4" if self.tensor == "fp32" else "u1").tobytes() if self.binary else b""
        if self.binary:
            spec["parameters"] = {"binary_data_size": len(raw)}
        else:
            spec["data"] = flat.tolist()
        body: dict[str, Any] = {"inputs": [spec]}
        if self.output_name:
            body["outputs"] = [{"name": self.output_name}]
        if not self.binary:
            return self._parse(self.transport.post(json=body), len(chunk))
        header = json.dumps(body).encode()
        answer = self.transport.post(content=header + raw, headers={
            "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
        return self._parse(answer, len(chunk))

    def _output(self, answer: Any) -> dict[str, Any]:
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise RemoteError(f"endpoint {self.endpoint}: the response has no list of tensors (field: outputs)")
        if self.output_name is None:
            return outputs[0]
        for out in outputs:
            if out.get("name") == self.output_name:
                return out
        raise RemoteError(f"endpoint {self.endpoint}: no output named {self.output_name!r} (field: outputs.name)")

    def _parse(self, answer: Any, n: int) -> Reply:
        out = self._output(answer)
        shape, data = out.get("shape"), out.get("data")
        if not isinstance(shape, list) or not isinstance(data, list):
            raise RemoteError(f"endpoint {self.endpoint}: output tensor lacks shape or data (field: outputs.data)")
        values = _floats(data, "outputs.data", self.endpoint)
        if self.output == "label":
            if values.numel() != n:
                raise RemoteError(f"endpoint {self.endpoint}: {values.numel()} labels for {n} images "
                                  "(field: outputs.data)")
            return Reply(torch.tensor([_label_of(v, "outputs.data", self.endpoint) for v in data]), None)
        width = values.numel() // n if n else 0
        if values.numel() != n * width or list(shape) != [n, width]:
            raise RemoteError(f"endpoint {self.endpoint}: output shape {shape} with {values.numel()} values does "
                              f"not hold {n} rows of scores (field: outputs.shape)")
        scores = values.reshape(n, width).float()
        return Reply(scores.argmax(dim=1) if width else torch.zeros(n, dtype=torch.long), scores)


class UploadOracle(BaseOracle):
    """One image file per request, as multipart form data or base64 in JSON; label/scores read at dotted paths."""

    needs_files = True

    def __init__(self, url: str, *, http: HttpSettings | None = None, mode: str = "multipart", field: str = "file",
                 label_path: str | None = "label", scores_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("multipart", "base64_json"):
            raise ConfigError(f"remote upload mode must be 'multipart' or 'base64_json', got {mode!r}")
        if self.output != "label" and not scores_path:
            raise ConfigError(f"remote output {self.output!r} needs upload.scores_path (where the scores are)")
        if self.output == "label" and not label_path:
            raise ConfigError("remote output 'label' needs upload.label_path (where the label is)")
        self.transport = Transport(self, url, http or HttpSettings())
        self.endpoint = self.transport.name
        self.scores_field = scores_path or "scores"
        self.mode, self.field, self.label_path, self.scores_path = mode, field, label_path, scores_path

    def _fetch(self, grid: torch.Tensor, payloads: list[bytes] | None) -> Reply:
        assert payloads is not None  # needs_files: the base class encoded them
        replies = _parallel(self._one, payloads, int(getattr(self.limiter, "concurrency", 4)))
        labels = torch.tensor([label for label, _ in replies], dtype=torch.long)
        if self.output == "label":
            return Reply(labels, None)
        widths = {len(s) for _, s in replies if s is not None}
        if len(widths) != 1:
            raise RemoteError(f"endpoint {self.endpoint}: score lists of different lengths {sorted(widths)} "
                              f"(field: {self.scores_path})")
        return Reply(labels, torch.stack([s for _, s in replies if s is not None]).float())

    def _one(self, data: bytes) -> tuple[int, torch.Tensor | None]:
        kind = "png" if self.image.encoding == "png" else "jpeg"
        if self.mode == "multipart":
            body = self.transport.post(files={self.field: (f"image.{kind}", data, f"image/{kind}")})
        else:
            body = self.transport.post(json={self.field: base64.b64encode(data).decode("ascii")})
        if self.output == "label":
            assert self.label_path is not None
            return _label_of(_field(body, self.label_path, self.endpoint), self.label_path, self.endpoint), None
        assert self.scores_path is not None
        scores = _floats(_field(body, self.scores_path, self.endpoint), self.scores_path, self.endpoint)
        if scores.dim() != 1:
            raise RemoteError(f"endpoint {self.endpoint}: field {self.scores_path!r} is not a flat list of scores")
        if self.label_path:
            return _label_of(_field(body, self.label_path, self.endpoint), self.label_path, self.endpoint), scores
        return (int(scores.argmax()) if scores.numel() else -1), scores
