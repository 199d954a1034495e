"""What ``save_examples=broken`` costs on the default sweep, measured inside the same run; median of repeats.

    python scripts/bench_examples.py [--repeats 3] [--n-examples 200] [--quantize none] [--ab]

Each repeat runs the default sweep (both embedded digits models, the default perturbations) into a fresh
folder with ``save_examples=broken``, timing everything the feature adds — choosing and copying examples in
the evaluator (``ExampleCollector.add``/``finish``), writing them (``engine.store.examples.write``) and the
resume check of the planner (``examples.problem``) — against the sweep's wall time in that same run: the
ratio is immune to the machine's other load. ``--ab`` also runs a sweep without examples per repeat (in
alternating order) and reports the wall-time ratio, which is only meaningful on a quiet machine. The last
run is checked against the acceptance: every broken row has its example and re-scoring every example
reproduces the rows' ``pred`` exactly. Figures: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
CPU_SECONDS: list[float] = []


def _sweep(out: Path, n: int, *extra: str) -> tuple[float, dict[str, Any]]:
    from engine.compose.config import compose_sweep
    from engine.sweep import run_sweep

    cfg = compose_sweep((f"out_dir={out}", f"n_examples={n}", "progress=false", "wandb=disabled", *extra))
    t0, c0 = time.perf_counter(), time.process_time()
    run_sweep(cfg)
    CPU_SECONDS.append(time.process_time() - c0)  # this process's CPU time: far less sensitive to other load
    return time.perf_counter() - t0, cfg


def check(out: Path, cfg: dict[str, Any]) -> dict[str, int]:
    """Every broken row has its example; re-scoring the examples gives the rows' pred (raises otherwise)."""
    from engine.evaluation.resources import Resources
    from engine.store import examples
    from engine.store.results import read

    table, ex = read(out), examples.load(out)
    broken = table.filter(pc.and_(pc.invert(table["correct"]), pc.greater(table["perturbation_size"], 0)))
    keys = set(zip(ex.keys["task_id"].to_pylist(), ex.keys["level"].to_pylist(), ex.keys["sample_id"].to_pylist(),
                   strict=True))
    want = set(zip(broken["task_id"].to_pylist(), broken["level"].to_pylist(), broken["sample_id"].to_pylist(),
                   strict=True))
    assert keys == want, f"{len(want - keys)} broken row(s) without an example, {len(keys - want)} extra"
    res, mismatched = Resources(torch.device(str(cfg["device"]).replace("auto", "cpu"))), 0
    for name in set(ex.keys["model"].to_pylist()):
        rows = np.flatnonzero(pc.equal(ex.keys["model"], name).to_numpy(zero_copy_only=False))
        with torch.no_grad():
            pred = res.model(name, cfg["model"][name])(ex.x[rows].to(res.device)).argmax(1).cpu().numpy()
        mismatched += int((pred != ex.keys["pred"].to_numpy()[rows]).sum())
    assert mismatched == 0, f"{mismatched} example(s) re-score to another pred than their row"
    return {"examples": len(ex), "broken_rows": broken.num_rows}


class Timed:
    """Wrap the feature's functions with a stopwatch (seconds spent inside them, not counting nesting twice)."""

    def __init__(self) -> None:
        self.seconds, self._depth = 0.0, 0

    def wrap(self, owner: Any, name: str) -> None:
        inner = getattr(owner, name)

        def timed(*a: Any, **k: Any) -> Any:
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - t0

        setattr(owner, name, timed)


def instrument() -> Timed:
    import engine.evaluation.examples as ev
    import engine.store.examples as st

    timer = Timed()
    timer.wrap(ev.ExampleCollector, "add")
    timer.wrap(ev.ExampleCollector, "finish")
    timer.wrap(st, "write")
    timer.wrap(st, "problem")
    return timer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-examples", type=int, default=200)
    ap.add_argument("--quantize", default="none")
    ap.add_argument("--ab", action="store_true", help="also time a sweep without examples per repeat")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    timer = instrument()
    times: dict[str, list[float]] = {"none": [], "broken": []}
    ratios, ab, cpu_ab = [], [], []
    cpu: dict[str, list[float]] = {"none": [], "broken": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            modes = ("broken",) if not args.ab else ("none", "broken") if r % 2 == 0 else ("broken", "none")
            for mode in modes:
                before = timer.seconds
                secs, cfg = _sweep(Path(tmp) / f"{mode}-{r}", args.n_examples, f"save_examples={mode}",
                                   f"quantize={args.quantize}")
                times[mode].append(secs)
                cpu[mode].append(CPU_SECONDS[-1])
                if mode == "broken":
                    ratios.append((timer.seconds - before) / secs)
            if args.ab:
                ab.append(times["broken"][-1] / times["none"][-1])
                cpu_ab.append(cpu["broken"][-1] / cpu["none"][-1])
        checked = check(Path(tmp) / f"broken-{args.repeats - 1}", cfg)
    doc = {"n_examples": args.n_examples, "quantize": args.quantize, "threads": torch.get_num_threads(),
           "sweep_seconds": [round(t, 2) for t in times["broken"]],
           "examples_share": [round(x, 4) for x in ratios], "median_share": round(statistics.median(ratios), 4),
           **checked}
    if args.ab:
        doc.update(seconds_none=[round(t, 2) for t in times["none"]], ab_ratios=[round(x, 3) for x in ab],
                   median_ab_ratio=round(statistics.median(ab), 3),
                   cpu_seconds_none=[round(t, 2) for t in cpu["none"]],
                   cpu_seconds_broken=[round(t, 2) for t in cpu["broken"]],
                   cpu_ab_ratios=[round(x, 3) for x in cpu_ab], median_cpu_ab_ratio=round(statistics.median(cpu_ab), 3))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
