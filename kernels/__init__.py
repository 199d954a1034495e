"""Numba CPU kernels and their batched torch twins for the hot loops of Gauntlet's perturbations.

Every kernel takes its random draws as arguments (numba's RNG is not NumPy's), so a
sample's output is fixed by its draws alone, whatever the batch, worker or device.

``@njit(cache=True)`` writes compiled code next to the source unless
``NUMBA_CACHE_DIR`` points elsewhere; a read-only checkout would then fail at
import. We default it to a user cache dir *before* numba is imported anywhere
below this package. Nothing here imports ``engine``, hydra, ray or wandb.

numba's OpenMP pool shares the OpenMP runtime with torch, and starting it sets the runtime's thread
count to ``NUMBA_NUM_THREADS`` (every core by default): a process told ``OMP_NUM_THREADS=1`` would run
torch at two threads after its first corruption (docs/BENCHMARKS.md, "Ray under contention"). So a set
``OMP_NUM_THREADS`` is numba's default too.
"""

from __future__ import annotations

import os

if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
    os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
        "gauntlet",
        "numba",
    ),
)
