"""Batch order shared by raw and featurized loaders.

Raw and featurized loaders draw their batches from the same :class:`SeededBatchSampler`, so for
one seed they visit samples in the same order — the condition for ``featurize`` and
``in_model`` to train the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["SeededBatchSampler", "epoch_generator", "raw_loader"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)


class SeededBatchSampler(Sampler):
    """Yields one index tensor per batch; epoch e shuffles with a generator seeded by (seed, e).

    With ``copies`` > 1 (augmented passes stored one after another), each epoch draws one copy
    and offsets the indices into it.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, copies: int = 1) -> None:
        self.n, self.batch_size, self.shuffle, self.seed, self.copies = n, batch_size, shuffle, seed, copies
        self.epoch = 0

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = epoch_generator(self.seed, self.epoch)
        self.epoch += 1
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        if self.copies > 1:
            order = order + int(torch.randint(self.copies, (1,), generator=g)) * self.n
        yield from order.split(self.batch_size)



def raw_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A loader over raw samples in :class:`SeededBatchSampler` order."""
    sampler = SeededBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
    if getattr(dataset, "tensors", None) is not None:
        # a TensorDataset indexes with a whole index tensor: one slice per batch, no per-sample Python
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=num_workers)
    lists = _AsLists(sampler)
    return DataLoader(dataset, batch_sampler=lists, num_workers=num_workers, persistent_workers=num_workers > 0)


class _AsLists(Sampler):
    def __init__(self, sampler: SeededBatchSampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.sampler:
            yield idx.tolist()
