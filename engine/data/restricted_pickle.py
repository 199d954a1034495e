"""An unpickler that admits only plain data: containers, numbers, strings, bytes and numpy arrays.

CIFAR's python batches are pickles. ``pickle.load`` would run whatever a tampered
file asks for; this one resolves only the handful of globals that rebuild a numpy
array (and ``_codecs.encode`` for latin-1 bytes, which Python 3 writes for protocol
≤ 2), and refuses every other global before anything is called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 round trip pickle itself uses for bytes."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not allowed in a data file")
    return codecs.encode(text, "latin1", errors)


def _allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy arrays pickle as numpy.core.multiarray._reconstruct (numpy 1) or numpy._core… (numpy 2)
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    # dtypes of numpy 2 pickle as numpy.dtypes.<Kind>DType classes
    import numpy.dtypes as npd

    for attr in dir(npd):
        if attr.endswith("DType") and isinstance(getattr(npd, attr), type):
            allowed[("numpy.dtypes", attr)] = getattr(npd, attr)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` answers only the numpy-array globals above; anything else is refused."""

    ALLOWED = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed: a data file may hold only containers, numbers, "
                "strings, bytes and numpy arrays"
            ) from None


def restricted_load(path: Path, encoding: str = "bytes") -> Any:
    """Unpickle ``path`` admitting only plain data (raises ``pickle.UnpicklingError`` otherwise)."""
    data = Path(path).read_bytes()
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
