"""Benchmark Gauntlet's AutoAttack-standard suite against the original (pyautoattack) on the same inputs.

    python scripts/bench_attacks.py                 # everything, small sample counts (CPU)
    python scripts/bench_attacks.py --only resnet --n 8 --repeats 3
    python scripts/bench_attacks.py --only sweep --n 24

* ``resnet``: the CIFAR-10 ResNet-18 shipped in the pyautoattack wheel
  (``examples/model_test.pt``) on smooth random images (8×8 noise upsampled to
  32×32) labelled with the model's own predictions, L∞ ε = 8/255 and 0.25/255.
* ``digits``: the embedded ``digits_cnn_at`` on the first N digits test samples, L∞ ε = 0.2.
* ``sweep``: ``digits_cnn_at``, an ε curve of 6 levels in one suite run against
  6 single-ε runs from scratch; ratio of gradient evaluations (``grad_evals``);
  ``--sweep-original`` adds the original run once per ε.

Both implementations get the same model object as Gauntlet's loader builds it (eval
mode, frozen parameters, the config's memory format), the same inputs and the same
thread count, alternately, in one process; a third column times the original as its
README calls it (parameters requiring grad, default memory format). Times are medians
over ``--repeats``. Not a test: numbers go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.evaluation.resources import build_perturbation
from engine.perturbations.base import BatchContext

SWEEP_LEVELS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


TARGET_BATCH: int | None = None  # --target-batch: override the configs' target_batch of APGD-T / FAB-T
DEVICE = torch.device("cpu")  # --device


def aa_config(name: str = "autoattack_standard_linf") -> dict:  # type: ignore[type-arg]
    from engine.compose.config import compose_sweep as compose_dict

    cfg = dict(compose_dict([f"perturbation=[{name}]"])["perturbation"][name])
    if TARGET_BATCH is not None:
        cfg["attacks"] = [{**a, "target_batch": TARGET_BATCH} if "n_target_classes" in a else a
                          for a in cfg["attacks"]]
    return cfg


def load_resnet() -> torch.nn.Module:
    spec = importlib.util.find_spec("pyautoattack")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations))) / "examples"
    mod_spec = importlib.util.spec_from_file_location("aa_resnet", root / "resnet.py")
    assert mod_spec is not None and mod_spec.loader is not None
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    net = mod.ResNet18()
    net.load_state_dict(torch.load(root / "model_test.pt", weights_only=True, map_location="cpu"))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net  # type: ignore[no-any-return]


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    return F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)


def run_gauntlet(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float],
                 config: str = "autoattack_standard_linf") -> tuple[list[float], int]:
    """Robust accuracy per ε and the total gradient evaluations of one suite run."""
    pert = build_perturbation(config, {**aa_config(config), "eps": eps})
    accs, grads = [], 0
    for out in pert.run(x, y, BatchContext(model, 0, torch.arange(len(x)))):
        with torch.no_grad():
            accs.append(float((model(out.x).argmax(1) == y).float().mean()))
        grads += int(out.grad_evals.sum())
    return accs, grads


class Counting(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_samples += x.shape[0]
        return self.model(x)  # type: ignore[no-any-return]


def run_original(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, int]:
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    counted = Counting(model)
    aa = AutoAttack(counted, norm="Linf", eps=eps, version="standard", seed=0, device=DEVICE)
    x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean()), counted.grad_samples


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def compare(label: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, repeats: int) -> None:
    # The original as its README calls it: eval mode, parameters still requiring grad, weights in
    # PyTorch's default (contiguous) layout; Gauntlet's loader may have chosen channels-last for this model.
    unfrozen = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    for p in unfrozen.parameters():
        p.requires_grad_(True)
    ours_t, ref_t, raw_t = [], [], []
    for _ in range(repeats):
        t, ours = timed(lambda: run_gauntlet(model, x, y, [eps]))
        ours_t.append(t)
        t, ref = timed(lambda: run_original(model, x, y, eps))
        ref_t.append(t)
        t, _ = timed(lambda: run_original(unfrozen, x, y, eps))
        raw_t.append(t)
    (accs, grads) = ours  # type: ignore[misc]
    (ref_acc, ref_grads) = ref  # type: ignore[misc]
    mo, mr = statistics.median(ours_t), statistics.median(ref_t)
    print(f"[{label}] n={len(x)} eps={eps:.4g} repeats={repeats}")
    print(f"  robust accuracy: gauntlet {100 * accs[0]:.1f} %   original {100 * ref_acc:.1f} %")
    print(f"  gradient evaluations: gauntlet {grads}   original {ref_grads} (samples through a grad-enabled forward)")
    print(f"  time (median): gauntlet {mo:.2f} s {sorted(round(t, 2) for t in ours_t)}   "
          f"original {mr:.2f} s {sorted(round(t, 2) for t in ref_t)}")
    mu = statistics.median(raw_t)
    print(f"  original, parameters requiring grad, default memory format (its README's usage): {mu:.2f} s "
          f"{sorted(round(t, 2) for t in raw_t)}")
    print(f"  time ratio gauntlet/original = {mo / mr:.2f} (same frozen model)   "
          f"{mo / mu:.2f} (original as usually called)")


def sweep(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, config: str, against_original: bool) -> None:
    t_sweep, (accs, grads) = timed(lambda: run_gauntlet(model, x, y, SWEEP_LEVELS, config))  # type: ignore[misc]
    scratch, t_scratch = 0, 0.0
    for e in SWEEP_LEVELS:
        t, (_, g) = timed(lambda e=e: run_gauntlet(model, x, y, [e], config))  # type: ignore[misc]
        scratch += g
        t_scratch += t
    print(f"[sweep] {config} digits_cnn_at n={len(x)} levels={SWEEP_LEVELS}")
    print("  robust accuracy per ε: " + ", ".join(f"{e:g}: {100 * a:.1f} %" for e, a in zip(SWEEP_LEVELS, accs,
                                                                                             strict=True)))
    print(f"  gradient evaluations: one sweep {grads}   six runs from scratch {scratch}   ratio {grads / scratch:.2f}")
    print(f"  time: one sweep {t_sweep:.1f} s   six runs {t_scratch:.1f} s   ratio {t_sweep / t_scratch:.2f}")
    if against_original and config.startswith("autoattack_standard"):
        orig, t_orig, orig_accs = 0, 0.0, []
        for e in SWEEP_LEVELS:
            t, (acc, g) = timed(lambda e=e: run_original(model, x, y, e))  # type: ignore[misc]
            orig += g
            t_orig += t
            orig_accs.append(acc)
        print("  original, one run per ε: robust accuracy " + ", ".join(f"{100 * a:.1f} %" for a in orig_accs))
        print(f"  gradient evaluations: one Gauntlet sweep {grads}   six original runs {orig}   "
              f"ratio {grads / orig:.2f}")
        print(f"  time: one Gauntlet sweep {t_sweep:.1f} s   six original runs {t_orig:.1f} s   "
              f"ratio {t_sweep / t_orig:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["resnet", "digits", "sweep"], action="append")
    ap.add_argument("--n", type=int, default=0, help="samples (default: resnet 8, digits 24, sweep 24)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep-configs", nargs="+", default=["autoattack_standard_linf", "apgd_ce_linf", "fab_t_linf"])
    ap.add_argument("--resnet-eps", type=float, nargs="+", default=[8 / 255, 0.25 / 255],
                    help="L∞ ε for the ResNet (8/255: everything breaks at once; 0.25/255: some samples survive)")
    ap.add_argument("--sweep-original", action="store_true",
                    help="also run the original AutoAttack once per ε of the sweep (the user's from-scratch option)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both implementations run there)")
    ap.add_argument("--target-batch", type=int, default=None,
                    help="override target_batch (targets of APGD-T / FAB-T run together) in Gauntlet's configs")
    args = ap.parse_args()
    global TARGET_BATCH, DEVICE
    TARGET_BATCH = args.target_batch
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GAUNTLET_CACHE_DIR", str(Path.home() / ".cache" / "gauntlet"))
    what = args.only or ["resnet", "digits", "sweep"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, threads={args.threads}, device={DEVICE}"
          f"{' (' + torch.cuda.get_device_name() + ')' if DEVICE.type == 'cuda' else ''}, "
          f"target_batch={'config' if TARGET_BATCH is None else TARGET_BATCH}")
    if "resnet" in what:
        model = load_resnet().to(DEVICE)
        x = smooth_images(args.n or 8).to(DEVICE)
        with torch.no_grad():
            y = model(x).argmax(1)
        for eps in args.resnet_eps:
            compare("resnet18-cifar10", model, x, y, eps, args.repeats)
    if "digits" in what or "sweep" in what:
        from engine.compose.config import compose_sweep as compose_dict
        from engine.data.digits import load_digits
        from engine.models.loader import build_model, ensure_checkpoint

        mcfg = compose_dict(["model=[digits_cnn_at]"])["model"]["digits_cnn_at"]
        ensure_checkpoint("digits_cnn_at", mcfg, progress=False)
        model = build_model("digits_cnn_at", mcfg, DEVICE)
        data = load_digits(split="test")
        n = args.n or 24
        x, y = data.images[:n].to(DEVICE), data.labels[:n].to(DEVICE)
        if "digits" in what:
            compare("digits_cnn_at", model, x, y, 0.2, args.repeats)
        if "sweep" in what:
            for config in args.sweep_configs:
                sweep(model, x, y, config, args.sweep_original)


if __name__ == "__main__":
    main()
