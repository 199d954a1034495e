"""An unpickler that admits only plain data: containers, numbers, strings, bytes and numpy arrays.

CIFAR's python batches are pickles. ``pickle.load`` would run whatever a tampered
file asks for; this one resolves only the handful of globals that rebuild a numpy
array (and ``_codecs.encode`` for latin-1 bytes, which Python 3 writes for protocol
≤ 2), and refuses every other global before anything is called.
"""

from __future__ import annotations

import codecs
import io
import math
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


_RECONSTRUCT: Any = np.ndarray.__reduce__(np.zeros(1))[0]


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` answers only the numpy-array globals above; anything else is refused.

    An array is rebuilt by ``_reconstruct(ndarray, shape, dtype)`` and then filled from the file's own
    bytes (numpy writes ``shape=(0,)`` there); a file asking for more bytes than it holds, or calling
    ``ndarray(shape)`` itself, is refused before anything is allocated.
    """

    ALLOWED = _allowed()

    def __init__(self, file: io.BytesIO, limit_bytes: int, encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding)
        self._limit = limit_bytes

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed: a data file may hold only containers, numbers, "
                "strings, bytes and numpy arrays"
            ) from None
        if found is _RECONSTRUCT:
            return self._reconstruct
        if found is np.ndarray:
            return _NdarrayType
        return found

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _NdarrayType:
            raise pickle.UnpicklingError(f"an array of type {subtype!r} is not allowed in a data file")
        try:
            dims = [int(d) for d in (shape if isinstance(shape, tuple | list) else (shape,))]
            itemsize = np.dtype(dtype).itemsize
        except (TypeError, ValueError) as exc:
            raise pickle.UnpicklingError(f"an array of shape {shape!r} and dtype {dtype!r} ({exc})") from None
        wanted = math.prod(dims) * max(itemsize, 1)
        if min(dims, default=0) < 0 or wanted > self._limit:
            raise pickle.UnpicklingError(
                f"it asks for an array of shape {tuple(dims)} ({wanted:,} bytes) but the file holds only "
                f"{self._limit:,} bytes"
            )
        return _RECONSTRUCT(np.ndarray, tuple(dims), dtype)


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a data file: accepted as ``_reconstruct``'s type, never called."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("numpy.ndarray(...) is called directly; a data file may only rebuild arrays")


def restricted_load(path: Path, encoding: str = "bytes") -> Any:
    """Unpickle ``path`` admitting only plain data (raises ``pickle.UnpicklingError`` otherwise)."""
    data = Path(path).read_bytes()
    return RestrictedUnpickler(io.BytesIO(data), len(data), encoding=encoding).load()
