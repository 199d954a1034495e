"""Time ``gauntlet verify`` on gradient-masking and randomised test models (figures go to docs/BENCHMARKS.md).

Each case is a claim file with an inline model block (engine/models/testing.py in front of the embedded
adversarially trained ``digits_cnn_at``) and one claim at L∞ ε = 0.2:

* ``logit``: logits × 1000 (softmax saturation: cross-entropy gradients vanish);
* ``quantised``: 16-level quantisation + 3×3 median filter (every input gradient is zero);
* ``noisy``: Gaussian input noise σ = 0.1 (randomised).

The claim is the model's naive accuracy (PGD-20, cross-entropy, one draw), as an inflated datasheet would
state it, unless ``--claim`` gives one, or ``--claim-from eot --offset 0.15`` sets it 15 points above the
model's EOT accuracy: an independent EOT attack (torchattacks' EOTPGD, 100 steps, 20 draws per gradient,
2 restarts; a sample counts as broken when either restart's example is misclassified by one draw).

Each run is ``python -m engine.cli verify`` in a fresh process with the engine from ``--tree`` (default: this
checkout), so the same script times an older commit: export it (``git archive COMMIT | tar -x -C DIR``) and
copy this checkout's engine/models/testing.py into it (the test models only). Prints, and appends to
``--log`` as JSON lines: wall time, the verify process's CPU time (user + system: on a shared machine the wall
time grows with the load, its CPU time much less), verdict, measured accuracy, the escalations or ladder rounds,
and the load average before and after.

Usage:
    PYTHONPATH=. python scripts/bench_verify.py --cases logit quantised [--n 100] [--tree DIR] [--label after]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
MEAN, STD = [0.3051], [0.3237]
NET = {"_target_": "engine.models.cnn.SmallCNN", "in_channels": 1, "num_classes": 10, "width": 16}
CASES: dict[str, dict[str, Any]] = {
    "logit": {"_target_": "engine.models.testing.LogitScaled", "scale": 1000.0},
    "quantised": {"_target_": "engine.models.testing.QuantisedMedian", "levels": 16, "kernel": 3,
                  "mean": MEAN, "std": STD},
    "noisy": {"_target_": "engine.models.testing.InputNoise", "sigma": 0.1, "mean": MEAN, "std": STD},
}
EPS = 0.2


def model_block(case: str) -> dict[str, Any]:
    """The inline model block of ``case``: its front end around the embedded AT CNN's weights."""
    return {"name": f"digits_cnn_at_{case}", "arch": {**CASES[case], "net": dict(NET)}, "mean": MEAN, "std": STD,
            "checkpoint": "${cache_dir}/checkpoints/digits_cnn_at.safetensors"}


def naive_pgd_accuracy(case: str, n: int) -> float:
    """PGD-20 (cross-entropy, L∞ ε 0.2) accuracy of ``case`` on the first ``n`` digits test samples, one draw."""
    import torch

    from engine.data.digits import load_digits
    from engine.perturbations.attacks import PGD
    from engine.perturbations.base import BatchContext

    torch.manual_seed(0)
    model = _build(case)
    data = load_digits(split="test").slice(0, n)
    (out,) = list(PGD(name="pgd", eps=(EPS,), steps=20).run(data.images, data.labels,
                                                             BatchContext(model, 0, data.sample_ids)))
    with torch.no_grad():
        return float((model(out.x).argmax(1) == data.labels).float().mean())


def _build(case: str) -> Any:
    import torch

    from engine.compose.config import register_schemas
    from engine.models.loader import build_model

    register_schemas()
    block = model_block(case)
    block["checkpoint"] = str(Path(os.environ.get("GAUNTLET_CACHE_DIR", Path.home() / ".cache/gauntlet"))
                              / "checkpoints/digits_cnn_at.safetensors")
    return build_model(block["name"], block, torch.device("cpu"))


