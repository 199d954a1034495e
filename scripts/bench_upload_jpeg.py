"""Benchmark: examples crafted without knowing an upload endpoint's JPEG re-encoding vs the declared-JPEG contract.

    python scripts/bench_upload_jpeg.py                       # digits_cnn, n=30, L∞ ε=0.1, Square ≤ 1,000 queries
    python scripts/bench_upload_jpeg.py --n 20 --eps 0.2 --budget 500 --quality 50

The target is examples/targets/upload_app.py on 127.0.0.1 (a subprocess) serving ``digits_cnn``: it decodes what
it receives, JPEG-re-encodes it at ``--quality`` and classifies that. One sweep, the contracts below for the
same app, three attacks:

* ``xfer_pgd``: PGD L∞ (20 steps) white-box on the local ``digits_cnn`` (the same weights, no JPEG step), each
  example sent once to the app (a ``transfer`` perturbation whose source is local, whose target is the app);
* ``xfer_square``: Square L∞ through a lossless local oracle on ``digits_cnn`` (the same attack, seeds and budget as
  ``square``, but its success checks never see the JPEG step), each example sent once to the app;
* ``square``: Square L∞ through the app itself; every query (success checks included) is answered after the
  re-encoding. Under ``upload_jpeg`` every query is also JPEG-encoded by the client as declared, and the
  perturbation size is measured on the decoded JPEG that was sent.

Three contracts for the same app: ``upload_png`` (PNG sent, the re-encoding not declared), ``upload_known`` (PNG
sent, ``reencode_jpeg: <quality>`` declared: the transfers craft on the local weights behind that JPEG round trip,
engine/perturbations/transfer.py ``ThroughEndpoint``), ``upload_jpeg`` (``encoding: jpeg``: the client sends JPEG).
Rows "crafted without knowing" are the two ``xfer_*`` rows under ``upload_png``, "knowing" the same under
``upload_known``: their success rates are the app's answer after re-encoding. Success = the app answers the clean
image correctly and the example wrongly, with its perturbation size (measured by the engine on the pixels sent)
≤ ε; 95 % Wilson intervals. Not a test: figures go to
docs/BENCHMARKS.md and docs/remote-targets.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from engine.compose.config import compose_sweep  # noqa: E402
from engine.stats.intervals import wilson_interval  # noqa: E402
from engine.store.results import read  # noqa: E402
from engine.sweep import run_sweep  # noqa: E402

TRANSFER = "engine.perturbations.transfer.Transfer"
SIZE_TOL = 1e-6  # float64 sizes of 8-bit pixels: exact up to rounding


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def upload_app(quality: int, model: str = "digits_cnn") -> Iterator[str]:
    """The example upload app on 127.0.0.1 (a subprocess, always killed); yields its /classify URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "examples/targets/upload_app.py"), "--port", str(port),
                             "--model", model, "--jpeg-quality", str(quality)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"upload app did not start (exit {proc.poll()})")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/classify"
    finally:
        proc.kill()
        proc.wait(timeout=30)


def remote_model(url: str, encoding: str, quality: int, budget: int, reencode: int | None = None) -> dict[str, Any]:
    """The upload app's contract: scores at ``scores``, images sent as ``encoding`` (JPEG at ``quality``), and, when
    ``reencode`` is given, the app's own JPEG re-encoding declared (``reencode_jpeg``)."""
    block = {"protocol": "upload", "url": url, "output": "probs", "num_classes": 10, "encoding": encoding,
             "jpeg_quality": quality, "upload": {"scores_path": "scores"}, "budget_per_sample": budget,
             "concurrency": 4, "timeout_s": 30}
    return {"remote": block if reencode is None else {**block, "reencode_jpeg": reencode}}


