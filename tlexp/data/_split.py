"""Split helpers shared by the data modules."""

from __future__ import annotations

import numpy as np

__all__ = ["cap_per_class", "check_fractions", "stratified_split"]


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Both held-out fractions in (0, 1), leaving a training split."""
    from tlexp.errors import ConfigError

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("data.val_fraction/test_fraction: each must be in (0, 1) and their sum below 1")


def cap_per_class(ids: np.ndarray, y: np.ndarray, cap: int | None) -> np.ndarray:
    """The first ``cap`` ids of each class, in their (already shuffled) order."""
    if cap is None:
        return ids
    counts: dict[int, int] = {}
    keep = []
    for i in ids:
        c = int(y[i])
        if counts.get(c, 0) < cap:
            counts[c] = counts.get(c, 0) + 1
            keep.append(i)
    return np.asarray(keep, dtype=ids.dtype)


def stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded, stratified (train, val, test) index arrays."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    strat = y if np.bincount(y).min() >= 3 else None
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=strat, random_state=seed)
    share = val_fraction / (1 - test_fraction)
    strat = y[rest] if strat is not None else None
    train, val = train_test_split(rest, test_size=share, stratify=strat, random_state=seed)
    return train, val, test
