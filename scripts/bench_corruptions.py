"""Throughput of Gauntlet's corruptions vs the reference (imagecorruptions 1.1.2), per corruption and size.

For each corruption, all five severities: images/s of the reference (one image at
a time, ``imagecorruptions.corrupt``, as it is meant to be called) and of Gauntlet
(batched, seeded per sample) with 1 and 2 numba/torch threads on CPU, and on a GPU
with ``--device cuda`` (the torch path). Medians over repeats. The reference is
imported through the test-only compatibility shim (tests/shim_imagecorruptions.py).

    .venv/bin/python scripts/bench_corruptions.py                  # print the tables
    .venv/bin/python scripts/bench_corruptions.py --write docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Idle OpenMP threads (numba's and torch's pools) sleep instead of spinning: on shared
# cores spinning threads starve the busy ones. Set before numba / torch load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numba  # noqa: E402
import torch  # noqa: E402

from engine.perturbations.corruptions import ALL, CORRUPTIONS, Corruption  # noqa: E402

log = logging.getLogger("bench_corruptions")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry")


def photos(size: int) -> list[np.ndarray]:
    import cv2
    import skimage.data

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(np.ascontiguousarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)))
    return out


class Timing:
    """Images per second by wall clock (the headline) and by this process's CPU time.

    CPU time is what the code costs whatever else runs on the machine; with one
    thread it equals wall time on an idle machine, so it makes the 1-thread ratio
    robust to other jobs on shared cores.
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def add(self, n_images: int, wall: float, cpu: float) -> None:
        self.wall.append(n_images / wall)
        self.cpu.append(n_images / max(cpu, 1e-9))

    @property
    def rate(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_rate(self) -> float:
        return statistics.median(self.cpu)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def reference_once(kind: str, imgs: list[np.ndarray], n: int, seed: int, timing: Timing) -> None:
    from shim_imagecorruptions import load_reference

    ref = load_reference()
    np.random.seed(seed)
    wall, cpu = _clock()
    for i in range(n):
        for severity in range(1, 6):
            ref.corrupt(imgs[i % len(imgs)], severity=severity, corruption_name=kind)
    timing.add(5 * n, time.perf_counter() - wall, time.process_time() - cpu)


def gauntlet_once(p: Corruption, batch: torch.Tensor, seed: int, timing: Timing) -> None:
    ids = list(range(batch.shape[0]))
    wall, cpu = _clock()
    for severity in range(1, 6):
        p.corrupt(batch, severity, seed=seed, sample_ids=ids)
    if batch.is_cuda:
        torch.cuda.synchronize()
    timing.add(5 * batch.shape[0], time.perf_counter() - wall, time.process_time() - cpu)


def warm_up(p: Corruption, batch: torch.Tensor) -> None:
    """Compile the kernels and fill the caches (textures, tables) before timing."""
    for severity in range(1, 6):
        p.corrupt(batch[:2], severity, sample_ids=[0, 1])
    if batch.is_cuda:
        torch.cuda.synchronize()


def set_threads(n: int) -> None:
    numba.set_num_threads(n)
    torch.set_num_threads(n)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, GPU: {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, numba {numba.__version__}, NumPy {np.__version__}"
    )


def run(args: argparse.Namespace) -> str:
    kinds = args.corruptions or list(ALL)
    max_threads = int(getattr(numba.config, "NUMBA_NUM_THREADS", os.cpu_count() or 1))
    threads = [t for t in args.threads if t <= max_threads]
    lines = [
        "## Corruptions",
        "",
        f"Measured {dt.date.today().isoformat()} with `scripts/bench_corruptions.py` "
        f"(preset `{args.preset}`, all five severities per corruption; images/s by wall clock, "
        f"medians of {args.repeats} interleaved repeats).",
        f"Machine: {machine()}. Load average when the run started (other jobs share these cores): "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} (1 / 5 / 15 min).",
        "Reference: `imagecorruptions` 1.1.2 through the test shim, one image per call "
        "(`imagecorruptions.corrupt`, its own OpenCV/BLAS threading left at defaults). "
        "Gauntlet: one batched call per severity, per-sample seeded draws, numba kernels "
        "(`backend=auto` on CPU) with N numba and torch threads "
        f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}).",
        "",
    ]
    gpu_col = args.device == "cuda"
    for size in args.sizes:
        imgs = photos(size)
        n_ref = args.ref_images_224 if size >= 128 else args.ref_images_32
        bsz = args.batch_224 if size >= 128 else args.batch_32
        batch = torch.from_numpy(np.stack([imgs[i % len(imgs)] for i in range(bsz)])).permute(0, 3, 1, 2)
        batch = batch.float().div(255).contiguous()
        header = "| corruption | reference img/s | " + " | ".join(f"Gauntlet CPU {t}T img/s" for t in threads)
        header += " | GPU img/s | " + " | ".join(f"speed-up {t}T" for t in threads) + " |"
        rows, totals = [], {"ref": 0.0, **{t: 0.0 for t in threads}, "gpu": 0.0}
        cpu_totals = {"ref": 0.0, "ours": 0.0}
        for kind in kinds:
            p = CORRUPTIONS[kind](name=kind, preset=args.preset)
            gpu_batch = batch.cuda() if gpu_col else None
            for t in threads:
                set_threads(t)
                warm_up(p, batch)
            if gpu_batch is not None:
                warm_up(p, gpu_batch)
            ref_t, ours_t, gpu_t = Timing(), {t: Timing() for t in threads}, Timing()
            for r in range(args.repeats):  # interleaved, so slow phases of other jobs hit every column
                reference_once(kind, imgs, n_ref, r, ref_t)
                for t in threads:
                    set_threads(t)
                    gauntlet_once(p, batch, r, ours_t[t])
                if gpu_batch is not None:
                    gauntlet_once(p, gpu_batch, r, gpu_t)
            ref = ref_t.rate
            ours = {t: ours_t[t].rate for t in threads}
            gpu = gpu_t.rate if gpu_batch is not None else None
            totals["ref"] += 1 / ref
            for t in threads:
                totals[t] += 1 / ours[t]
            if gpu is not None:
                totals["gpu"] += 1 / gpu
            cpu_totals["ref"] += 1 / ref_t.cpu_rate
            cpu_totals["ours"] += 1 / ours_t[min(threads)].cpu_rate
            gpu_txt = f"{gpu:,.0f}" if gpu is not None else "not measured"
            cells = " | ".join(f"{ours[t]:,.0f}" for t in threads)
            ratios = " | ".join(f"{ours[t] / ref:,.1f}×" for t in threads)
            rows.append(f"| {kind} | {ref:,.1f} | {cells} | {gpu_txt} | {ratios} |")
            log.info("%dpx %-18s ref %9.1f  %s  (%s)", size, kind, ref, cells, ratios)
        full_ref = 1 / totals["ref"]
        full = {t: 1 / totals[t] for t in threads}
        gpu_full = f"{1 / totals['gpu']:,.1f}" if gpu_col else "not measured"
        rows.append(
            f"| **all {len(kinds)} (one pass)** | {full_ref:,.2f} | "
            + " | ".join(f"{full[t]:,.1f}" for t in threads)
            + f" | {gpu_full} | "
            + " | ".join(f"**{full[t] / full_ref:,.1f}×**" for t in threads)
            + " |"
        )
        cpu_ratio = cpu_totals["ref"] / cpu_totals["ours"]
        lines += [
            f"### {size}×{size} (Gauntlet batch {bsz}; reference {n_ref} images × 5 severities)",
            "",
            header,
            "|" + "---|" * (header.count("|") - 1),
            *rows,
            "",
            f"By CPU time of this process (robust to other jobs): reference {1 / cpu_totals['ref']:,.2f} "
            f"img/s, Gauntlet {min(threads)} thread {1 / cpu_totals['ours']:,.1f} img/s for the full "
            f"{len(kinds)}-corruption pass: **{cpu_ratio:,.1f}×**.",
            "",
        ]
    lines += [
        "Reading the tables: the reference is single-image and mostly single-threaded, so its "
        "column is per core. The 2-thread column can only scale when the second core is free; "
        "with the load average above (other jobs on these two cores) it measures contention, "
        "and the CPU-time line is the load-independent cost of one Gauntlet thread.",
        "",
    ]
    if not gpu_col:
        lines += ["No GPU was lent for this measurement: the GPU column is not measured "
                  "(run with `--device cuda` on a CUDA machine).", ""]  # fmt: skip
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the ``## Corruptions`` section, leaving other sections (``## Attacks``) alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Corruptions\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text)
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text.rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-224", type=int, default=16, help="Gauntlet batch for sizes ≥ 128")
    parser.add_argument("--batch-32", type=int, default=256, help="Gauntlet batch for small sizes")
    parser.add_argument("--ref-images-224", type=int, default=2, help="reference images per repeat (large)")
    parser.add_argument("--ref-images-32", type=int, default=24, help="reference images per repeat (small)")
    parser.add_argument("--preset", default="imagenet_c", choices=["imagenet_c", "cifar10_c"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--corruptions", nargs="*", choices=list(ALL))
    parser.add_argument("--write", type=Path, help="update the '## Corruptions' section of this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    section = run(args)
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
