"""Serve embedded Gauntlet models through the Open Inference Protocol with Ray Serve, a real model server.

    python examples/targets/serve_oip.py --port 8080 --models digits_cnn,digits_cnn_at

The routes and their answers are examples/targets/oip_server.py's (``make_app``: health, metadata, infer with
JSON or binary tensors, ``--label-only``, ``GET /stats``), deployed as one Ray Serve replica behind Serve's HTTP
proxy on 127.0.0.1. One replica, so ``/stats`` (and ``--count-file``) count every request the server answered.

The server starts a Ray instance of its own (``address="local"``, one CPU, no dashboard) and never joins another
cluster: ``RAY_ADDRESS`` is dropped from the environment first, so a test session's or a user's Ray instance is
left alone. SIGTERM or SIGINT shuts Serve and that Ray instance down. docs/remote-targets.md says why Ray Serve.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's engine, when run as a script

# Before Ray is imported: never attach to a running cluster, no usage report over the network.
os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray
from ray import serve

APP_NAME = "oip"
SHUTDOWN_GRACE_S = 20.0


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8)
@serve.ingress()
class OIPModels:
    """The models, loaded inside the replica; the FastAPI app is built there too (its counter holds a lock)."""

    def __init__(self, names: list[str], options: dict[str, Any]) -> None:
        import torch

        from examples.targets.common import load_model

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.models = {name: load_model(name) for name in names}
        self.options = options

    def __serve_build_asgi_app__(self) -> Any:
        from examples.targets.oip_server import make_app

        return make_app(self.models, **self.options)


def _stop_event() -> threading.Event:
    """Set by SIGTERM or SIGINT: the main thread then shuts Serve and Ray down in order."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def serve_models(port: int, names: list[str], options: dict[str, Any], object_store_mb: int) -> None:
    """Start a private Ray instance and Serve on 127.0.0.1:``port``; block until SIGTERM/SIGINT; shut down."""
    # Ray's processes inherit this environment: the replica imports examples.targets from this checkout.
    repo = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=object_store_mb << 20,
             logging_level=logging.WARNING, log_to_driver=False)
    stop = _stop_event()  # after ray.init, which installs a SIGTERM handler of its own
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(OIPModels.bind(names, options), name=APP_NAME, route_prefix="/")  # type: ignore[attr-defined]
        print(f"serving {', '.join(names)} on http://127.0.0.1:{port} (Ray Serve)", flush=True)
        stop.wait()
    finally:
        # A SIGTERM sent to the whole process group (`timeout`, a service manager) also stops the raylet, and
        # serve.shutdown then waits for it forever: past the grace the process exits, and Ray's processes, tied
        # to this one's life, go with it.
        watchdog = threading.Timer(SHUTDOWN_GRACE_S, os._exit, args=(1,))
        watchdog.daemon = True
        watchdog.start()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            watchdog.cancel()


def _refuse_early(port: int, names: list[str]) -> None:
    """One clear message before a Ray instance is started for nothing: a busy port, an unknown model."""
    from examples.targets.common import REPO

    config = REPO / "configs" / "model"
    unknown = [n for n in names if not n.isidentifier() or not (config / f"{n}.yaml").is_file()]
    if not names:
        raise SystemExit("serve_oip: --models names no model")
    if unknown:
        raise SystemExit(f"serve_oip: no embedded model config for {unknown} (configs/model/<name>.yaml)")
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            raise SystemExit(f"serve_oip: cannot listen on 127.0.0.1:{port}: {err.strerror}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--models", default="digits_cnn,digits_cnn_at")
    parser.add_argument("--label-only", action="store_true", help="answer the top-1 label only")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests/s before answering 429")
    parser.add_argument("--count-file", default=None, help="append one JSON line per request answered")
    parser.add_argument("--object-store-mb", type=int, default=100, help="the private Ray instance's object store")
    args = parser.parse_args(argv)
    names = [name for name in args.models.split(",") if name]
    _refuse_early(args.port, names)
    count_file = str(Path(args.count_file).resolve()) if args.count_file else None  # the replica's cwd differs
    options = {"label_only": args.label_only, "rate": args.rate_limit, "count_file": count_file}
    serve_models(args.port, names, options, args.object_store_mb)


if __name__ == "__main__":
    main()
