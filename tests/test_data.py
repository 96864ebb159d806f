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
