"""The HDF5 feature store: one file per split, content-addressed, complete or absent.

A file is written under a temporary name and renamed into place, under a file lock per key,
so an interrupted run leaves no half file and concurrent runs featurize a key once. A file whose
recorded key, names, count or shapes do not match what is asked for is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from tlexp.errors import ConfigError, SourceError, choices

__all__ = ["STORE_FORMAT", "DTYPES", "cache_key", "hash_state", "SplitFile", "write_split", "check_split", "parse_bytes"]

STORE_FORMAT = "tlexp.features/1"

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
                dtype: str, shapes: Sequence[Sequence[int]] | None = None) -> SplitFile | None:
    """The file's description if it holds exactly what is asked for, None if it must be rebuilt.

    A file that cannot be read at all (truncated, not HDF5) is a user-visible error: it was not
    written by tlexp's atomic writer, so something outside damaged it.
    """
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            meta = {
                "format": a.get("format"), "key": a.get("key"), "split": a.get("split"),
                "complete": bool(a.get("complete", False)), "n": int(a.get("n", -1)),
                "copies": int(a.get("copies", -1)), "dtype": a.get("dtype"),
                "names": json.loads(a.get("names", "[]")),
            }
            got_shapes = [tuple(f[f"f{i}"].shape[1:]) for i in range(len(meta["names"]))]
            rows = [f[f"f{i}"].shape[0] for i in range(len(meta["names"]))] + [f["y"].shape[0]]
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise SourceError(
            f"featurize: cache file {path} is unreadable or truncated ({str(e).splitlines()[0]}); "
            "delete it or run with featurize.overwrite=true"
        ) from None
    ok = (
        meta["format"] == STORE_FORMAT and meta["key"] == key and meta["split"] == split and meta["complete"]
        and meta["n"] == n and meta["copies"] == copies and meta["dtype"] == dtype
        and meta["names"] == list(names) and all(r == n * copies for r in rows)
        and (shapes is None or [tuple(s) for s in shapes] == got_shapes)
    )
    if not ok:
        return None
    return SplitFile(path, tuple(names), tuple(got_shapes), n, copies, dtype)


def write_split(path: Path, key: str, split: str, names: Sequence[str], n: int, copies: int, dtype: str,
                batches: Iterable[tuple[Sequence[torch.Tensor], torch.Tensor]]) -> SplitFile:
    """Write ``batches`` (features per boundary tensor, labels) to ``path``, atomically."""
    torch_dtype, np_dtype = DTYPES[dtype]
    rows = n * copies
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"format": STORE_FORMAT, "key": key, "split": split, "n": n, "copies": copies,
                            "dtype": dtype, "names": json.dumps(list(names)), "complete": False})
            y_ds = f.create_dataset("y", shape=(rows,), dtype=np.int64)
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
                for ds, x in zip(feats, xs):
                    x = x.detach().to("cpu", torch_dtype)
                    ds[at : at + b] = (x.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else x.numpy())
                y_ds[at : at + b] = y.detach().cpu().numpy()
                at += b
            if at != rows:
                raise RuntimeError(f"featurize wrote {at} rows of {split}, expected {rows}")
            f.attrs["complete"] = True
            shapes = tuple(tuple(ds.shape[1:]) for ds in feats)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SplitFile(path, tuple(names), shapes, n, copies, dtype)


def remove_stale_temps(directory: Path, older_than_s: float = 3600.0) -> None:
    """Temporary files a killed run left behind (never the complete, renamed files)."""
    now = time.time()
    for tmp in directory.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
        except OSError:
            pass
