"""What each cache key holds, for ``tlexp-cache``: a small JSON file beside its HDF5 files.

``KEY.json`` records the cut, source, data and dtype, and which run or sweep wrote the key;
its modification time is when the key was last used (written or read by a run).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["note_entry", "entry_path", "key_lock"]


class key_lock:  # noqa: N801 - used as a context manager, like FileLock
    """The lock of one cache key: ``filelock``'s flock lock (it holds across NFS clients, which
    map flock to POSIX locks). On a file system without locks (Lustre mounted without ``flock``,
    some FUSE mounts) it says so instead of featurizing unguarded."""

    def __init__(self, cache_dir: str | Path, key: str) -> None:
        from filelock import FileLock

        self.path = Path(cache_dir) / f"{key}.lock"
        self.lock = FileLock(str(self.path))

    def __enter__(self) -> key_lock:
        from tlexp.errors import ConfigError

        try:
            self.lock.acquire()
        except (NotImplementedError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (38, 37, 95):  # ENOSYS, ENOLCK, EOPNOTSUPP
                raise
            raise ConfigError(
                f"paths.cache_dir: {self.path.parent} does not support file locks ({e}); concurrent runs could "
                "featurize the same key at once. Mount it with locking (Lustre: -o flock; NFS: lockd/NFSv4) "
                "or use a local paths.cache_dir"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def entry_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.json"


def note_entry(cache_dir: str | Path, key: str, info: Mapping[str, Any], wrote: bool) -> None:
    """Record what ``key`` holds when it was written; mark it used either way."""
    path = entry_path(cache_dir, key)
    try:
        if wrote or not path.exists():
            data = {"key": key, **info, "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2, default=str))
            os.replace(tmp, path)
        else:
            os.utime(path)  # last used
    except OSError:
        pass  # the index is a convenience: a read-only cache still serves its features
