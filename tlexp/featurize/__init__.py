"""Compute the frozen prefix once into the HDF5 cache, and feed the stored tensors to training.

The equivalent of DL4J's ``TransferLearningHelper.featurize`` / ``fitFeaturized``: the prefix
runs in inference mode, without gradients, batched, over each split; its boundary tensors (more
than one where a skip connection crosses the cut) are stored under a key that hashes everything
that decides them; later epochs and later runs read them back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tlexp.data import TlexpDataModule
from tlexp.data._sampler import SeededBatchSampler
from tlexp.errors import ConfigError
from tlexp.featurize._index import key_lock, note_entry
from tlexp.featurize._sampling import StreamingBatches, TensorBatches
from tlexp.featurize._store import (
    DTYPES,
    SplitFile,
    cache_key,
    check_dtype,
    check_split,
    hash_state,
    parse_bytes,
    remove_stale_temps,
    write_split,
)
from tlexp.graph import LayerGraph

__all__ = ["FeaturizeResult", "featurize", "featurize_key", "featurize_cuts", "FeaturizedDataModule", "SeededBatchSampler", "parse_bytes", "DTYPES"]

log = logging.getLogger(__name__)

#: the splits computed into the cache. The test split is not: the reassembled whole model is
#: evaluated on raw test data, so its features would be computed and never read.
FEATURIZED_SPLITS = ("train", "val")

#: batch size for validating on in-memory features
EVAL_BATCH = 1024


@dataclass
class FeaturizeResult:
    key: str
    files: dict[str, SplitFile]
    hits: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def cache_hit(self) -> bool:
        """True when every split came from the cache."""
        return all(self.hits.values())


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _batches(prefix: LayerGraph, dataset: Dataset, batch_size: int, device: torch.device,
             copies: int, label: str, autocast: torch.dtype | None = None) -> Iterator[tuple[Sequence[torch.Tensor], torch.Tensor]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    channels_last = device.type == "cuda" and all(
        g.shape is not None and len(g.shape) == 3 for g in prefix.graph_inputs
    )
    total = len(loader) * copies
    with Progress(TextColumn("featurize {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True) as progress:
        task = progress.add_task(label, total=total)
        for _ in range(copies):
            for batch in loader:
                *xs, y = batch
                xs = [x.to(device, non_blocking=True) for x in xs]
                if channels_last:
                    xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
                with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.float32,
                                                            enabled=autocast is not None):
                    out = _as_tuple(prefix(*xs))
                yield [o.float() if o.is_floating_point() else o for o in out], y
                progress.advance(task)


def featurize_key(prefix: LayerGraph, boundary: Sequence[str], datamodule: TlexpDataModule, dtype: str,
                  augment_copies: int = 0, autocast: torch.dtype | None = None) -> str:
    """The cache key of ``prefix``'s outputs over ``datamodule``'s splits."""
    identity = {**datamodule.identity(), "autocast": str(autocast) if autocast is not None else None}
    return cache_key(prefix.to_config(), hash_state(prefix), boundary, identity, dtype, augment_copies)


def _check_writable(cache_dir: Path) -> None:
    """The cache folder exists (or can be made) and takes files: said before any compute."""
    import tempfile

    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ConfigError(
            f"paths.cache_dir: cannot write the feature cache in {str(cache_dir)!r} ({why}); "
            "set paths.cache_dir (or TLEXP_CACHE) to a writable folder"
        ) from None


def _expected_shapes(prefix: LayerGraph, datamodule: TlexpDataModule, device: torch.device,
                     autocast: torch.dtype | None) -> list[tuple[int, ...]] | None:
    """The per-sample shapes of the prefix outputs, from one training sample: what a cache
    file must declare before any of it is read."""
    dataset = datamodule.dataset("train")
    if len(dataset) == 0:  # type: ignore[arg-type]
        return None
    *xs, _ = dataset[0]
    xs = [torch.as_tensor(x).unsqueeze(0).to(device) for x in xs]
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        out = _as_tuple(prefix(*xs))
    return [tuple(int(v) for v in o.shape[1:]) for o in out]


def featurize(prefix: LayerGraph, boundary: Sequence[str], datamodule: TlexpDataModule, cache_dir: str | Path,
              dtype: str = "float32", batch_size: int = 256, augment_copies: int = 0,
              overwrite: bool = False, device: torch.device | str = "cpu",
              autocast: torch.dtype | None = None, info: Mapping[str, Any] | None = None) -> FeaturizeResult:
    """Make sure every split's prefix outputs are in the cache, computing the missing ones.

    On a GPU the prefix runs channels-last, and under ``autocast`` (the trainer's mixed
    precision, so both freeze modes see the same numerics) when given; the autocast dtype is part
    of the key.
    """
    check_dtype(dtype)
    if augment_copies < 0:
        raise ConfigError(f"featurize.augment_copies: {augment_copies} must be 0 or more")
    if datamodule.has_random_augment and augment_copies == 0:
        raise ConfigError(
            "featurize: the training data has random augmentations, which cannot be computed once; "
            "set featurize.augment_copies=K to store K augmented passes, data.augment=false, or freeze.mode=in_model"
        )
    device = torch.device(device)
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    _check_writable(cache_dir)
    remove_stale_temps(cache_dir)
    key = featurize_key(prefix, boundary, datamodule, dtype, augment_copies, autocast)
    result = FeaturizeResult(key=key, files={})
    was_training = prefix.training
    prefix.eval().to(device)
    if device.type == "cuda":
        prefix.to(memory_format=torch.channels_last)
    try:
        shapes = _expected_shapes(prefix, datamodule, device, autocast)
        with key_lock(cache_dir, key):
            for split in FEATURIZED_SPLITS:
                augmented = split == "train" and augment_copies > 0
                copies = augment_copies if augmented else 1
                dataset = datamodule.augmented_dataset(split) if augmented else datamodule.dataset(split)
                n = len(dataset)  # type: ignore[arg-type]
                path = cache_dir / f"{key}-{split}.h5"
                why: list[str] = []
                found = None if overwrite else check_split(path, key, split, boundary, n, copies, dtype, shapes=shapes,
                                                           num_classes=datamodule.num_classes, reasons=why)
                if found is None:
                    if path.exists() and not overwrite:
                        log.warning("featurize: cache file %s failed verification (%s); rebuilding it",
                                    path, why[0] if why else "does not match")
                    found = write_split(path, key, split, boundary, n, copies, dtype,
                                        _batches(prefix, dataset, batch_size, device, copies, split, autocast))
                    result.hits[split] = False
                else:
                    result.hits[split] = True
                result.files[split] = found
    finally:
        prefix.train(was_training)
    result.seconds = time.perf_counter() - start
    note_entry(cache_dir, key, {**(info or {}), "boundary": list(boundary), "dtype": dtype},
               wrote=not result.cache_hit)
    return result


class FeaturizedDataModule(pl.LightningDataModule):
    """Batches of stored prefix outputs: tensor slices from memory when the cache fits in
    ``max_memory``, else contiguous chunks streamed from HDF5.

    In memory, batches come in exactly the order the raw data module gives them for the same
    seed (same :class:`SeededBatchSampler`), which is what makes ``featurize`` and ``in_model``
    train to the same weights.
    """

    def __init__(self, result: FeaturizeResult, batch_size: int, seed: int, max_memory: int | str = "2GB",
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.result = result
        self.batch_size = batch_size
        self.seed = seed
        self.max_memory = parse_bytes(max_memory)
        self.device = torch.device(device)
        self._sets: dict[str, Dataset] = {}
        budget = self.max_memory
        for split in FEATURIZED_SPLITS:
            f = result.files[split]
            if f.nbytes <= budget:
                budget -= f.nbytes
                self._sets[split] = TensorBatches.from_file(f, self.device)
            else:
                self._sets[split] = StreamingBatches(f, batch_size, shuffle=split == "train", seed=seed)

    @property
    def in_memory(self) -> dict[str, bool]:
        return {s: isinstance(d, TensorBatches) for s, d in self._sets.items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self._sets[split]
        if isinstance(ds, StreamingBatches):
            return DataLoader(ds, batch_size=None)
        # evaluation needs no small batches: the stored features are already in memory
        batch = self.batch_size if shuffle else max(self.batch_size, EVAL_BATCH)
        sampler = SeededBatchSampler(ds.n, batch, shuffle=shuffle, seed=self.seed, copies=ds.copies)
        pin = self.device.type == "cuda" and ds.device.type == "cpu"
        return DataLoader(ds, sampler=sampler, batch_size=None, pin_memory=pin)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)


def describe(result: FeaturizeResult) -> Mapping[str, Any]:
    return {
        "key": result.key,
        "cache_hit": result.cache_hit,
        "hits": dict(result.hits),
        "files": {s: str(f.path) for s, f in result.files.items()},
        "bytes": sum(f.nbytes for f in result.files.values()),
    }


from tlexp.featurize._multi import featurize_cuts  # noqa: E402  (uses the helpers above)
