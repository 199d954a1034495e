"""Black box vs white box on the same checkpoint: query-based attacks beside AutoAttack.

    python scripts/bb_vs_wb.py --served                # digits_cnn and digits_cnn_at, n=30, L∞ 0.1 / 0.2
    python scripts/bb_vs_wb.py --served --models digits_cnn --n 100 --attacks square_linf_remote

For each model: the white-box AutoAttack standard suite (L∞) and the black-box Square (on the scores), HopSkipJump
and RayS (label only), each within ``--budget`` queries per sample (10,000 by default, BlackboxBench's cap), all
through ``gauntlet``'s own sweep (``engine.sweep.run_sweep``): the evaluator checks every example against the
threat model on the pixels the target received and classifies it again through the target, and the query attacks
ask the target only through the oracle. ``--served``: the target is examples/targets/oip_server.py on 127.0.0.1
serving the checkpoint (a server per sweep; Gauntlet's image count is printed beside the server's); otherwise a
LocalOracle around the checkpoint (8-bit pixels, every query counted). Each (model, attack) is one sweep in its
own folder under ``--out``, run ``--jobs`` at a time.

Two white-box references: AutoAttack on the float images at ε (the checkpoint's usual figure), and AutoAttack on
the images as the endpoint receives them (8-bit) at the largest radius an 8-bit image can use inside ε
(⌊255ε⌋/255: 25/255 = 0.098 for ε = 0.1), float pixels allowed. An endpoint only ever receives 8-bit images, so a
query attack works in that smaller ball; the second reference is the white-box number for the same inputs and
ball. Prints, per model and ε, each black-box robust accuracy with its gap to both (black − white, points;
positive: the black-box attack leaves more samples standing, as expected), and flags a black-box number *below*
either (the white-box suite missed examples a query attack found: a sign the white-box evaluation is weaker than
it should be, e.g. masked gradients). Writes the table as Markdown and JSON to ``--out``. Not a test: numbers go
to docs/BENCHMARKS.md and docs/remote-targets.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WHITE = "autoattack_standard_linf"
WHITE8 = "autoattack_standard_linf@8bit"  # the same suite on the 8-bit images at the 8-bit radius (grid_eps)
DIGITS8 = "digits8.npz"
BLACK = ("square_linf_remote", "hopskipjump_linf", "rays_linf")


def grid_eps(e: float) -> float:
    """The largest L∞ radius an 8-bit image can use inside ε: whole grey levels (0.1 → 25/255, 0.2 → 51/255)."""
    return math.floor(e * 255 + 1e-9) / 255


def write_digits8(path: Path, n: int) -> Path:
    """The first ``n`` digits test images as the endpoint receives them (8-bit, round half to even), with labels."""
    import numpy as np
    import torch

    from engine.data.digits import load_digits

    data = load_digits()
    x = (data.images[:n] * 255).round().to(torch.uint8).numpy()
    np.savez(path, x=x, y=data.labels[:n].numpy().astype(np.int64))
    return path


def _overrides(model: str, pert: str, n: int, eps: list[float], budget: int, folder: str, seed: int,
               out: str) -> list[str]:
    name = WHITE if pert == WHITE8 else pert
    levels = [grid_eps(e) for e in eps] if pert == WHITE8 else eps
    over = [f"model=[{model}]", f"perturbation=[{name}]", f"perturbation.{name}.eps=[{','.join(map(repr, levels))}]",
            f"n_examples={n}", "batch_size=50", "progress=false", "wandb=disabled", f"seed={seed}",
            f"out_dir={folder}"]
    if pert == WHITE8:
        over += ["dataset=npz", f"dataset.path={Path(out).resolve() / DIGITS8}", "dataset.num_classes=10",
                 "dataset.layout=nchw"]
    elif pert != WHITE:
        over.append(f"perturbation.{pert}.budget={budget}")
    return over


def _one(model: str, pert: str, n: int, eps: list[float], budget: int, out: str, seed: int,
         served: bool = False) -> dict[str, Any]:
    """One sweep (model × perturbation); its accuracy per ε and the mean queries, read from its rows.

    ``served``: a black-box attack reaches ``model`` only through examples/targets/oip_server.py on 127.0.0.1
    (its own server, started here and always stopped; OIP, probabilities, uint8 tensors) and the server's own
    image count is returned beside Gauntlet's; the white-box suite runs on the checkpoint. ``WHITE8``: the
    white-box suite on the same checkpoint, on the images as the endpoint receives them (8-bit) at the largest
    radius an 8-bit image can use inside ε (``grid_eps``), float pixels allowed (a lower bound on what the
    8-bit ball allows; rows reported under their ε)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from engine.compose.config import compose_sweep
    from engine.store.results import read
    from engine.sweep import run_sweep

    folder = f"{out}/{model}__{pert.replace('@', '_')}"
    remote = served and pert not in (WHITE, WHITE8)
    target = "remote_digits_cnn" if remote else model
    over = _overrides(target, pert, n, eps, budget, folder, seed, out)
    started = time.perf_counter()
    with ExitStack() as stack:
        if remote:
            from tests.remote_servers import serve

            server = stack.enter_context(serve("oip", "--models", model))
            key = f"model.{target}.remote"
            over += [f"{key}.url={server.url}", f"{key}.model_name={model}", f"{key}.budget_per_sample={budget}",
                     f"{key}.run_budget=null"]
        outcome = run_sweep(compose_sweep(over))
        server_images = server.stats()["images"] if remote else None
    rows = read(folder, run_id=outcome.plan.run_id).to_pylist()
    per: dict[float, dict[str, Any]] = {}
    for e in eps:
        level = grid_eps(e) if pert == WHITE8 else e
        mine = [r for r in rows if abs(r["level"] - level) < 1e-12]
        q2s = [r["queries_to_success"] for r in mine if r.get("queries_to_success") is not None]
        per[e] = {"n": len(mine), "robust": sum(r["correct"] for r in mine),
                  "mean_queries": sum(r["queries"] for r in mine) / max(1, len(mine)),
                  "median_queries_to_success": sorted(q2s)[len(q2s) // 2] if q2s else None}
    spent = None
    if remote:
        from engine.remote.ledger import RunLedger

        spent = sum(int(t.get("spent", 0)) for t in RunLedger(Path(folder)).targets().values())
    return {"model": model, "perturbation": pert, "seconds": time.perf_counter() - started, "levels": per,
            "served": remote, "server_images": server_images, "gauntlet_sent": spent}


def _cell(results: dict[tuple[str, str], dict[str, Any]], m: str, p: str, e: float) -> float:
    lv = results[(m, p)]["levels"][e]
    return 100 * lv["robust"] / lv["n"]


def _table(results: list[dict[str, Any]], eps: list[float], n: int, budget: int, attacks: list[str],
           served: bool) -> tuple[str, list[dict[str, Any]]]:
    """Per model and ε: AutoAttack on the float images (the checkpoint's usual white-box figure), AutoAttack on the
    8-bit images at the 8-bit radius (the same inputs and ball the endpoint allows), each black-box attack with its
    gap to both (points). A black-box number below either white-box one is flagged."""
    by = {(r["model"], r["perturbation"]): r for r in results}
    models = list(dict.fromkeys(r["model"] for r in results))
    lines = [f"n = {n} digits test samples (the first {n}), L∞, black-box budget {budget:,} queries per sample; "
             f"robust accuracy % (white-box AutoAttack standard on the checkpoint vs black-box attacks through "
             f"{'the OIP server on 127.0.0.1' if served else 'a LocalOracle'}); gap = black − white (points), "
             "first against AutoAttack on the float images at ε, then against AutoAttack on the 8-bit images at "
             "the 8-bit radius ⌊255ε⌋/255", "",
             "| model | ε | AutoAttack, float | AutoAttack, 8-bit | " + " | ".join(attacks) + " | flags |",
             "|---|---|---|---|" + "---|" * len(attacks) + "---|"]
    gaps = []
    for m in models:
        for e in eps:
            w, w8 = _cell(by, m, WHITE, e), _cell(by, m, WHITE8, e)
            cells, flags = [], []
            for b in attacks:
                acc, lv = _cell(by, m, b, e), by[(m, b)]["levels"][e]
                gaps.append({"model": m, "eps": e, "attack": b, "white_box": w, "white_box_8bit": w8,
                             "black_box": acc, "gap_points": acc - w, "gap_points_8bit": acc - w8,
                             "mean_queries": lv["mean_queries"], "median_queries_to_success":
                             lv["median_queries_to_success"], "below_white_box": acc < min(w, w8)})
                cells.append(f"{acc:.1f} ({acc - w:+.1f} / {acc - w8:+.1f})")
                flags += [f"{b} BELOW white-box ({which})" for which, ref in (("float", w), ("8-bit", w8))
                          if acc < ref]
            lines.append(f"| {m} | {e:g} | {w:.1f} | {w8:.1f} | " + " | ".join(cells)
                         + f" | {'; '.join(flags) or '-'} |")
    return "\n".join(lines), gaps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "digits_cnn_at"])
    ap.add_argument("--eps", nargs="+", type=float, default=[0.1, 0.2])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bb_vs_wb")
    ap.add_argument("--served", action="store_true", help="black-box attacks through the OIP server on 127.0.0.1")
    ap.add_argument("--attacks", nargs="+", default=list(BLACK), help="which black-box attacks (default: all)")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    work = [(m, p) for m in args.models for p in (WHITE, WHITE8, *args.attacks)]
    write_digits8(Path(args.out) / DIGITS8, args.n)
    # the slowest first (a robust model's label-only attacks spend their whole budget), so the pool stays busy
    work.sort(key=lambda mp: (mp[0] != "digits_cnn_at", mp[1] in (WHITE, WHITE8)))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_one, m, p, args.n, args.eps, args.budget, args.out, args.seed, args.served)
                   for m, p in work]
        results = []
        for f in futures:
            r = f.result()
            counts = (f"; images: Gauntlet {r['gauntlet_sent']:,}, server {r['server_images']:,}"
                      if r["served"] else "")
            print(f"done {r['model']} × {r['perturbation']} in {r['seconds']:.0f} s{counts}", flush=True)
            results.append(r)
    text, gaps = _table(results, args.eps, args.n, args.budget, args.attacks, args.served)
    secs = "\n".join(f"- {r['model']} × {r['perturbation']}: {r['seconds']:.0f} s" for r in results)
    print(text)
    (Path(args.out) / "bb_vs_wb.md").write_text(text + "\n\nwall time per sweep (one core each):\n" + secs + "\n")
    (Path(args.out) / "bb_vs_wb.json").write_text(json.dumps({"args": vars(args), "results": results,
                                                              "gaps": gaps}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
