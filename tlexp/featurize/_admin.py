"""``tlexp-cache``: what the feature cache holds, and pruning it.

``list``: one row per key (cut, source, data, dtype, size, last used, what wrote it), from the
``KEY.json`` index beside each key's HDF5 files. ``prune``: removes keys last used before
``--older-than``, then the least recently used until the cache fits ``--max-size``; a key whose
lock is held (a run is using it) is never removed; ``--dry-run`` only says what would go.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from rich.console import Console
from rich.table import Table

from tlexp.errors import ConfigError
from tlexp.featurize._store import parse_bytes

__all__ = ["CacheEntry", "scan", "prune", "parse_age", "cache_cli"]

_CACHE_FILE = re.compile(r"^([0-9a-f]{8,64})-([A-Za-z0-9_]+)\.h5$")


@dataclass
class CacheEntry:
    key: str
    files: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.exists())

    @cached_property
    def last_used(self) -> float:
        times = [p.stat().st_mtime for p in [*self.files, self.index] if p.exists()]
        return max(times) if times else 0.0

    @property
    def index(self) -> Path:
        return self.files[0].parent / f"{self.key}.json" if self.files else Path(f"{self.key}.json")


def default_cache_dir() -> str:
    return os.environ.get("TLEXP_CACHE") or "outputs/cache"


def scan(cache_dir: str | Path) -> list[CacheEntry]:
    d = Path(cache_dir)
    if not d.is_dir():
        raise ConfigError(f"--cache-dir: {d} is not a folder (the feature cache: paths.cache_dir, env TLEXP_CACHE)")
    entries: dict[str, CacheEntry] = {}
    for p in sorted(d.iterdir()):
        m = _CACHE_FILE.match(p.name)
        if m:
            entries.setdefault(m.group(1), CacheEntry(m.group(1))).files.append(p)
    for e in entries.values():
        idx = d / f"{e.key}.json"
        if idx.is_file():
            try:
                e.info = json.loads(idx.read_text())
            except (OSError, json.JSONDecodeError):
                e.info = {}
    return sorted(entries.values(), key=lambda e: -e.last_used)


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not m:
        raise ConfigError(f"--older-than: {text!r} is not an age; write e.g. 30d, 12h, 90m, 45s or 2w")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if t else "?"


def _data_name(info: dict[str, Any]) -> str:
    data = info.get("data")
    if isinstance(data, dict):
        name = data.get("data") or data.get("type") or "?"
        where = data.get("path") or data.get("root")
        return f"{name}: {where}" if where else str(name)
    return str(data or "?")


def _cut(info: dict[str, Any]) -> str:
    up_to = info.get("up_to")
    boundary = info.get("boundary") or []
    return str(up_to) if up_to is not None else ", ".join(map(str, boundary)) or "?"


def list_table(entries: list[CacheEntry], cache_dir: str | Path) -> Table:
    total = sum(e.size for e in entries)
    table = Table(title=f"feature cache {cache_dir}: {len(entries)} key(s), {human_bytes(total)}")
    for col in ("key", "cut", "source", "data", "dtype", "size", "last used", "written by"):
        # at 80 columns (a pipe, a CI log) paths fold onto the next line, never cut to "…"
        table.add_column(col, justify="right" if col == "size" else "left",
                         **({"no_wrap": True} if col in ("key", "size", "dtype") else {"overflow": "fold"}))  # type: ignore[arg-type]
    for e in entries:
        table.add_row(e.key[:12], _cut(e.info), str(e.info.get("source", "?")), _data_name(e.info),
                      str(e.info.get("dtype", "?")), human_bytes(e.size), _when(e.last_used),
                      str(e.info.get("writer", "?")))
    return table


def prune(cache_dir: str | Path, older_than_s: float | None = None, max_size: int | None = None,
          dry_run: bool = False, now: float | None = None) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """(removed, kept-because-in-use). Oldest-used first."""
    now = time.time() if now is None else now
    entries = sorted(scan(cache_dir), key=lambda e: e.last_used)
    chosen: list[CacheEntry] = []
    if older_than_s is not None:
        chosen += [e for e in entries if now - e.last_used > older_than_s]
    if max_size is not None:
        total = sum(e.size for e in entries if e not in chosen)
        for e in entries:
            if total <= max_size:
                break
            if e not in chosen:
                chosen.append(e)
                total -= e.size
    removed, busy = [], []
    for e in chosen:
        lock = FileLock(str(Path(cache_dir) / f"{e.key}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            busy.append(e)
            continue
        try:
            if not dry_run:
                for f in [*e.files, e.index]:
                    f.unlink(missing_ok=True)
            removed.append(e)
        finally:
            lock.release()
        if not dry_run:
            (Path(cache_dir) / f"{e.key}.lock").unlink(missing_ok=True)
    return removed, busy


def cache_cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tlexp-cache", description="List or prune tlexp's feature cache.")
    parser.add_argument("--cache-dir", default=None, help="the cache folder (default: env TLEXP_CACHE, else outputs/cache)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one row per key: cut, source, data, dtype, size, last used, what wrote it")
    p = sub.add_parser("prune", help="remove keys last used long ago, or the least recently used above a size")
    p.add_argument("--older-than", default=None, help="remove keys last used longer ago than this (30d, 12h, 90m)")
    p.add_argument("--max-size", default=None, help="then remove least recently used keys until the cache fits (50GB)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    for sp in sub.choices.values():
        sp.add_argument("--cache-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or default_cache_dir()
    console = Console()
    if args.command == "list":
        console.print(list_table(scan(cache_dir), cache_dir))
        return
    if args.older_than is None and args.max_size is None:
        raise ConfigError("tlexp-cache prune: give --older-than (e.g. 30d) and/or --max-size (e.g. 50GB)")
    age = parse_age(args.older_than) if args.older_than is not None else None
    size = parse_bytes(args.max_size, "--max-size") if args.max_size is not None else None
    removed, busy = prune(cache_dir, age, size, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in removed:
        console.print(f"{verb} {e.key} ({_cut(e.info)}, {human_bytes(e.size)}, last used {_when(e.last_used)})")
    for e in busy:
        console.print(f"kept {e.key}: in use (its lock is held)")
    console.print(f"{verb} {len(removed)} key(s), {human_bytes(sum(e.size for e in removed))}; "
                  f"{len(scan(cache_dir))} key(s) left")
