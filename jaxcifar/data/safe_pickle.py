"""Unpickling untrusted files without running their code.

A pickle can name any importable callable and have the loader call it (`os.system`
included). The CIFAR-10 python batches are read with an unpickler whose `find_class`
knows only the numpy names an array pickle refers to and refuses every other. Even those
do not resolve to numpy itself: numpy's `dtype.__setstate__` crashes the interpreter on
some malformed states (found by fuzzing), so they resolve to inert stand-ins that only
record their arguments, and the arrays are rebuilt afterwards from validated bytes.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

from jaxcifar.errors import DataError


class _Dtype:
    """Stands in for `numpy.dtype(spec, align, copy)`; only "u1" (uint8) becomes an array."""

    def __init__(self, spec: object = None, *args: object) -> None:
        # Python 2 wrote the spec as a byte string, which `encoding="bytes"` keeps as bytes.
        self.spec = spec.decode("latin-1") if isinstance(spec, bytes) else spec

    def __setstate__(self, state: object) -> None:
        """Byte order and flags: irrelevant to one-byte elements, so ignored."""


class _Array:
    """Stands in for an ndarray while unpickling; `to_numpy` rebuilds the real one.

    Protocol 2 pickles call `_reconstruct(ndarray, (0,), b"b")` and then BUILD it with the
    state (version, shape, dtype, is_fortran, raw bytes); protocol 5 calls
    `_frombuffer(raw bytes, dtype, shape, order)`.
    """

    def __init__(self, *args: object) -> None:
        self.state: tuple[Any, ...] = ()

    def __setstate__(self, state: object) -> None:
        self.state = state if isinstance(state, tuple) else ()

    @classmethod
    def from_buffer(cls, data: object, dtype: object, shape: object, order: object = "C") -> _Array:
        array = cls()
        array.state = (1, shape, dtype, order == "F", data)
        return array

    def to_numpy(self, where: str) -> np.ndarray:
        """The uint8 array the recorded state describes, checked before any allocation."""
        state = self.state[1:] if len(self.state) == 5 else self.state  # version 1 has a version
        if len(state) != 4:
            raise DataError(f"{where}: malformed numpy array state in the pickle")
        shape, dtype, is_fortran, data = state
        if not isinstance(dtype, _Dtype) or dtype.spec != "u1":
            found = dtype.spec if isinstance(dtype, _Dtype) else type(dtype).__name__
            raise DataError(f"{where}: a pickled array of dtype {found!r}; expected uint8 ('u1')")
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise DataError(f"{where}: a pickled array with shape {shape!r}")
        if not isinstance(data, bytes | bytearray) or len(data) != math.prod(shape):
            size = len(data) if isinstance(data, bytes | bytearray) else type(data).__name__
            raise DataError(f"{where}: a pickled array of shape {shape} holds {size} bytes")
        return np.frombuffer(data, np.uint8).reshape(shape, order="F" if is_fortran else "C")


# What an ndarray pickle refers to: numpy 1 names (the real CIFAR-10 files), numpy 2's.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy.core.numeric", "_frombuffer"): _Array.from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _Array.from_buffer,
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _Dtype,
}


# The pure-Python unpickler, not the C one: the C unpickler sizes its memo table by the
# largest index a PUT opcode names, so 5 bytes (LONG_BINPUT 0x7fffffff) make it allocate
# gigabytes (found by fuzzing: a minute-long stall). The Python one keeps its memo in a dict.
class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
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
    """Unpickle `data` without calling anything it names; uint8 arrays come back as numpy.

    Arrays are rebuilt where CIFAR-10 batches hold them: the top-level object, or a value
    of a top-level dict. Other containers keep them as inert placeholders.

    Raises:
      DataError: naming `where`, when the pickle refers to anything else or is malformed.
    """
    try:
        loaded = _RestrictedUnpickler(data, where).load()
    except DataError:
        raise
    # Malformed pickles raise nearly anything (UnpicklingError, EOFError, ValueError,
    # TypeError from a stand-in's wrong arguments, MemoryError, RecursionError, ...).
    except Exception as error:
        raise DataError(f"{where}: not a valid pickle ({type(error).__name__}: {error})") from None
    if isinstance(loaded, dict):
        return {key: _resolve(value, where) for key, value in loaded.items()}
    return _resolve(loaded, where)


def _resolve(value: object, where: str) -> object:
    return value.to_numpy(where) if isinstance(value, _Array) else value
