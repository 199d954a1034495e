"""Start the example target servers (examples/targets/) as subprocesses on 127.0.0.1 for tests; always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import REPO

SCRIPTS = {"oip": (REPO / "examples/targets/oip_server.py", "/v2/health/ready"),
           "upload": (REPO / "examples/targets/upload_app.py", "/health"),
           "ray_serve": (REPO / "examples/targets/serve_oip.py", "/v2/health/ready")}
# Ray Serve starts a private Ray instance (raylet, GCS, actors): its own process group, stopped by SIGTERM first
# (serve.shutdown, ray.shutdown), then the whole group killed; a SIGTERM to the group would kill the raylet
# under the shutdown and hang it.
GROUPS = {"ray_serve"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running example server: its base URL, process and the arguments to start it again."""

    kind: str
    port: int
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        script, health = SCRIPTS[self.kind]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **self.env}
        self.proc = subprocess.Popen([sys.executable, str(script), "--port", str(self.port), *self.args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=self.kind in GROUPS)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.proc.poll()) is not None:
                err = self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else ""
                self.stop()  # what the server started (a Ray instance) goes too
                raise RuntimeError(f"{self.kind} server exited with {code}: {err}")
            try:
                if httpx.get(self.url + health, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.kind} server not ready on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.kind in GROUPS:
            self._stop_group(self.proc)
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    @staticmethod
    def _stop_group(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
        """SIGTERM to the server (a clean shutdown), then SIGKILL to whatever of its group is left."""
        if proc.poll() is None:
            proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def fault(self, mode: str) -> None:
        """Switch the server's injected fault (it runs with --fault-control)."""
        token = self.env.get("TARGET_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        httpx.post(f"{self.url}/fault/{mode}", headers=headers, timeout=5.0).raise_for_status()

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(self.url + "/stats", timeout=5.0).json())


@contextmanager
def serve(kind: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    server = Server(kind, free_port(), args, env or {})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def count_file_totals(path: Path) -> dict[str, int]:
    """Totals of a server's --count-file (survives restarts): requests answered, images, 429s."""
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {"requests": sum(1 for r in rows if not r["throttled"]), "images": sum(r["images"] for r in rows),
            "throttled": sum(r["throttled"] for r in rows)}
