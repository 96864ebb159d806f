"""ND4J's binary array format (``Nd4j.write`` / ``Nd4j.read``), every version DL4J wrote.

An array is two data buffers: the shape-information buffer, then the values. Each buffer is
written by ``DataBuffer.write``: a Java ``writeUTF`` naming the allocation mode, the length,
a ``writeUTF`` naming the element type, then the elements, big-endian.

- 0.x: allocation mode ``HEAP``/``DIRECT``/``JAVACPP``, length an int, shape info of type INT.
- 1.0.0-beta3: allocation mode ``LONG_SHAPE``, length a long, shape info of type LONG.
- 1.0.0-beta4 on: ``MIXED_DATA_TYPES``, length a long, any element type (HALF, LONG, ...).

Shape info is ``[rank, *shape, *stride, offset-or-extras, element-wise stride, order]``
with order ``'c'`` (99) or ``'f'`` (102).
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import numpy as np

from tlexp.errors import ConfigError

__all__ = ["read_array", "read_array_bytes", "read_array_file", "read_utf", "write_array", "write_utf", "ND4JFormatError"]

_LONG_MODES = {"LONG_SHAPE", "MIXED_DATA_TYPES"}
_INT_MODES = {"HEAP", "DIRECT", "JAVACPP"}
_DTYPES = {
    "DOUBLE": ">f8",
    "FLOAT": ">f4",
    "HALF": ">f2",
    "INT": ">i4",
    "LONG": ">i8",
    "SHORT": ">i2",
    "BYTE": ">i1",
    "UBYTE": ">u1",
    "BOOL": ">u1",
    "UINT16": ">u2",
    "UINT32": ">u4",
    "UINT64": ">u8",
}


class ND4JFormatError(ConfigError):
    """A file that is not (or not all of) an ND4J array."""


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise ND4JFormatError(f"{what}: truncated array (needed {n} bytes, found {len(b)})")
    return b


def read_utf(f: BinaryIO, what: str = "array") -> str:
    """Java's ``DataOutput.writeUTF``: a 2-byte length, then modified UTF-8."""
    (n,) = struct.unpack(">H", _read_exact(f, 2, what))
    return _read_exact(f, n, what).decode("utf-8", errors="replace")


def _read_buffer(f: BinaryIO, what: str) -> np.ndarray:
    mode = read_utf(f, what)
    if mode in _LONG_MODES:
        (length,) = struct.unpack(">q", _read_exact(f, 8, what))
    elif mode in _INT_MODES:
        (length,) = struct.unpack(">i", _read_exact(f, 4, what))
    elif mode == "COMPRESSED":
        raise ND4JFormatError(f"{what}: compressed ND4J arrays are not supported; save it uncompressed")
    else:
        raise ND4JFormatError(f"{what}: not an ND4J array (allocation mode {mode[:40]!r})")
    dtype_name = read_utf(f, what)
    if dtype_name not in _DTYPES:
        raise ND4JFormatError(f"{what}: unsupported ND4J data type {dtype_name!r}; valid: {', '.join(_DTYPES)}")
    if length < 0:
        raise ND4JFormatError(f"{what}: negative buffer length {length}")
    dt = np.dtype(_DTYPES[dtype_name])
    raw = _read_exact(f, length * dt.itemsize, what)
    return np.frombuffer(raw, dtype=dt)


def read_array(f: BinaryIO, what: str = "array") -> np.ndarray:
    """One array from a stream positioned at its start (native byte order, its own dtype)."""
    info = _read_buffer(f, what).astype(np.int64)
    if info.size < 1:
        raise ND4JFormatError(f"{what}: empty shape information")
    rank = int(info[0])
    if rank < 0 or info.size < 2 * rank + 4:
        raise ND4JFormatError(f"{what}: malformed shape information (rank {rank}, {info.size} entries)")
    shape = tuple(int(s) for s in info[1 : 1 + rank])
    order = int(info[2 * rank + 3])
    data = _read_buffer(f, what)
    n = int(np.prod(shape)) if rank else 1
    if data.size < n:
        raise ND4JFormatError(f"{what}: truncated array (shape {list(shape)} needs {n} values, found {data.size})")
    data = data.astype(data.dtype.newbyteorder("="))
    strides = tuple(int(s) for s in info[1 + rank : 1 + 2 * rank])
    if rank and n and not _contiguous(shape, strides, order):
        # a view written with its own strides (DL4J's NHWC-backed outputs, say)
        last = sum((d - 1) * s for d, s in zip(shape, strides))
        if min(strides) < 0 or last >= data.size:
            raise ND4JFormatError(f"{what}: truncated array (strides {list(strides)} reach past the data)")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(data, shape=shape, strides=[s * item for s in strides])
        return np.array(view)
    return data[:n].reshape(shape, order="F" if order == ord("f") else "C")


def _contiguous(shape: tuple[int, ...], strides: tuple[int, ...], order: int) -> bool:
    dims = list(range(len(shape)))
    for seq in (dims[::-1] if order != ord("f") else dims,):
        expect = 1
        for i in seq:
            if shape[i] != 1 and strides[i] != expect:
                return False
            expect *= shape[i]
    return True


def read_array_bytes(raw: bytes, what: str = "array") -> np.ndarray:
    return read_array(io.BytesIO(raw), what)


def read_array_file(path: str, what: str | None = None) -> np.ndarray:
    """An array written to its own file with ``Nd4j.write(array, DataOutputStream)``."""
    with open(path, "rb") as f:
        return read_array(f, what or str(path))


def write_utf(f: BinaryIO, s: str) -> None:
    b = s.encode("utf-8")
    f.write(struct.pack(">H", len(b)) + b)


def write_array(f: BinaryIO, arr: np.ndarray, dtype: str = "FLOAT") -> None:
    """Write ``arr`` as ``Nd4j.write`` does in DL4J 1.0.0-beta4 and later ('c' order,
    ``MIXED_DATA_TYPES``), so files tlexp writes (test models, say) read back in DL4J too."""
    a = np.ascontiguousarray(arr)
    shape = list(a.shape) if a.ndim else []
    rank = len(shape)
    strides = []
    acc = 1
    for d in reversed(shape):
        strides.insert(0, acc)
        acc *= d
    flags = {"FLOAT": 8192, "DOUBLE": 16384, "HALF": 4096}.get(dtype, 0)
    info = [rank, *shape, *strides, flags, 1, ord("c")]
    write_utf(f, "MIXED_DATA_TYPES")
    f.write(struct.pack(">q", len(info)))
    write_utf(f, "LONG")
    f.write(np.asarray(info, dtype=">i8").tobytes())
    write_utf(f, "MIXED_DATA_TYPES")
    f.write(struct.pack(">q", a.size))
    write_utf(f, dtype)
    f.write(a.astype(_DTYPES[dtype]).tobytes())
