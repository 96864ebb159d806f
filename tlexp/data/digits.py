"""``data=digits``: scikit-learn's bundled 8×8 handwritten digits (real data, no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from tlexp.data._base import TlexpDataModule
from tlexp.data._facts import DIGITS_INPUT_SHAPE, digits_classes
from tlexp.data._split import cap_per_class, check_fractions, stratified_split

__all__ = ["DigitsDataModule", "load_digits_arrays"]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' images (n, 8, 8; values 0..16, float64) and labels (int64), as
    ``sklearn.datasets.load_digits()`` gives them: read from the file scikit-learn ships, without
    importing scikit-learn (a run's start-up would pay about 0.3 s for it)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("data=digits reads scikit-learn's bundled digits; install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations)), "datasets", "data", "digits.csv.gz")
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


class DigitsDataModule(TlexpDataModule):
    """Images (1, 8, 8) scaled to [0, 1]; ``classes`` keeps a subset, relabelled 0..k-1 in order."""

    def __init__(
        self,
        classes: list[int] | None = None,
        max_per_class: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.3,
        split_seed: int = 42,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        classes = digits_classes(classes)
        check_fractions(val_fraction, test_fraction)
        self.classes = classes
        self.max_per_class = max_per_class
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.num_classes = len(classes)
        self.class_names = [str(c) for c in classes]
        self.input_shape = DIGITS_INPUT_SHAPE

    def _build(self) -> dict[str, Dataset]:
        images, target = load_digits_arrays()
        keep = np.isin(target, self.classes)
        x = (images[keep] / 16.0).astype(np.float32)[:, None]
        relabel = {c: i for i, c in enumerate(self.classes)}
        y = np.array([relabel[int(t)] for t in target[keep]], dtype=np.int64)
        train, val, test = stratified_split(y, self.val_fraction, self.test_fraction, self.split_seed)
        train = cap_per_class(train, y, self.max_per_class)
        return {
            name: TensorDataset(torch.from_numpy(x[ids]), torch.from_numpy(y[ids]))
            for name, ids in (("train", train), ("val", val), ("test", test))
        }

    def preprocessing(self) -> Any:
        from tlexp.data.preprocessing import DigitsPreprocessing

        return DigitsPreprocessing(classes=list(self.class_names))

    def identity(self) -> dict[str, Any]:
        return {
            "data": "digits",
            "classes": self.classes,
            "max_per_class": self.max_per_class,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "preprocessing": "pixels/16, float32 (1,8,8)",
        }
