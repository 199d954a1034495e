"""Benchmark the oracle: queries/s against the Open Inference Protocol server on loopback vs the model in-process.

    python scripts/bench_remote.py                  # batch 64, 20 timed batches per row
    python scripts/bench_remote.py --batches 50 --concurrency 1,2,4
    python scripts/bench_remote.py --servers uvicorn,ray_serve  # the same rows through Ray Serve too

Rows (all on the same ``digits_cnn``, the same 64 digits, distinct pixels per batch so no row is cached):

* ``model``: the model's forward on the batch, nothing else (what the server itself spends per batch);
* ``local oracle``: ``LocalOracle`` (8-bit grid, cache keys, budgets, statistics; PNG is the identity);
* ``oip …``: ``OIPOracle`` over HTTP to examples/targets/oip_server.py on 127.0.0.1 (a subprocess), as JSON FP32,
  JSON UINT8 and the binary tensor extension (UINT8), one batch at a time;
* ``oip binary ×C``: C batches in flight at once (the oracle's concurrency), throughput only.

``--servers`` picks the server behind the ``oip`` rows: ``uvicorn`` (examples/targets/oip_server.py, the default),
``ray_serve`` (examples/targets/serve_oip.py: the same app as one Ray Serve replica), or both, one after the other.

The oracle's overhead per image is (oracle time − model time) / batch: everything Gauntlet adds (encoding, HTTP,
JSON, accounting) on top of the model. Not a test: figures go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import torch  # noqa: E402

from engine.data.digits import load_digits  # noqa: E402
from engine.remote.http import OIPOracle  # noqa: E402
from engine.remote.local import LocalOracle  # noqa: E402
from examples.targets.common import load_model  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVERS = {"uvicorn": "oip_server.py", "ray_serve": "serve_oip.py"}


def _start_server(kind: str, port: int, threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, str(REPO / "examples/targets" / SERVERS[kind]), "--port", str(port),
                             "--models", "digits_cnn"], env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    _stop_server(proc)
    raise SystemExit(f"the {kind} OIP server did not start within 240 s")


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Ray Serve shuts its Ray instance down), then SIGKILL to whatever of the group is left."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _batches(n: int, size: int) -> list[torch.Tensor]:
    """``n`` distinct batches (a different 1/255 offset pattern each), so nothing is answered from a cache."""
    x = load_digits().images[:size]
    gen = torch.Generator().manual_seed(0)
    return [(x + torch.randint(0, 3, x.shape, generator=gen) / 255.0).clamp(0, 1) for _ in range(n)]


def _time(fn, batches: list[torch.Tensor]) -> float:  # type: ignore[no-untyped-def]
    fn(batches[0])  # warm-up (connection, first call)
    times = []
    for b in batches[1:]:
        start = time.perf_counter()
        fn(b)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _throughput(oracle: OIPOracle, batches: list[torch.Tensor], workers: int) -> float:
    ids = torch.arange(len(batches[0]))
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda b: oracle.query(b, ids), batches))
    return len(batches) * len(batches[0]) / (time.perf_counter() - start)


def _bench_server(kind: str, args: argparse.Namespace, batches: list[torch.Tensor], ids: torch.Tensor,
                  rows: list[tuple[str, float]], through: dict[str, float]) -> None:
    """The ``oip`` rows against one server (``kind``), appended to ``rows`` and ``through``."""
    port = _free_port()
    server = _start_server(kind, port, args.threads)
    try:
        url = f"http://127.0.0.1:{port}"
        for label, kw in (("oip JSON fp32", {}), ("oip JSON uint8", {"tensor": "uint8"}),
                          ("oip binary uint8", {"tensor": "uint8", "binary": True})):
            oracle = OIPOracle(url, "digits_cnn", num_classes=10, cache=False, max_batch=args.batch, **kw)
            rows.append((f"{label} ({kind})", _time(lambda b, o=oracle: o.query(b, ids), batches)))  # type: ignore[misc]
        for c in (int(c) for c in args.concurrency.split(",")):
            oracle = OIPOracle(url, "digits_cnn", num_classes=10, cache=False, max_batch=args.batch,
                               tensor="uint8", binary=True, concurrency=c)
            through[f"oip binary uint8 ({kind}), {c} in flight"] = _throughput(oracle, batches, c)
    finally:
        _stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, client and server each")
    parser.add_argument("--servers", default="uvicorn", help="uvicorn, ray_serve or both (comma-separated)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("digits_cnn")
    batches = _batches(args.batches + 1, args.batch)
    ids = torch.arange(args.batch)
    rows: list[tuple[str, float]] = []
    through: dict[str, float] = {}
    with torch.no_grad():
        rows.append(("model (forward only)", _time(model, batches)))
    local = LocalOracle(model, num_classes=10, cache=False)
    rows.append(("local oracle", _time(lambda b: local.query(b, ids), batches)))
    for kind in args.servers.split(","):
        _bench_server(kind, args, batches, ids, rows, through)
    base = rows[0][1]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"batch {args.batch}, median of {args.batches} batches")
    print("| path | ms / batch | images/s | overhead vs model, ms / image |")
    print("|---|---:|---:|---:|")
    for label, t in rows:
        print(f"| {label} | {t * 1000:.1f} | {args.batch / t:.0f} | {(t - base) * 1000 / args.batch:.3f} |")
    for label, ips in through.items():
        print(f"| {label} | - | {ips:.0f} | - |")


if __name__ == "__main__":
    main()
