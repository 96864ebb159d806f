"""The HDF5 feature store: one file per split, content-addressed, complete or absent.

A file is written under a temporary name and renamed into place, under a file lock per key,
so an interrupted run leaves no half file and concurrent runs featurize a key once. Every
dataset carries the SHA-256 of its bytes (an attribute written as the rows stream in; HDF5's
Fletcher-32 filter was not used: it cannot tell a 0x0000 word from 0xFFFF, so zeros flipped to
ones, common in ReLU features, pass it). A file is trusted only after its
metadata (key, names, counts, dtypes, declared shapes against the shapes the run expects and
against the bytes actually stored) is checked without reading data, and then every chunk is
read back and hashed, and the labels checked against the class count; a file that
fails any of it is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from tlexp._tempfiles import remove_stale, remove_unheld_locks, temp_path
from tlexp.errors import ConfigError, SourceError, choices

__all__ = [
    "STORE_FORMAT", "DTYPES", "cache_key", "hash_state", "SplitFile", "write_split", "check_split", "verify_split",
    "parse_bytes",
]

STORE_FORMAT = "tlexp.features/2"  # /2: a SHA-256 on every dataset

#: cache dtype name -> (torch dtype used for the values, numpy dtype stored in the file)
DTYPES: dict[str, tuple[torch.dtype, Any]] = {
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
    # numpy has no bfloat16: the raw 16 bits are stored as uint16 and viewed back on read
    "bfloat16": (torch.bfloat16, np.uint16),
}


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ConfigError(f"featurize.dtype: {name!r} is not supported; valid: {choices(DTYPES)}")
    return name


def parse_bytes(value: str | int | float, field: str = "featurize.max_memory") -> int:
    """'2GB', '512MiB', '100000' -> bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    s = str(value).strip().upper().replace(" ", "")
    units = {"TIB": 2**40, "GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * mult)
            except ValueError:
                break
    try:
        return int(float(s))
    except ValueError:
        raise ConfigError(f"{field}: {value!r} is not a size; write e.g. 2GB, 512MiB or a number of bytes") from None


def hash_state(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in state_dict order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def cache_key(prefix_config: Mapping[str, Any], weights_hash: str, boundary: Sequence[str],
              data_identity: Mapping[str, Any], dtype: str, augment_copies: int = 0) -> str:
    """The key of a featurized prefix: everything that decides the stored values."""
    blob = json.dumps(
        {
            "format": STORE_FORMAT,
            "prefix": prefix_config,
            "weights": weights_hash,
            "boundary": list(boundary),
            "data": data_identity,
            "dtype": dtype,
            "augment_copies": augment_copies,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SplitFile:
    path: Path
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    n: int
    copies: int
    dtype: str

    @property
    def rows(self) -> int:
        return self.n * self.copies

    @property
    def nbytes(self) -> int:
        item = np.dtype(DTYPES[self.dtype][1]).itemsize
        per_row = sum(int(np.prod(s)) for s in self.shapes) * item + 8
        return per_row * self.rows


def check_split(path: Path, key: str, split: str, names: Sequence[str], n: int, copies: int,
                dtype: str, shapes: Sequence[Sequence[int]] | None = None, num_classes: int | None = None,
                verify: bool = True, reasons: list[str] | None = None) -> SplitFile | None:
    """The file's description if it holds exactly what is asked for, None if it must be rebuilt
    (the reason appended to ``reasons``).

    Metadata first, without reading any data: recorded key, split, counts and names; each
    dataset's dtype, its declared shape against ``shapes`` (the prefix's output shapes per
    sample) and against the bytes the file actually stores (so an absurd declared shape is never
    allocated), and that it carries a checksum. Then, with ``verify``, every dataset is read back
    in chunks and its SHA-256 compared with the recorded one, and the labels are checked to lie in ``[0, num_classes)``.

    A file that cannot be opened at all (truncated, not HDF5) is a user-visible error: it was not
    written by tlexp's atomic writer, so something outside damaged it.
    """
    why = reasons if reasons is not None else []
    if not path.exists():
        return None
    np_dtype = np.dtype(DTYPES[dtype][1])
    rows = n * copies
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            meta = {
                "format": a.get("format"), "key": a.get("key"), "split": a.get("split"),
                "complete": bool(a.get("complete", False)), "n": int(a.get("n", -1)),
                "copies": int(a.get("copies", -1)), "dtype": a.get("dtype"),
                "names": json.loads(a.get("names", "[]")),
            }
            want = {"format": STORE_FORMAT, "key": key, "split": split, "complete": True, "n": n,
                    "copies": copies, "dtype": dtype, "names": list(names)}
            bad = [k for k, v in want.items() if meta[k] != v]
            if bad:
                why.append(f"recorded {bad[0]} is {meta[bad[0]]!r}, expected {want[bad[0]]!r}")
                return None
            sets = [f.get(f"f{i}") for i in range(len(names))]
            y = f.get("y")
            if any(not isinstance(d, h5py.Dataset) for d in [*sets, y]):
                why.append("a dataset is missing")
                return None
            got_shapes = [tuple(int(v) for v in d.shape[1:]) for d in sets]
            problem = _dataset_problem(y, "y", (rows,), np.dtype(np.int64))
            for i, d in enumerate(sets):
                if problem:
                    break
                expect = (rows, *shapes[i]) if shapes is not None else (rows, *got_shapes[i])
                problem = _dataset_problem(d, f"f{i}", tuple(int(v) for v in expect), np_dtype)
            if problem:
                why.append(problem)
                return None
            if verify:
                problem = _verify(sets, y, num_classes)
                if problem:
                    why.append(problem)
                    return None
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise SourceError(
            f"featurize: cache file {path} is unreadable or truncated ({str(e).splitlines()[0]}); "
            "delete it or run with featurize.overwrite=true"
        ) from None
    return SplitFile(path, tuple(names), tuple(got_shapes), n, copies, dtype)


def _dataset_problem(d: h5py.Dataset, name: str, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """What is wrong with a dataset's declared layout, read from metadata only."""
    if d.dtype != dtype:
        return f"{name} has dtype {d.dtype}, expected {dtype}"
    if tuple(d.shape) != shape:
        return f"{name} has shape {list(d.shape)}, expected {list(shape)}"
    if CHECKSUM_ATTR not in d.attrs or d.chunks is None:
        return f"{name} carries no checksum"
    # every chunk was written: the bytes stored cover the declared shape (an absurd declared
    # shape over a small file would otherwise be allocated, then read as fill values)
    if d.id.get_storage_size() < d.size * d.dtype.itemsize:
        return f"{name} declares {d.size * d.dtype.itemsize} bytes but stores {d.id.get_storage_size()}"
    return None


CHECKSUM_ATTR = "sha256"


def _hash_rows(d: h5py.Dataset) -> str:
    """SHA-256 of a dataset's bytes in row order, read one chunk of rows at a time."""
    h = hashlib.sha256()
    step = d.chunks[0] if d.chunks else max(1, 2**20 // max(d.dtype.itemsize * int(np.prod(d.shape[1:])), 1))
    buf = np.empty((min(step, d.shape[0]), *d.shape[1:]), dtype=d.dtype)
    for s in range(0, d.shape[0], step):
        e = min(s + step, d.shape[0])
        d.read_direct(buf, np.s_[s:e], np.s_[0 : e - s])
        h.update(memoryview(buf[: e - s]).cast("B"))
    return h.hexdigest()


def _verify(sets: Sequence[h5py.Dataset], y: h5py.Dataset, num_classes: int | None) -> str | None:
    """Every dataset hashed against its recorded SHA-256; labels within the class count."""
    for name, d in [("y", y), *((f"f{i}", d) for i, d in enumerate(sets))]:
        if _hash_rows(d) != d.attrs.get(CHECKSUM_ATTR):
            return f"{name} does not match its checksum"
    labels = y[...]
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        return f"labels range over [{labels.min()}, {labels.max()}], outside [0, {num_classes - 1}]"
    return None


def verify_split(f: SplitFile, num_classes: int | None = None) -> str | None:
    """Read a cache file back through its checksums; None when it is intact, else what is wrong."""
    with h5py.File(f.path, "r") as h:
        return _verify([h[f"f{i}"] for i in range(len(f.names))], h["y"], num_classes)


def write_split(path: Path, key: str, split: str, names: Sequence[str], n: int, copies: int, dtype: str,
                batches: Iterable[tuple[Sequence[torch.Tensor], torch.Tensor]], checksum: bool = True) -> SplitFile:
    """Write ``batches`` (features per boundary tensor, labels) to ``path``, atomically, each
    dataset with the SHA-256 of its bytes (``checksum=False`` only for measuring its cost)."""
    torch_dtype, np_dtype = DTYPES[dtype]
    rows = n * copies
    tmp = temp_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": STORE_FORMAT, "key": key, "split": split, "n": n, "copies": copies,
                            "dtype": dtype, "names": json.dumps(list(names)), "complete": False})
            y_ds = f.create_dataset("y", shape=(rows,), dtype=np.int64, chunks=(max(1, min(rows, 2**17)),))
            feats: list[h5py.Dataset] = []
            at = 0
            for xs, y in batches:
                b = int(y.shape[0])
                if not feats:
                    for i, x in enumerate(xs):
                        shape = tuple(x.shape[1:])
                        per_row = max(int(np.prod(shape)) * np.dtype(np_dtype).itemsize, 1)
                        # chunks of about 1 MiB along the sample axis: streaming reads stay contiguous
                        chunk_rows = int(min(rows, max(1, 2**20 // per_row)))
                        feats.append(f.create_dataset(f"f{i}", shape=(rows, *shape), dtype=np_dtype,
                                                      chunks=(chunk_rows, *shape)))
                    hashes = [hashlib.sha256() for _ in range(len(feats) + 1)]
                for ds, x, h in zip(feats, xs, hashes):
                    x = x.detach().to("cpu", torch_dtype).contiguous()
                    arr = x.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else x.numpy()
                    ds[at : at + b] = arr
                    if checksum:
                        h.update(memoryview(arr).cast("B"))
                ys = np.ascontiguousarray(y.detach().cpu().numpy(), dtype=np.int64)
                y_ds[at : at + b] = ys
                if checksum:
                    hashes[-1].update(memoryview(ys).cast("B"))
                at += b
            if at != rows:
                raise RuntimeError(f"featurize wrote {at} rows of {split}, expected {rows}")
            if checksum and feats:
                for ds, h in zip([*feats, y_ds], hashes):
                    ds.attrs[CHECKSUM_ATTR] = h.hexdigest()
            f.attrs["complete"] = True
            shapes = tuple(tuple(ds.shape[1:]) for ds in feats)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SplitFile(path, tuple(names), shapes, n, copies, dtype)


def remove_stale_temps(directory: Path) -> None:
    """Temporary files and lock files that tlexp's own killed runs left behind: only those
    whose writer is gone (never the complete, renamed files, never a lock another run holds)."""
    remove_stale(directory)
    remove_unheld_locks(directory)
