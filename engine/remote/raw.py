"""Raw requests for the availability probe: payloads no oracle would send (malformed, oversized, bombs, slow).

Each request goes to one loopback endpoint unless the caller explicitly allowed another host, counts against a
hard request cap checked before anything is sent, and comes back as a :class:`RawResult` (status, seconds, error)
rather than an exception: for a probe, a refused or timed-out request is a measurement, not a failure.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from engine.errors import ConfigError
from engine.remote.api import QueryBudgetExhausted
from engine.remote.http import safe_url


@dataclass(frozen=True)
class RawResult:
    status: int | None  # None: no HTTP answer (timeout, connection refused or reset)
    seconds: float
    error: str = ""
    body: Any = None  # parsed JSON when the answer was JSON


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


class RawClient:
    """Requests to ``url`` with a hard cap; a non-loopback host is refused unless ``allow_remote``."""

    def __init__(self, url: str, max_requests: int, timeout_s: float = 10.0, allow_remote: bool = False) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"probe url must be http(s)://host[:port]/path, got {safe_url(url)!r}")
        if not allow_remote and not is_loopback(parts.hostname):
            raise ConfigError(f"probe url {safe_url(url)}: {parts.hostname} is not a loopback address; the probe "
                              "sends load and hostile payloads, so it targets 127.0.0.1 unless allow_remote=true "
                              "(and then only a service you own, never a production traffic path)")
        if max_requests < 1:
            raise ConfigError(f"probe max_requests must be ≥ 1, got {max_requests}")
        self.url, self.host, self.max_requests, self.timeout_s = url, parts.hostname, max_requests, timeout_s
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.sent = 0
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=timeout_s)

    def _take(self) -> None:
        with self._lock:
            if self.sent >= self.max_requests:
                raise QueryBudgetExhausted(f"probe: the request cap ({self.max_requests}) is spent")
            self.sent += 1

    def left(self) -> int:
        with self._lock:
            return self.max_requests - self.sent

    def request(self, method: str = "POST", path: str | None = None, timeout_s: float | None = None,
                **kwargs: Any) -> RawResult:
        """One request (to ``url``, or ``path`` on the same host); counted before it is sent."""
        self._take()
        target = self.url if path is None else self.base + path
        start = time.perf_counter()
        try:
            resp = self._client.request(method, target, timeout=timeout_s or self.timeout_s, **kwargs)
        except httpx.TimeoutException:
            return RawResult(None, time.perf_counter() - start, "timeout")
        except httpx.TransportError as exc:
            return RawResult(None, time.perf_counter() - start, f"{type(exc).__name__}")
        seconds = time.perf_counter() - start
        try:
            body = resp.json()
        except ValueError:
            body = None
        return RawResult(resp.status_code, seconds, "" if resp.status_code < 400 else f"HTTP {resp.status_code}",
                         body)

    def slow_upload(self, data: bytes, chunk: int, pause_s: float, field: str = "file") -> RawResult:
        """A multipart upload whose body trickles in ``chunk`` bytes every ``pause_s`` seconds (a slow client)."""
        boundary = "gauntletprobe"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        body = head + data + f"\r\n--{boundary}--\r\n".encode()

        def trickle() -> Iterator[bytes]:
            for i in range(0, len(body), chunk):
                time.sleep(pause_s)
                yield body[i : i + chunk]

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(body))}
        budget = pause_s * (len(body) / chunk + 1) + self.timeout_s
        return self.request(content=trickle(), headers=headers, timeout_s=budget)

    def close(self) -> None:
        self._client.close()
