"""One pass over the data for several nested cuts of one graph.

The deepest prefix runs once per split; on the way, every shallower cut's boundary tensors are
taken and stored under that cut's own key, exactly as :func:`tlexp.featurize.featurize` would
store them for that cut alone (same prefix modules, same batches, same conversion), so a job
for any of the cuts then finds its features in the cache. Each key's files are written by the
store's own atomic writer, under the key's lock.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlexp.data import TlexpDataModule
from tlexp.errors import ConfigError
from tlexp.featurize import FEATURIZED_SPLITS, _batches, featurize_key
from tlexp.featurize._index import key_lock, note_entry
from tlexp.featurize._store import check_dtype, check_split, remove_stale_temps, write_split
from tlexp.graph import LayerGraph

__all__ = ["featurize_cuts", "CutsResult"]

_END = object()


@dataclass
class CutsResult:
    #: per cut (in the order given): its key
    keys: list[str]
    #: per key: split -> True when it was already in the cache
    hits: dict[str, dict[str, bool]] = field(default_factory=dict)
    #: full passes over each split's data (0 when every key of the split was cached)
    passes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class _Feed:
    """An iterator of batches that one producer fills and one writer thread drains."""

    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=4)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _Writer(threading.Thread):
    def __init__(self, path: Path, key: str, split: str, names: Sequence[str], n: int, dtype: str) -> None:
        super().__init__(daemon=True)
        self.args = (path, key, split, list(names), n, 1, dtype)
        self.feed = _Feed()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            write_split(*self.args, self.feed)  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001 - handed to the producer
            self.error = e

    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.feed.q.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self.is_alive():
                    raise (self.error or RuntimeError("featurize writer stopped")) from None


def featurize_cuts(graph: LayerGraph, cuts: Sequence[set[str]], datamodule: TlexpDataModule, cache_dir: str | Path,
                   dtype: str = "float32", batch_size: int = 256, device: torch.device | str = "cpu",
                   autocast: torch.dtype | None = None, info: Sequence[Mapping[str, Any]] | None = None) -> CutsResult:
    """Store every cut's boundary tensors, over each featurized split, in one pass per split.

    ``cuts`` must be nested (each contained in the largest). ``graph`` is left frozen at the
    largest cut.
    """
    dtype = str(check_dtype(str(dtype)))  # a config Choice formats as its plain name; h5py needs a str
    if datamodule.has_random_augment:
        raise ConfigError("featurize: random augmentations cannot be featurized in one pass; set data.augment=false")
    if not cuts:
        return CutsResult([])
    deepest = max(cuts, key=len)
    for c in cuts:
        if not c <= deepest:
            raise ConfigError(f"featurize: cuts are not nested ({sorted(c - deepest)} not in the deepest cut)")
    device = torch.device(device)
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_dir)

    boundaries: list[list[str]] = []
    keys: list[str] = []
    for c in cuts:
        graph.set_frozen(c)  # each key hashes the prefix as a run of that cut has it
        prefix, _ = graph.split(c)
        b = graph.boundary(c)
        boundaries.append(b)
        keys.append(featurize_key(prefix, b, datamodule, dtype, 0, autocast))
    graph.set_frozen(deepest)
    deep_prefix, _ = graph.split(deepest)
    order = {n: i for i, n in enumerate([*graph.inputs, *graph.node_names])}
    outputs = sorted({n for b in boundaries for n in b}, key=order.__getitem__)
    at = {n: i for i, n in enumerate(outputs)}
    multi = deep_prefix.rebuilt(outputs=outputs)

    result = CutsResult(keys)
    unique = sorted(set(keys))
    was_training = multi.training
    multi.eval().to(device)
    if device.type == "cuda":
        multi.to(memory_format=torch.channels_last)
    try:
        with contextlib.ExitStack() as locks:
            for key in unique:  # sorted: two planners never wait on each other in a cycle
                locks.enter_context(key_lock(cache_dir, key))
            for split in FEATURIZED_SPLITS:
                dataset = datamodule.dataset(split)
                n = len(dataset)  # type: ignore[arg-type]
                writers: dict[str, tuple[_Writer, list[int]]] = {}
                for key, b in zip(keys, boundaries):
                    if key in writers or result.hits.get(key, {}).get(split) is not None:
                        continue
                    path = cache_dir / f"{key}-{split}.h5"
                    found = check_split(path, key, split, b, n, 1, dtype)
                    result.hits.setdefault(key, {})[split] = found is not None
                    if found is None:
                        writers[key] = (_Writer(path, key, split, b, n, dtype), [at[x] for x in b])
                result.passes[split] = 0
                if not writers:
                    continue
                for w, _ in writers.values():
                    w.start()
                try:
                    for outs, y in _batches(multi, dataset, batch_size, device, 1, split, autocast):
                        for w, idx in writers.values():
                            w.put(([outs[i] for i in idx], y))
                    result.passes[split] += 1
                    for w, _ in writers.values():
                        w.put(_END)
                except BaseException as e:
                    stop = e if isinstance(e, Exception) else RuntimeError("featurize interrupted")
                    for w, _ in writers.values():
                        with contextlib.suppress(BaseException):
                            w.put(stop)  # the writer removes its temporary file
                    raise
                finally:
                    for w, _ in writers.values():
                        w.join()
                errors = [w.error for w, _ in writers.values() if w.error is not None]
                if errors:
                    raise errors[0]
    finally:
        multi.train(was_training)
    for i, key in enumerate(keys):
        extra = dict(info[i]) if info else {}
        note_entry(cache_dir, key, {**extra, "boundary": boundaries[i], "dtype": dtype},
                   wrote=not all(result.hits.get(key, {}).values()))
    result.seconds = time.perf_counter() - start
    return result