def sweep_config(url: str, out: Path, *, n: int, eps: list[float], budget: int, quality: int,
                 pgd_steps: int = 20, batch_size: int = 32) -> dict[str, Any]:
    """The local model and two contracts for the same app × (square, xfer_square, xfer_pgd), at levels [0, *ε]."""
    base = compose_sweep(("model=[digits_cnn]", "perturbation=[square_linf_remote,pgd_linf]", f"n_examples={n}",
                          f"batch_size={batch_size}", "progress=false", f"out_dir={out}"))
    source = copy.deepcopy(base["model"]["digits_cnn"])
    square = {**base["perturbation"]["square_linf_remote"], "eps": [0.0, *eps], "budget": budget}
    pgd = {**base["perturbation"]["pgd_linf"], "eps": [0.0, *eps], "steps": pgd_steps}

    def transfer(attack: dict[str, Any], name: str) -> dict[str, Any]:
        # the inner attack keeps its white-box / local name: the same seeds as the sweep's own attack
        return {"_target_": TRANSFER, "source": "digits_cnn", "source_model": copy.deepcopy(source),
                "attack": {**copy.deepcopy(attack), "name": name}}

    base["perturbation"] = {"square": {**square, "name": "square"}, "xfer_square": transfer(square, "square"),
                            "xfer_pgd": transfer(pgd, "pgd_linf")}
    base["model"] = {"digits_cnn": source, "upload_png": remote_model(url, "png", quality, budget),
                     "upload_known": remote_model(url, "png", quality, budget, reencode=quality),
                     "upload_jpeg": remote_model(url, "jpeg", quality, budget)}
    return base


def success_table(out: Path, eps: float) -> list[dict[str, Any]]:
    """Per (model, perturbation) at one ε: samples the app answered correctly clean (``attacked``), those it then
    answered wrongly (``fooled``), those of them whose recorded size (on the pixels sent) is ≤ ε (``fooled_in``),
    each rate with its 95 % Wilson interval, the largest recorded size and the median queries."""
    t = read(out).to_pandas()
    rows = []
    for (model, pert), g in t.groupby(["model", "perturbation"], sort=True):
        clean = g[g["level"] == 0].set_index("sample_id")["correct"]
        at = g[np.isclose(g["level"], eps)].set_index("sample_id")
        a = at.loc[clean[clean].index.intersection(at.index)]
        wrong = ~a["correct"].astype(bool)
        inside = a["perturbation_size"] <= eps + SIZE_TOL
        row: dict[str, Any] = {"model": model, "perturbation": pert, "eps": eps, "attacked": len(a),
                               "max_size": float(a["perturbation_size"].max()) if len(a) else 0.0,
                               "median_queries": float(a["queries"].median()) if len(a) else 0.0}
        for key, k in (("fooled", int(wrong.sum())), ("fooled_in", int((wrong & inside).sum()))):
            lo, hi = wilson_interval(k, len(a))
            row.update({key: k, f"{key}_rate": k / len(a) if len(a) else float("nan"), f"{key}_ci": (lo, hi)})
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> None:
    print(f"digits_cnn behind examples/targets/upload_app.py (JPEG q{args.quality}), L∞ ε={args.eps}, "
          f"n={args.n}, Square ≤ {args.budget} queries, PGD {args.pgd_steps} steps; {wall:.0f} s "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    print(f"{'ε':>5} {'target':<13} {'attack':<12} {'attacked':>8} {'fooled':>6} {'rate [95 % CI]':>19} "
          f"{'≤ ε sent':>8} {'rate [95 % CI]':>19} {'max size':>8} {'med. q':>6}")

    def rate(r: dict[str, Any], key: str) -> str:
        lo, hi = r[f"{key}_ci"]
        return f"{r[f'{key}_rate']:.2f} [{lo:.2f}, {hi:.2f}]"

    for r in rows:
        print(f"{r['eps']:>5g} {r['model']:<13} {r['perturbation']:<12} {r['attacked']:>8} {r['fooled']:>6} "
              f"{rate(r, 'fooled'):>19} {r['fooled_in']:>8} {rate(r, 'fooled_in'):>19} {r['max_size']:>8.4f} "
              f"{r['median_queries']:>6.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    parser.add_argument("--budget", type=int, default=1000, help="Square's queries per sample")
    parser.add_argument("--quality", type=int, default=75, help="the app's JPEG quality (and the declared one)")
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one); kept")
    parser.add_argument("--table-only", action="store_true", help="print the table of an existing --out folder")
    args = parser.parse_args(argv)
    if args.table_only and args.out:
        print_table([r for e in args.eps for r in success_table(args.out, e)], args, 0.0)
        return
    with tempfile.TemporaryDirectory() as tmp, upload_app(args.quality) as url:
        out = args.out or Path(tmp) / "run"
        started = time.perf_counter()
        run_sweep(sweep_config(url, out, n=args.n, eps=args.eps, budget=args.budget, quality=args.quality,
                               pgd_steps=args.pgd_steps))
        wall = time.perf_counter() - started
        print_table([r for e in args.eps for r in success_table(out, e)], args, wall)


if __name__ == "__main__":
    main()
