"""The base of tlexp's LightningDataModules.

Every data module yields seeded train/val/test splits of ``(x, y)`` samples and can say what
decides their content (``identity()``), which the feature cache hashes into its key.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tlexp.data._sampler import raw_loader

__all__ = ["TlexpDataModule", "SPLITS"]

SPLITS = ("train", "val", "test")


class TlexpDataModule(pl.LightningDataModule):
    """Seeded splits, loaders, and the identity the feature cache keys on.

    Subclasses implement :meth:`_build` (returning a dataset per split, without random
    augmentation) and :meth:`identity`, and set ``num_classes`` and ``input_shape`` (per
    sample, channels first) in it.
    """

    #: True when the training transform is random (it then cannot be featurized once)
    has_random_augment: bool = False
    #: whose preprocessing prepares the samples: "fitted" (this data's own) or "source" (a saved model's)
    preprocessing_from: str = "fitted"

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.num_classes: int = 0
        self.input_shape: tuple[int, ...] = ()
        self.class_names: list[str] = []
        self._splits: dict[str, Dataset] | None = None

    # ---- to implement ----------------------------------------------------------------------

    def _build(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """JSON-able facts that decide every split's content (source file, split seed, preprocessing)."""
        raise NotImplementedError

    def augmented_dataset(self, split: str) -> Dataset:
        """The split with its random training transform; the plain split when there is none."""
        return self.dataset(split)

    def preprocessing(self) -> Any:
        """How samples were prepared (:mod:`tlexp.data.preprocessing`), saved with a trained model."""
        return None

    # ---- shared ----------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            self._splits = self._build()

    def dataset(self, split: str) -> Dataset:
        """A split without random augmentation (what is featurized and evaluated)."""
        self.setup()
        assert self._splits is not None
        return self._splits[split]

    def labels(self, split: str) -> torch.Tensor:
        ds = self.dataset(split)
        tensors = getattr(ds, "tensors", None)
        if tensors is not None:
            return tensors[-1]
        return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]

    def class_weights(self) -> torch.Tensor:
        """Inverse class frequencies of the training split, mean 1 (for imbalanced data)."""
        y = self.labels("train")
        counts = torch.bincount(y, minlength=self.num_classes).float().clamp_min(1)
        w = counts.sum() / (counts * self.num_classes)
        return w

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return raw_loader(ds, self.batch_size, shuffle=shuffle, seed=self.seed, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.augmented_dataset("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)
