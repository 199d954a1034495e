"""Benchmark the dataset fingerprint on a large image folder (not a timed test; figures go to docs/BENCHMARKS.md).

Writes N small PNGs (32×32 RGB, 100 class folders) under ``--root`` once, then measures, each in a fresh
process so no in-process cache helps:

1. listing: ``load_image_folder(check="none")`` (sorted listing, labels, the first image decoded);
2. header check: ``check="header"`` (every file opened, its mode and bit depth checked), minus the listing;
3. fingerprint, cold: every file read and hashed (empty fingerprint cache);
4. fingerprint, warm: the same folder again (one ``stat`` per file, digests from the cache);
5. fingerprint after one file changed: one file re-hashed.

"Cold" means Gauntlet's fingerprint cache is empty; the files were just written, so the OS page cache
holds them (dropping it needs root and a quiet machine; a folder on a slow disk pays its read time once).
Usage:
    PYTHONPATH=. python scripts/bench_fingerprint.py [--n 50000] [--root /tmp/gauntlet_fp_bench] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 100
CHILD = """
import json, sys, time
from pathlib import Path
from engine.data.image_folder import load_image_folder
from engine.data.fingerprint import identity_of
root, cache, what = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
data = load_image_folder(root, name="bench", check="header" if what == "header" else "none")
listed = time.perf_counter() - t
t = time.perf_counter()
ident = identity_of(data, cache) if what == "fingerprint" else None
print(json.dumps({"listing": listed, "step": time.perf_counter() - t, "files": len(data),
                  "digest": ident["digest"] if ident else None}))
"""


def make_folder(root: Path, n: int) -> None:
    """N PNGs of 32×32 RGB noise in 100 class folders (skipped when ``root`` already holds N files)."""
    from PIL import Image

    if root.is_dir() and sum(1 for _ in root.glob("*/*.png")) == n:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"c{c:03d}").mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"c{i % CLASSES:03d}" / f"{i:06d}.png")


def child(root: Path, cache: Path, what: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(cache), what], capture_output=True,
                         text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "gauntlet_fp_bench")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import PIL

    print(f"machine: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}, Pillow {PIL.__version__}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    t = time.perf_counter()
    make_folder(args.root, args.n)
    print(f"folder: {args.n} PNGs under {args.root} ({time.perf_counter() - t:.1f} s to write or check)")
    time.sleep(2.5)  # files changed within 2 s of their hashing are re-hashed next time (the racy rule)
    rows: dict[str, list[float]] = {k: [] for k in ("listing", "header check", "cold", "warm", "one changed")}
    digests = set()
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = Path(cache_dir)
            rows["listing"].append(child(args.root, cache, "none")["listing"])
            header = child(args.root, cache, "header")
            rows["header check"].append(header["listing"] - rows["listing"][-1])
            cold = child(args.root, cache, "fingerprint")
            rows["cold"].append(cold["step"])
            time.sleep(2.5)
            warm = child(args.root, cache, "fingerprint")
            rows["warm"].append(warm["step"])
            victim = next(iter(sorted((args.root / "c000").glob("*.png"))))
            victim.write_bytes(victim.read_bytes())  # same bytes, new ctime: re-hashed, same digest
            rows["one changed"].append(child(args.root, cache, "fingerprint")["step"])
            digests |= {cold["digest"], warm["digest"]}
    assert len(digests) == 1, "the fingerprint changed between runs of an unchanged folder"
    print(f"load average at end {os.getloadavg()[0]:.1f}; one digest for every run: {digests.pop()[:16]}…")
    print(f"| step ({args.n:,} files) | median s | runs |")
    print("|---|---:|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
