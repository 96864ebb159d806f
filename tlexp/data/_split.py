"""Split helpers shared by the data modules.

The splits are scikit-learn's ``train_test_split`` draws (the same indices for the same seed, so
runs and saved numbers from before stay comparable), made here with numpy alone: importing
scikit-learn costs a run about 0.3 s, more than the rest of its start-up. ``tests/test_data.py``
checks the indices against scikit-learn's own.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cap_per_class", "check_fractions", "stratified_split", "train_test_indices"]


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
    idx = np.arange(len(y))
    strat = y if np.bincount(y).min() >= 3 else None
    rest, test = train_test_indices(idx, test_fraction, strat, seed)
    share = val_fraction / (1 - test_fraction)
    strat = y[rest] if strat is not None else None
    train, val = train_test_indices(rest, share, strat, seed)
    return train, val, test


def train_test_indices(idx: np.ndarray, test_fraction: float, stratify: np.ndarray | None,
                       seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` shuffled into (train, test) as ``sklearn.model_selection.train_test_split(idx,
    test_size=test_fraction, stratify=stratify, random_state=seed)`` does: the same draws from
    the same ``RandomState``, in the same order, hence the same indices; ValueError where it
    raises one (too few samples to split, or to stratify)."""
    n = len(idx)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction {test_fraction} must be in (0, 1)")
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    if n_train <= 0:
        raise ValueError(f"{n} samples leave no training sample at test fraction {test_fraction}")
    rng = np.random.mtrand._rand if seed is None else np.random.RandomState(seed)
    if stratify is None:
        order = rng.permutation(n)
        return idx[order[n_test:]], idx[order[:n_test]]
    classes, members_of, counts = np.unique(stratify, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"classes {classes[counts < 2].tolist()} have one sample; stratifying needs two")
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"{n_train} training and {n_test} test samples cannot hold all {len(classes)} classes")
    # each class's positions, in the order they appear
    by_class = np.split(np.argsort(members_of, kind="stable"), np.cumsum(counts)[:-1])
    train_per_class = _share_out(counts, n_train, rng)
    test_per_class = _share_out(counts - train_per_class, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for positions, n_tr, n_te in zip(by_class, train_per_class, test_per_class):
        shuffled = positions.take(rng.permutation(len(positions)), mode="clip")
        train.extend(shuffled[:n_tr])
        test.extend(shuffled[n_tr:n_tr + n_te])
    return idx[rng.permutation(train)], idx[rng.permutation(test)]


def _share_out(counts: np.ndarray, total: int, rng: np.random.RandomState) -> np.ndarray:
    """``total`` draws shared among the classes in proportion to ``counts``: each class's whole
    share, then one more each to the largest remainders, ties broken at random."""
    exact = counts / counts.sum() * total
    shares = np.floor(exact)
    missing = int(total - shares.sum())
    remainder = exact - shares
    for value in np.unique(remainder)[::-1]:
        if missing <= 0:
            break
        (tied,) = np.where(remainder == value)
        chosen = rng.choice(tied, size=min(len(tied), missing), replace=False)
        shares[chosen] += 1
        missing -= len(chosen)
    return shares.astype(int)
