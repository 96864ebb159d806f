"""Temporary names that say who writes them, and removal of those whose writer is gone.

tlexp writes every file it keeps (cache entries, ``model/``, ``metrics.json``) under a temporary
name beside the target and renames it into place. A run killed mid-write leaves that temporary
behind. Its name records the writer's host and process id, so the next run removes exactly the
leftovers of processes that no longer exist (on this host), and never a file another live run is
still writing. A temporary from another host (a shared file system) is removed only when it is
older than a day, since its writer cannot be asked.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

__all__ = ["temp_path", "writer_alive", "remove_stale", "remove_unheld_locks", "umask_mode"]

log = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
#: ``.{target}~{host}~{pid}~{random}.tmp``
_PATTERN = re.compile(r"^\.(?P<target>.+)~(?P<host>[A-Za-z0-9_-]+)~(?P<pid>\d+)~[0-9a-f]+\.tmp$")
#: names written before the host was recorded: ``.{target}.{pid}[.{random}].tmp``
_LEGACY = re.compile(r"^\.(?P<target>.+?)\.(?P<pid>\d+)(\.[0-9a-f]{8})?\.tmp$")
OTHER_HOST_AGE_S = 24 * 3600.0


def temp_path(target: Path) -> Path:
    """A temporary sibling of ``target`` naming this host and process."""
    return target.with_name(f".{target.name}~{_HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def writer_alive(path: Path, now: float | None = None) -> bool:
    """Whether the process that writes temporary ``path`` may still be running."""
    m = _PATTERN.match(path.name)
    if m is not None:
        if m["host"] == _HOST:
            return _pid_alive(int(m["pid"]))
    else:
        m = _LEGACY.match(path.name)
        if m is None:
            return True  # not one of ours: leave it
        return _pid_alive(int(m["pid"]))
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except OSError:
        return False
    return age < OTHER_HOST_AGE_S


def remove_stale(directory: Path) -> list[Path]:
    """Remove the temporaries in ``directory`` whose writer is gone; returns what was removed."""
    removed = []
    try:
        entries = list(directory.glob(".*.tmp"))
    except OSError:
        return removed
    for tmp in entries:
        if writer_alive(tmp):
            continue
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    if removed:
        log.info("removed %d temporary file(s) left by interrupted runs in %s", len(removed), directory)
    return removed


def remove_unheld_locks(directory: Path, pattern: str = "*.lock") -> list[Path]:
    """Remove lock files that no process holds (taken without waiting, removed while held:
    filelock notices a lock file removed under it and takes a fresh one)."""
    from filelock import FileLock, Timeout

    removed = []
    for path in directory.glob(pattern):
        lock = FileLock(str(path), blocking=False, fallback_to_soft=False)
        try:
            lock.acquire()
        except (Timeout, OSError):
            continue
        try:
            path.unlink(missing_ok=True)
            removed.append(path)
        except OSError:
            pass
        finally:
            lock.release()
    return removed


def umask_mode(directory: bool = False) -> int:
    """The permission bits a new file (or folder) gets under the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask
