"""What ``save_examples=broken`` costs on the default sweep: wall time with and without, median of repeats.

    python scripts/bench_examples.py [--repeats 3] [--n-examples 200] [--quantize none]

Each repeat runs the default sweep (both embedded digits models, the default perturbations) twice into fresh
folders, once saving no examples and once saving the broken ones, in alternating order, and reports each
pair's ratio and the median. It also checks the acceptance on the last run: every broken row has its example
and re-scoring every example reproduces the rows' ``pred`` exactly. Figures: docs/BENCHMARKS.md.
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


def _sweep(out: Path, n: int, *extra: str) -> tuple[float, dict[str, Any]]:
    from engine.compose.config import compose_sweep
    from engine.sweep import run_sweep

    cfg = compose_sweep((f"out_dir={out}", f"n_examples={n}", "progress=false", "wandb=disabled", *extra))
    t0 = time.perf_counter()
    run_sweep(cfg)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-examples", type=int, default=200)
    ap.add_argument("--quantize", default="none")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    ratios, times = [], {"none": [], "broken": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = ("none", "broken") if r % 2 == 0 else ("broken", "none")
            for mode in order:
                out = Path(tmp) / f"{mode}-{r}"
                secs, cfg = _sweep(out, args.n_examples, f"save_examples={mode}", f"quantize={args.quantize}")
                times[mode].append(secs)
            ratios.append(times["broken"][-1] / times["none"][-1])
        checked = check(Path(tmp) / f"broken-{args.repeats - 1}", cfg)
    print(json.dumps({"n_examples": args.n_examples, "quantize": args.quantize, "threads": torch.get_num_threads(),
                      "seconds_none": [round(t, 2) for t in times["none"]],
                      "seconds_broken": [round(t, 2) for t in times["broken"]],
                      "ratios": [round(x, 3) for x in ratios], "median_ratio": round(statistics.median(ratios), 3),
                      **checked}, indent=1))


if __name__ == "__main__":
    main()
