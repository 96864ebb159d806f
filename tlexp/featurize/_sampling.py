"""Batch assembly for featurized data: tensor slices from memory, or chunks streamed from HDF5."""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from tlexp.data._sampler import epoch_generator
from tlexp.featurize._store import DTYPES, SplitFile

__all__ = ["TensorBatches", "StreamingBatches"]


class TensorBatches(Dataset):
    """Stored features held as tensors; indexing with an index tensor returns a whole batch."""

    def __init__(self, feats: list[torch.Tensor], y: torch.Tensor, n: int, copies: int, dtype: str) -> None:
        self.feats, self.y, self.n, self.copies, self.dtype = feats, y, n, copies, dtype
        self.device = y.device

    @classmethod
    def from_file(cls, f: SplitFile, device: torch.device) -> TensorBatches:
        torch_dtype = DTYPES[f.dtype][0]
        with h5py.File(f.path, "r") as h:
            feats = []
            for i in range(len(f.names)):
                arr = h[f"f{i}"][...]
                t = torch.from_numpy(arr)
                if f.dtype == "bfloat16":
                    t = t.view(torch.bfloat16)
                feats.append(t.to(torch_dtype))
            y = torch.from_numpy(h["y"][...])
        if device.type == "cuda":
            feats = [t.to(device) for t in feats]
            y = y.to(device)
        return cls(feats, y, f.n, f.copies, f.dtype)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        if idx.device != self.device:
            idx = idx.to(self.device)
        return tuple(t[idx].float() for t in self.feats), self.y[idx]


class StreamingBatches(IterableDataset):
    """Features read from HDF5 in contiguous chunks, for caches larger than ``max_memory``.

    Each epoch visits the chunks in a seeded random order and shuffles within each chunk, so
    reads stay sequential on disk while batches still mix.
    """

    def __init__(self, f: SplitFile, batch_size: int, shuffle: bool, seed: int, chunk_batches: int = 16) -> None:
        self.file, self.batch_size, self.shuffle, self.seed = f, batch_size, shuffle, seed
        self.chunk_rows = batch_size * chunk_batches
        self.epoch = 0

    def __len__(self) -> int:
        return (self.file.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        g = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        f = self.file
        base = int(torch.randint(f.copies, (1,), generator=g)) * f.n if f.copies > 1 else 0
        starts = torch.arange(0, f.n, self.chunk_rows)
        if self.shuffle:
            starts = starts[torch.randperm(len(starts), generator=g)]
        with h5py.File(f.path, "r") as h:
            sets = [h[f"f{i}"] for i in range(len(f.names))]
            for s in starts.tolist():
                e = min(s + self.chunk_rows, f.n)
                feats = [torch.from_numpy(np.ascontiguousarray(d[base + s : base + e])) for d in sets]
                if f.dtype == "bfloat16":
                    feats = [t.view(torch.bfloat16) for t in feats]
                y = torch.from_numpy(h["y"][base + s : base + e])
                order = torch.randperm(e - s, generator=g) if self.shuffle else torch.arange(e - s)
                for idx in order.split(self.batch_size):
                    yield tuple(t[idx].float() for t in feats), y[idx]
