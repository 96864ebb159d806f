"""The data modules: digits, the churn table (real schema, synthetic or from a CSV), any CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tlexp.data import build_datamodule
from tlexp.data.tabular import CHURN_COLUMNS, synthetic_churn, write_csv
from tlexp.errors import ConfigError, SourceError

CHURN = {"type": "churn", "label": "Exited", "drop": ["RowNumber", "CustomerId", "Surname"],
         "categorical": ["Geography", "Gender"]}


def _churn_csv(tmp_path: Path, rows: int = 600) -> Path:
    header, body = synthetic_churn(rows, seed=7)
    path = tmp_path / "Churn_Modelling.csv"
    write_csv(path, header, body)
    return path


def test_digits_class_subset_cap_and_determinism() -> None:
    a = build_datamodule({"type": "digits", "classes": [5, 6, 7, 8, 9], "max_per_class": 20}, seed=0)
    a.setup()
    y = a.labels("train")
    assert a.num_classes == 5 and torch.bincount(y).tolist() == [20] * 5
    assert a.input_shape == (1, 8, 8) and float(a.dataset("test").tensors[0].max()) <= 1.0
    b = build_datamodule({"type": "digits", "classes": [5, 6, 7, 8, 9], "max_per_class": 20}, seed=0)
    b.setup()
    assert torch.equal(a.dataset("val").tensors[0], b.dataset("val").tensors[0])
    with pytest.raises(ConfigError, match="data.classes"):
        build_datamodule({"type": "digits", "classes": [3, 12]}, seed=0)


def test_digits_load_as_scikit_learn_gives_them() -> None:
    # read from scikit-learn's bundled file without importing scikit-learn (a run's start-up)
    from sklearn.datasets import load_digits

    from tlexp.data.digits import load_digits_arrays

    images, target = load_digits_arrays()
    theirs = load_digits()
    assert images.dtype == theirs.images.dtype and np.array_equal(images, theirs.images)
    assert target.dtype == theirs.target.dtype and np.array_equal(target, theirs.target)


@pytest.mark.parametrize("fraction", [0.3, 0.25, 0.5, 0.2 / 0.7, 0.05])
@pytest.mark.parametrize("seed", [0, 42, 7])
def test_splits_are_scikit_learns_train_test_split(fraction: float, seed: int) -> None:
    # the same indices as sklearn's train_test_split (the runs before the change split so)
    from sklearn.model_selection import train_test_split

    from tlexp.data._split import train_test_indices

    rng = np.random.default_rng(seed)
    labels = [rng.integers(0, 10, 1797), np.repeat([0, 1, 1, 1], 60), rng.integers(0, 3, 31),
              np.r_[np.zeros(50, int), np.ones(7, int), np.full(5, 2)]]
    for y in labels:
        idx = np.arange(100, 100 + len(y))  # not the positions, so an index mix-up shows
        for strat in (y, None):
            try:
                theirs = train_test_split(idx, test_size=fraction, stratify=strat, random_state=seed)
            except ValueError:
                with pytest.raises(ValueError):
                    train_test_indices(idx, fraction, strat, seed)
                continue
            ours = train_test_indices(idx, fraction, strat, seed)
            assert [a.tolist() for a in ours] == [a.tolist() for a in theirs]
    with pytest.raises(ValueError):  # too few samples of a class to stratify
        train_test_indices(np.arange(5), 0.4, np.array([0, 0, 0, 0, 1]), 0)


def test_the_default_digits_split_is_the_one_runs_had() -> None:
    # identical to the split made with scikit-learn before (same rows, hence the same accuracies)
    from sklearn.model_selection import train_test_split

    dm = build_datamodule({"type": "digits"}, seed=0)
    dm.setup()
    y = np.concatenate([dm.labels(s).numpy() for s in ("train", "val", "test")])
    assert len(y) == 1797
    from tlexp.data._split import stratified_split
    from tlexp.data.digits import load_digits_arrays

    target = load_digits_arrays()[1]
    idx = np.arange(len(target))
    rest, test = train_test_split(idx, test_size=0.3, stratify=target, random_state=42)
    train, val = train_test_split(rest, test_size=0.2 / 0.7, stratify=target[rest], random_state=42)
    ours = stratified_split(target, 0.2, 0.3, 42)
    assert [a.tolist() for a in ours] == [train.tolist(), val.tolist(), test.tolist()]
    assert dm.labels("test").tolist() == target[test].tolist()


def test_synthetic_churn_has_the_real_schema_and_rate() -> None:
    header, rows = synthetic_churn()
    assert header == CHURN_COLUMNS and len(rows) == 10000
    exited = np.array([int(r[-1]) for r in rows])
    assert 0.17 < exited.mean() < 0.23
    geo = np.array([r[4] for r in rows])
    assert exited[geo == "Germany"].mean() > 1.5 * exited[geo == "France"].mean()
    assert synthetic_churn(50) == synthetic_churn(50)  # deterministic


def test_csv_with_the_real_schema_reads_unchanged(tmp_path: Path) -> None:
    path = _churn_csv(tmp_path)
    dm = build_datamodule({**CHURN, "path": str(path)}, seed=0)
    dm.setup()
    # Geography (3 values) -> 2 columns, Gender (2) -> 1, plus 8 numeric columns: the seed book's 11 inputs
    assert dm.input_shape == (11,) and dm.num_classes == 2
    assert dm.feature_names[:4] == ["CreditScore", "Geography=Germany", "Geography=Spain", "Gender=Male"]
    n = sum(len(dm.dataset(s)) for s in ("train", "val", "test"))
    assert n == 600
    # standardized with training-split statistics only: train is centred, test is not exactly
    train_x = dm.dataset("train").tensors[0]
    test_x = dm.dataset("test").tensors[0]
    assert torch.allclose(train_x.mean(0), torch.zeros(11), atol=1e-5)
    assert not torch.allclose(test_x.mean(0), torch.zeros(11), atol=1e-3)
    # the same file through data=csv
    same = build_datamodule({**CHURN, "type": "csv", "path": str(path)}, seed=0)
    same.setup()
    assert torch.equal(same.dataset("test").tensors[0], test_x)
    assert same.identity()["sha256"] == dm.identity()["sha256"]


def test_where_filter_keeps_the_input_width(tmp_path: Path) -> None:
    path = _churn_csv(tmp_path)
    de = build_datamodule({**CHURN, "path": str(path), "where": {"Geography": ["Germany"]}}, seed=0)
    de.setup()
    assert de.input_shape == (11,)
    total = sum(len(de.dataset(s)) for s in ("train", "val", "test"))
    assert 0 < total < 300
    w = de.class_weights()
    assert w.shape == (2,) and w[1] > w[0]  # churners are the minority class


def test_csv_errors_name_the_field(tmp_path: Path) -> None:
    path = _churn_csv(tmp_path, rows=50)
    with pytest.raises(SourceError, match="data.label: column 'Churned' is not in .*columns: RowNumber"):
        build_datamodule({**CHURN, "path": str(path), "label": "Churned"}, seed=0)
    with pytest.raises(ConfigError, match="data.drop: column 'Nope'"):
        build_datamodule({**CHURN, "path": str(path), "drop": ["Nope"]}, seed=0)
    text = path.read_text().splitlines()
    cols = text[3].split(",")
    cols[6] = "forty"  # Age
    text[3] = ",".join(cols)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(text) + "\n")
    with pytest.raises(SourceError, match="column 'Age' has a non-numeric value 'forty'.*data.categorical"):
        build_datamodule({**CHURN, "path": str(bad)}, seed=0)
    with pytest.raises(SourceError, match="does not exist"):
        build_datamodule({**CHURN, "path": str(tmp_path / "missing.csv")}, seed=0)
    with pytest.raises(ConfigError, match="data.type: unknown data set 'parquet'"):
        build_datamodule({"type": "parquet"}, seed=0)
