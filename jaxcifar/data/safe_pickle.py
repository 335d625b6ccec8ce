"""Unpickling untrusted files without running their code.

A pickle can name any importable callable and have the loader call it (`os.system`
included), so the CIFAR-10 python batches are read with an unpickler that resolves only
the few numpy names an array needs and refuses every other, before calling anything.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from jaxcifar.errors import DataError

# The callables an ndarray pickle refers to, taken from numpy's own `__reduce__` rather than
# imported by path: numpy 2 moved them from `numpy.core` to `numpy._core`.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_FROMBUFFER = np.empty(0).__reduce_ex__(5)[0]  # protocol >= 5 pickles
ALLOWED = {
    # Protocol 2, as in the real CIFAR-10 files (numpy 1 names) and as numpy 2 writes it.
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, where: str) -> None:
        # encoding="bytes": the files were written by Python 2, whose `str` becomes `bytes`.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise DataError(
                f"{self.where}: refusing to unpickle {module}.{name}: the file may hold only "
                "numpy arrays, lists, dicts, numbers and strings"
            ) from None


def loads(data: bytes, where: str) -> object:
    """Unpickle `data`, allowing no globals but numpy's array reconstruction.

    Raises:
      DataError: naming `where`, when the pickle refers to anything else or is malformed.
    """
    try:
        return _RestrictedUnpickler(data, where).load()
    except DataError:
        raise
    # Malformed pickles raise nearly anything (UnpicklingError, EOFError, ValueError,
    # TypeError from a bad reconstruct argument, MemoryError, RecursionError, ...).
    except Exception as error:
        raise DataError(f"{where}: not a valid pickle ({type(error).__name__}: {error})") from None
