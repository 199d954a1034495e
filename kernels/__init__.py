"""Numba CPU kernels and their batched torch twins for the hot loops of Gauntlet's perturbations.

Every kernel takes its random draws as arguments (numba's RNG is not NumPy's), so a
sample's output is fixed by its draws alone, whatever the batch, worker or device.

``@njit(cache=True)`` writes compiled code next to the source unless
``NUMBA_CACHE_DIR`` points elsewhere; a read-only checkout would then fail at
import. We default it to a user cache dir *before* numba is imported anywhere
below this package. Nothing here imports ``engine``, hydra, ray or wandb.
"""

from __future__ import annotations

import os

os.environ.setdefault(
    "NUMBA_CACHE_DIR",
    os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
        "gauntlet",
        "numba",
    ),
)
