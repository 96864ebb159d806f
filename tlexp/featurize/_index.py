"""What each cache key holds, for ``tlexp-cache``: a small JSON file beside its HDF5 files.

``KEY.json`` records the cut, source, data and dtype, and which run or sweep wrote the key;
its modification time is when the key was last used (written or read by a run).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["note_entry", "entry_path", "key_lock", "lock_scope_problem"]

log = logging.getLogger(__name__)

#: where the kernel lists this process's mounts (a test points it at a file of its own)
MOUNTINFO = "/proc/self/mountinfo"
_warned: set[str] = set()


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline and backslash in a path as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def lock_scope_problem(path: str | Path, mountinfo: str | Path | None = None) -> str | None:
    """Why a lock file under ``path`` would hold on this machine only, or None.

    A network file system can be mounted so that locks stay local to each client: NFS with
    ``nolock`` (shown as ``local_lock=all``) or ``local_lock=flock``, CIFS/SMB with ``nobrl``,
    Lustre with ``localflock``. flock then succeeds on every machine at once, so the lock does
    not keep two machines from featurizing one key together. Read from ``/proc/self/mountinfo``
    (the mount holding ``path``: the longest mount point above it); None where it cannot tell.
    """
    try:
        lines = Path(mountinfo or MOUNTINFO).read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if not sep or len(parts) < 6 or len(rest) < 3:
            continue
        point = _unescape(parts[4])
        if target != point and not target.startswith(point.rstrip("/") + "/"):
            continue
        if best is None or len(point) >= len(best[0]):
            best = (point, rest[0], ",".join([parts[5], rest[2]]))
    if best is None:
        return None
    point, fstype, options = best
    opts = set(options.split(","))
    local = None
    if fstype.startswith("nfs") and ({"nolock", "local_lock=all", "local_lock=flock"} & opts):
        local = sorted({"nolock", "local_lock=all", "local_lock=flock"} & opts)[0]
    elif fstype in ("cifs", "smb3") and "nobrl" in opts:
        local = "nobrl"
    elif fstype == "lustre" and "localflock" in opts:
        local = "localflock"
    if local is None:
        return None
    return (f"paths.cache_dir: {path} is on {fstype} mounted at {point} with {local}: its file locks hold on this "
            "machine only, so jobs on other machines could featurize the same key at once (each still writes "
            "its file atomically). Remount with locking (NFS: without nolock/local_lock; Lustre: -o flock) or "
            "give each machine its own paths.cache_dir")


class key_lock:  # noqa: N801 - used as a context manager, like FileLock
    """The lock of one cache key: ``filelock``'s flock lock (it holds across NFS clients, which
    map flock to POSIX locks). On a file system without locks (Lustre mounted without ``flock``,
    some FUSE mounts) it says so instead of featurizing unguarded; on a mount whose locks are
    local to each machine (NFS ``nolock``, …: :func:`lock_scope_problem`) it warns once."""

    def __init__(self, cache_dir: str | Path, key: str) -> None:
        from filelock import FileLock

        self.path = Path(cache_dir) / f"{key}.lock"
        # no silent SoftFileLock (a marker file a killed run would leave behind) where flock is missing
        self.lock = FileLock(str(self.path), fallback_to_soft=False)
        where = str(Path(cache_dir).resolve())
        if where not in _warned:
            _warned.add(where)
            problem = lock_scope_problem(where)
            if problem:
                log.warning("%s", problem)

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
