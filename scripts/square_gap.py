"""Where Square's gap to AutoAttack on an endpoint comes from: the algorithm, the 8-bit ball, the 8-bit pixels.

    python scripts/square_gap.py                      # digits_cnn, the first 100 digits, L∞ ε = 0.1, 10,000 queries
    python scripts/square_gap.py --n 50 --eps 0.2

One process, one core, the engine's evaluator (every example verified against its threat model and classified
again) on the same samples and seeds, in steps from AutoAttack's setting to the endpoint's:

1. AutoAttack standard on the float images at ε (the checkpoint's usual white-box figure);
2. Square alone (the suite member, float pixels, ``--queries``) on the float images at ε: the algorithm's gap;
3. Square alone on the images as an endpoint receives them (8-bit), float pixels, at ε;
4. the same at the 8-bit radius ⌊255ε⌋/255 (an 8-bit image can move whole grey levels only: 25 for ε = 0.1);
5. AutoAttack standard on the 8-bit images at the 8-bit radius (the white-box figure for the endpoint's ball);
6. Square through an oracle (``square_linf_remote``: every query on the 8-bit grid, inside the ball around the
   image as sent), as against a served model, on probabilities.

Prints robust accuracy per step. Not a test: figures go to docs/BENCHMARKS.md ("Black box vs white box").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from engine.compose.config import compose_sweep
from engine.data.digits import load_digits
from engine.evaluation.evaluate import _batch_rows
from engine.evaluation.resources import Resources, build_perturbation
from engine.perturbations.base import BatchContext
from engine.remote.local import LocalOracle
from engine.remote.model import RemoteModel

TASK = SimpleNamespace(quantize="none", model_name="target")  # what the evaluator's batch loop reads of a task


def robust(model: torch.nn.Module, pert: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    """Samples still classified correctly after ``pert`` at its one level (the evaluator's own rows)."""
    ctx = BatchContext(model=model, seed=0, sample_ids=torch.arange(len(y)))
    ((row, _),) = _batch_rows(TASK, model, pert, ctx, x, y, 10, pert.name)  # type: ignore[arg-type]
    return int(row["correct"].sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--model", default="digits_cnn")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = compose_sweep([f"model=[{args.model}]", "perturbation=[autoattack_standard_linf,square_linf,"
                                                  "square_linf_remote]"])
    net = Resources(torch.device("cpu")).model(args.model, cfg["model"][args.model])
    data = load_digits()
    x, y = data.images[: args.n], data.labels[: args.n]
    x8 = torch.round(x * 255) / 255  # as an endpoint receives them (round half to even, as the oracle does)
    eps8 = math.floor(args.eps * 255 + 1e-9) / 255

    def aa(e: float) -> Any:
        return build_perturbation("autoattack_standard_linf", {**cfg["perturbation"]["autoattack_standard_linf"],
                                                              "name": "autoattack_standard_linf", "eps": [e]})

    def square(e: float) -> Any:
        block = cfg["perturbation"]["square_linf"]
        member = {**block["attacks"][0], "n_queries": args.queries}
        return build_perturbation("square_linf", {**block, "name": "square_linf", "eps": [e], "attacks": [member]})

    remote = RemoteModel("target", LocalOracle(net, output="probs", num_classes=10))
    sq_oracle = build_perturbation("square_linf_remote", {**cfg["perturbation"]["square_linf_remote"],
                                                          "name": "square_linf_remote", "eps": [args.eps],
                                                          "budget": args.queries})
    steps = [("1 AutoAttack, float images, ε", net, aa(args.eps), x),
             ("2 Square alone, float images, ε", net, square(args.eps), x),
             ("3 Square alone, 8-bit images, ε", net, square(args.eps), x8),
             (f"4 Square alone, 8-bit images, 8-bit radius {eps8:.4f}", net, square(eps8), x8),
             (f"5 AutoAttack, 8-bit images, 8-bit radius {eps8:.4f}", net, aa(eps8), x8),
             ("6 Square through an oracle (8-bit queries), as served", remote, sq_oracle, x)]
    print(f"{args.model}, the first {args.n} digits, L∞ ε = {args.eps:g}, Square ≤ {args.queries:,} queries "
          f"(robust accuracy %)")
    for label, model, pert, xs in steps:
        started = time.perf_counter()
        r = robust(model, pert, xs, y)
        print(f"{label:<58} {100 * r / args.n:6.1f}   ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