def eot_accuracy(case: str, n: int, restarts: int = 2) -> float:
    """Accuracy of ``case`` on the first ``n`` digits test samples under torchattacks' EOTPGD (L∞ 0.2, 100 steps,
    step 2.5 ε / steps, 20 draws per gradient), ``restarts`` random starts, each example scored by one draw."""
    import torch
    import torchattacks

    from engine.data.digits import load_digits

    model = _build(case)
    data = load_digits(split="test").slice(0, n)
    robust = torch.ones(n, dtype=torch.bool)
    for r in range(restarts):
        torch.manual_seed(1000 + r)
        atk = torchattacks.EOTPGD(model, eps=EPS, alpha=2.5 * EPS / 100, steps=100, eot_iter=20, random_start=True)
        x_adv = atk(data.images, data.labels)
        with torch.no_grad():
            robust &= model(x_adv).argmax(1) == data.labels
    return float(robust.float().mean())


def write_claim(path: Path, case: str, n: int, claimed: float) -> Path:
    doc = {"title": f"bench_verify {case}", "source": "scripts/bench_verify.py", "model": model_block(case),
           "dataset": "digits", "n_examples": n,
           "claims": [{"threat_model": {"norm": "linf", "eps": EPS}, "claimed_accuracy": round(claimed, 4),
                       "source": "naive PGD-20 accuracy (an inflated datasheet)"}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_one(case: str, n: int, claimed: float, tree: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    """One timed ``gauntlet verify`` in a fresh process; what it decided and what ran."""
    claim = write_claim(work / f"{case}.yaml", case, n, claimed)
    out = work / f"out_{case}"
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    load_before = os.getloadavg()
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "verify", str(claim), f"out_dir={out}",
                           "progress=false", *extra], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0  # the verify process's own CPU time: what the load does not inflate
    rec: dict[str, Any] = {"case": case, "n": n, "claimed": round(claimed, 4), "tree": str(tree),
                           "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "rc": proc.returncode,
                           "load_before": load_before, "load_after": os.getloadavg(), "extra": extra}
    verdict = out / "verdict.json"
    if proc.returncode == 2 or not verdict.exists():
        rec["error"] = proc.stderr[-2000:]
        return rec
    (c,) = json.loads(verdict.read_text())["claims"]
    rec.update(verdict=c["verdict"], measured=c["measured_accuracy"], ci=[c["ci_low"], c["ci_high"]],
               reason=c["reason"], rule=c.get("rule"),
               steps=[_step(e) for e in c.get("ladder", {}).get("rounds", c.get("escalations", []))])
    return rec


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _step(e: dict[str, Any]) -> dict[str, Any]:
    keep = ("kind", "rung", "status", "samples", "broke", "cost", "wall_s", "why")
    return {k: e[k] for k in keep if k in e} | ({"changed": e["changed"]} if "changed" in e else {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["logit", "quantised"], choices=sorted(CASES))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--tree", type=Path, default=REPO, help="the engine to time (a checkout or an exported commit)")
    ap.add_argument("--claim", type=float, default=None, help="claimed accuracy (default: naive PGD-20 accuracy)")
    ap.add_argument("--claim-from", choices=("pgd", "eot"), default="pgd", help="what the claim is based on")
    ap.add_argument("--offset", type=float, default=0.0, help="added to the measured claim basis")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--label", default="")
    ap.add_argument("--log", type=Path, default=Path("bench_verify.jsonl"))
    ap.add_argument("--keep", type=Path, default=None, help="keep each run's claim file and out_dir under this folder")
    ap.add_argument("extra", nargs="*", help="more verify overrides (key=value)")
    args = ap.parse_args(argv)
    for case in args.cases:
        basis = eot_accuracy if args.claim_from == "eot" else naive_pgd_accuracy
        claimed = args.claim if args.claim is not None else min(1.0, basis(case, args.n) + args.offset)
        print(f"{case}: claim {claimed:.4f} ({args.claim_from} accuracy + {args.offset:g})", flush=True)
        for i in range(args.repeat):
            if args.keep is not None:
                work = args.keep / f"{args.label or 'run'}_{case}_{i}"
                work.mkdir(parents=True, exist_ok=True)
                rec = run_one(case, args.n, claimed, args.tree.resolve(), work, list(args.extra))
            else:
                with tempfile.TemporaryDirectory(prefix=f"bench_verify_{case}_") as tmp:
                    rec = run_one(case, args.n, claimed, args.tree.resolve(), Path(tmp), list(args.extra))
            rec.update(label=args.label, repeat=i)
            print(json.dumps(rec), flush=True)
            with args.log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
