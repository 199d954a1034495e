"""Compare Gauntlet's ``autoattack_<version>_<norm>`` suites with the original AutoAttack on the same samples.

    python scripts/parity_autoattack.py                      # digits_cnn_at, whole test split (450), ε = 0.2
    python scripts/parity_autoattack.py --n 60 --eps 0.2 --model digits_cnn_at
    python scripts/parity_autoattack.py --norm l2 --eps 1.5 --n 100
    python scripts/parity_autoattack.py --version plus --n 100   # or rand (EOT; on a deterministic model)

Prints both robust accuracies, their difference in percentage points, the
per-sample agreement, and the wall time of each (same process, same threads).
pyautoattack is a test-only dependency (``pip install -e .[dev]``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.data.digits import load_digits
from engine.evaluation.resources import build_perturbation
from engine.models.loader import build_model, ensure_checkpoint
from engine.perturbations.base import BatchContext

ORIGINAL_NORM = {"linf": "Linf", "l2": "L2"}


def compose(model: str, norm: str = "linf", version: str = "standard") -> dict:  # type: ignore[type-arg]
    from engine.compose.config import compose_sweep as compose_dict

    return compose_dict([f"model=[{model}]", f"perturbation=[autoattack_{version}_{norm}]"])


def gauntlet_robust(model: torch.nn.Module, pcfg: dict, x: torch.Tensor, y: torch.Tensor,  # type: ignore[type-arg]
                    ids: torch.Tensor, eps: float, seed: int, batch_size: int,
                    norm: str = "linf", version: str = "standard") -> tuple[torch.Tensor, list[str]]:
    pert = build_perturbation(f"autoattack_{version}_{norm}", {**pcfg, "eps": [eps]})
    robust, breakers = [], []
    for b in range(0, len(x), batch_size):
        xb, yb = x[b:b + batch_size], y[b:b + batch_size]
        (out,) = pert.run(xb, yb, BatchContext(model, seed, ids[b:b + batch_size]))
        with torch.no_grad():
            robust.append(model(out.x).argmax(1) == yb)
        breakers += list(out.broken_by or ())
    return torch.cat(robust), breakers


def original_robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
                    batch_size: int, norm: str = "linf", version: str = "standard") -> torch.Tensor:
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    aa = AutoAttack(model, norm=ORIGINAL_NORM[norm], eps=eps, version=version, seed=seed,
                    device="cpu")
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn_at")
    ap.add_argument("--n", type=int, default=450, help="first N samples of the digits test split")
    ap.add_argument("--norm", choices=sorted(ORIGINAL_NORM), default="linf")
    ap.add_argument("--version", choices=["standard", "plus", "rand"], default="standard")
    ap.add_argument("--eps", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GAUNTLET_CACHE_DIR", str(Path.home() / ".cache" / "gauntlet"))
    cfg = compose(args.model, args.norm, args.version)
    mcfg = cfg["model"][args.model]
    ensure_checkpoint(args.model, mcfg, progress=False)
    model = build_model(args.model, mcfg, torch.device("cpu"))
    data = load_digits(split="test")
    x, y, ids = data.images[:args.n], data.labels[:args.n], data.sample_ids[:args.n]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    t0 = time.perf_counter()
    ours, breakers = gauntlet_robust(model, cfg["perturbation"][f"autoattack_{args.version}_{args.norm}"], x, y,
                                     ids, args.eps, args.seed, args.batch_size, args.norm, args.version)
    t1 = time.perf_counter()
    ref = original_robust(model, x, y, args.eps, args.seed, args.batch_size, args.norm, args.version)
    t2 = time.perf_counter()
    n = len(y)
    a, b = ours.float().mean().item(), ref.float().mean().item()
    by = {k: breakers.count(k) for k in sorted(set(breakers)) if k}
    print(f"model={args.model} version={args.version} norm={args.norm} n={n} eps={args.eps:g} seed={args.seed} "
          f"threads={args.threads}")
    print(f"clean accuracy            {100 * clean:6.2f} %")
    print(f"gauntlet robust accuracy  {100 * a:6.2f} %   ({int(ours.sum())}/{n})  broken by {by}")
    print(f"original robust accuracy  {100 * b:6.2f} %   ({int(ref.sum())}/{n})")
    print(f"difference                {100 * (a - b):+6.2f} pp; samples that disagree: {int((ours != ref).sum())}")
    print(f"time gauntlet {t1 - t0:7.1f} s   original {t2 - t1:7.1f} s   ratio {(t1 - t0) / (t2 - t1):.2f}")


if __name__ == "__main__":
    main()
