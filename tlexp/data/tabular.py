"""``data=churn`` and ``data=csv``: tables from CSV files.

Identifier columns are dropped, categorical columns one-hot encoded (the first category dropped,
so a two-valued column becomes one 0/1 column, as the seed book encodes Gender and Geography),
and numeric columns standardized with statistics from the training split only — the seed book
fits them on every row, which leaks the test split into training; we do not copy that.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from tlexp.data._base import TlexpDataModule
from tlexp.data._split import cap_per_class, check_fractions, stratified_split
from tlexp.data.preprocessing import TabularPreprocessing
from tlexp.errors import ConfigError, SourceError, choices

__all__ = ["TabularDataModule", "CHURN_COLUMNS", "synthetic_churn", "write_csv", "read_csv"]

CHURN_COLUMNS = [
    "RowNumber", "CustomerId", "Surname", "CreditScore", "Geography", "Gender", "Age", "Tenure",
    "Balance", "NumOfProducts", "HasCrCard", "IsActiveMember", "EstimatedSalary", "Exited",
]

_SURNAMES = [
    "Hargrave", "Hill", "Onio", "Boni", "Mitchell", "Chu", "Bartlett", "Obinna", "He", "H?",
    "Bearce", "Andrews", "Kay", "Chin", "Scott", "Goforth", "Romeo", "Henderson", "Muldrow", "Hao",
]


def synthetic_churn(rows: int = 10000, seed: int = 2024) -> tuple[list[str], list[list[str]]]:
    """A deterministic bank-churn table with the real file's schema and plausible dependencies.

    About 20% churners overall. What every country shares: older, inactive, female customers
    and those with one or three-plus products churn more, and holding a balance raises churn a
    little. What differs in Germany (a population shift and a concept shift, so that a model
    trained on France and Spain transfers with something left to learn): German customers
    nearly all hold a balance (far higher balances than elsewhere, as in the real table), churn
    about twice as often, and among them inactivity weighs more and larger balances keep
    customers (the slope of balance is reversed).
    """
    rng = np.random.default_rng(seed)
    geo = rng.choice(["France", "Germany", "Spain"], size=rows, p=[0.5, 0.25, 0.25])
    gender = rng.choice(["Female", "Male"], size=rows, p=[0.45, 0.55])
    age = np.clip(rng.normal(39, 10, rows), 18, 92).round().astype(int)
    score = np.clip(rng.normal(650, 97, rows), 350, 850).round().astype(int)
    tenure = rng.integers(0, 11, rows)
    has_balance = np.where(geo == "Germany", rng.random(rows) < 0.97, rng.random(rows) < 0.5)
    balance = np.where(has_balance, np.clip(rng.normal(119000, 30000, rows), 3000, 250000), 0.0).round(2)
    products = rng.choice([1, 2, 3, 4], size=rows, p=[0.5, 0.46, 0.03, 0.01])
    card = (rng.random(rows) < 0.7).astype(int)
    active = (rng.random(rows) < 0.51).astype(int)
    salary = rng.uniform(11.58, 199992.48, rows).round(2)
    germany = geo == "Germany"
    logit = (
        -1.55
        + 0.075 * (age - 39)
        + np.where(germany, 1.0, 0.0)
        + np.where(gender == "Female", 0.5, 0.0)
        - np.where(germany, 1.6, 1.0) * active
        + np.where(products >= 3, 2.5, np.where(products == 2, -1.1, 0.0))
        + 0.4 * has_balance
        - 0.0006 * (score - 650)
        - np.where(germany, 1.5e-5 * (balance - 119000), 0.0)
    )
    exited = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    header = list(CHURN_COLUMNS)
    out = []
    for i in range(rows):
        out.append([
            str(i + 1), str(15565701 + int(rng.integers(0, 250000))), _SURNAMES[i % len(_SURNAMES)],
            str(score[i]), str(geo[i]), str(gender[i]), str(age[i]), str(tenure[i]), f"{balance[i]:.2f}",
            str(products[i]), str(card[i]), str(active[i]), f"{salary[i]:.2f}", str(exited[i]),
        ])
    return header, out


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise SourceError(f"data.path: {str(path)!r} does not exist or is not a file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [r for r in reader if r]
    except (UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"data.path: {path} is not a readable CSV file ({e})") from None
    if not header:
        raise SourceError(f"data.path: {path} is empty (no header row)")
    if not rows:
        raise SourceError(f"data.path: {path} has a header but no data rows")
    for n, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise SourceError(f"data.path: {path} line {n} has {len(r)} fields, the header has {len(header)}")
    return [h.strip() for h in header], rows


class TabularDataModule(TlexpDataModule):
    """Rows of a CSV (or the synthetic churn table) as float32 feature vectors and class labels."""

    def __init__(
        self,
        type: str = "csv",
        path: str | None = None,
        label: str = "Exited",
        drop: Sequence[str] = (),
        categorical: Sequence[str] = (),
        where: Mapping[str, Any] | None = None,
        max_per_class: int | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 42,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        synthetic_rows: int = 10000,
        standardize: bool = True,
        category_order: Mapping[str, Sequence[str]] | None = None,
        dropna: bool = False,
        fillna: float | None = None,
        fitted: TabularPreprocessing | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        #: the source model's preprocessing, applied instead of fitting one (data.preprocessing=source)
        self.fitted = fitted
        self.preprocessing_from = "fitted" if fitted is None else "source"
        if path is None and type != "churn":
            raise ConfigError("data.path: a CSV file is needed (data.path=FILE)")
        check_fractions(val_fraction, test_fraction)
        self.kind = type
        self.path = None if path is None else Path(path).expanduser().resolve()
        self.label = label
        self.drop = list(drop)
        self.categorical = list(categorical)
        self.where = {k: [str(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals])] for k, vals in (where or {}).items()}
        self.max_per_class = max_per_class
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.synthetic_rows = synthetic_rows
        self.standardize = bool(standardize)
        self.category_order = {k: [str(v) for v in vals] for k, vals in (category_order or {}).items()}
        self.dropna = bool(dropna)
        if fillna is not None:
            try:
                fillna = float(fillna)
            except (TypeError, ValueError):
                raise ConfigError(f"data.fillna: {fillna!r} is not a number; write e.g. data.fillna=0") from None
        self.fillna = fillna
        self.feature_names: list[str] = []
        self.stats: dict[str, list[float]] = {}
        self._file_hash: str | None = None
        # read and encode now: wrong columns are config errors, found before any compute
        self._encoded = self._encode()

    # -- reading and encoding -------------------------------------------------------------------

    def _table(self) -> tuple[list[str], list[list[str]], str]:
        if self.path is None:
            header, rows = synthetic_churn(self.synthetic_rows)
            return header, rows, f"synthetic churn, {self.synthetic_rows} rows, seed 2024"
        header, rows = read_csv(self.path)
        self._file_hash = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return header, rows, str(self.path)

    def _encode(self) -> tuple[np.ndarray, np.ndarray]:
        header, rows, origin = self._table()
        col = {h: i for i, h in enumerate(header)}
        if self.label not in col:
            raise SourceError(f"data.label: column {self.label!r} is not in {origin}; columns: {choices(header)}")
        for fld, names in (("data.drop", self.drop), ("data.categorical", self.categorical), ("data.where", list(self.where))):
            for name in names:
                if name not in col:
                    hint = " (data.where=null clears the experiment's filter)" if fld == "data.where" else ""
                    raise ConfigError(f"{fld}: column {name!r} is not in {origin}{hint}; columns: {choices(header)}")
        # categories and number checks cover the whole table, so a filtered run (data.where) keeps
        # the input width and a malformed file fails whatever rows the filter keeps
        skip = set(self.drop) | {self.label}
        inputs = [h for h in header if h not in skip]
        if self.fitted is not None:
            self._check_fitted(inputs)
            # the source's layout: its column order, its categorical columns and their categories
            inputs = list(self.fitted.columns)
            numeric = [h for h in inputs if h not in self.fitted.categorical]
        else:
            numeric = [h for h in inputs if h not in self.categorical]
        rows = self._missing_values(rows, col, numeric, origin)
        cats = {c: sorted({r[col[c]] for r in rows}) for c in self.categorical}
        if self.fitted is not None:
            cats = {c: list(v) for c, v in self.fitted.categorical.items()}
            for c, known in cats.items():
                unknown = sorted({r[col[c]] for r in rows} - set(known))
                if unknown:
                    raise SourceError(
                        f"data.preprocessing: column {c!r} of {origin} has value(s) {unknown[:5]} the source model's "
                        f"preprocessing does not know (known: {choices(known)}); data.preprocessing=refit re-fits it"
                    )
        for c, order in ({} if self.fitted is not None else self.category_order).items():
            if c not in cats:
                raise ConfigError(f"data.category_order: {c!r} is not a categorical column; valid: {choices(cats)}")
            if sorted(order) != cats[c]:
                raise ConfigError(f"data.category_order.{c}: {order} must list exactly the values {cats[c]}")
            cats[c] = list(order)
        table: dict[str, np.ndarray] = {}
        for h in numeric:
            values = [r[col[h]] for r in rows]
            try:
                table[h] = np.array([self.fillna if _is_missing(v) else float(v) for v in values], dtype=np.float32)
            except ValueError:
                bad = next(i for i, v in enumerate(values) if not _is_number(v))
                raise SourceError(
                    f"data.path: column {h!r} has a non-numeric value {values[bad]!r} (data row {bad + 1} of {origin}); "
                    "list the column in data.categorical or data.drop"
                ) from None
        keep = np.ones(len(rows), dtype=bool)
        for c, values in self.where.items():
            keep &= np.array([r[col[c]] in values for r in rows])
        if not keep.any():
            raise ConfigError(f"data.where: no row of {origin} matches {self.where}; data.where=null keeps every row")
        rows = [r for r, k in zip(rows, keep) if k]
        labels_raw = [r[col[self.label]] for r in rows]
        classes = sorted(set(labels_raw), key=_label_order)
        if len(classes) < 2:
            raise SourceError(f"data.label: column {self.label!r} has a single value ({classes[0]!r}) in the rows kept")
        self.class_names = classes
        self.num_classes = len(classes)
        y = np.array([classes.index(v) for v in labels_raw], dtype=np.int64)
        features: list[np.ndarray] = []
        names: list[str] = []
        self._columns = list(inputs)
        self._categories = cats
        for h in inputs:
            if h in cats:
                values = [r[col[h]] for r in rows]
                for category in cats[h][1:]:
                    features.append(np.array([v == category for v in values], dtype=np.float32))
                    names.append(f"{h}={category}")
            else:
                features.append(table[h][keep])
                names.append(h)
        if not features:
            raise ConfigError("data.drop: every column is dropped; nothing is left to learn from")
        if self.fitted is not None and names != self.fitted.features:  # the same columns give the same layout
            raise SourceError(f"data.preprocessing: the encoded features {names} differ from the source's {self.fitted.features}")
        self.feature_names = names
        self.input_shape = (len(names),)
        self._origin = origin
        return np.stack(features, axis=1), y

    def _missing_values(self, rows: list[list[str]], col: Mapping[str, int], numeric: Sequence[str],
                        origin: str) -> list[list[str]]:
        """Rows with an empty or NaN value: named, or dropped (data.dropna), or filled (data.fillna)."""
        checked = [*numeric, self.label]
        holes = [i for i, r in enumerate(rows) if any(_is_missing(r[col[h]]) for h in checked)]
        if not holes:
            return rows
        if self.dropna:
            drop = set(holes)
            kept = [r for i, r in enumerate(rows) if i not in drop]
            if not kept:
                raise SourceError(f"data.dropna: every row of {origin} has a missing value")
            return kept
        if self.fillna is not None:  # numbers are filled; a missing label still cannot be
            holes = [i for i in holes if _is_missing(rows[i][col[self.label]])]
            if not holes:
                return rows
        first = rows[holes[0]]
        h = next(h for h in checked if _is_missing(first[col[h]]))
        raise SourceError(
            f"data.path: column {h!r} has a missing value {first[col[h]]!r} in data row {holes[0] + 1} of {origin} "
            f"({len(holes)} row(s) have one); set data.dropna=true to drop those rows"
            + ("" if h == self.label else " or data.fillna=VALUE to fill them")
        )

    def _build(self) -> dict[str, Dataset]:
        x, y = self._encoded
        train, val, test = stratified_split(y, self.val_fraction, self.test_fraction, self.split_seed)
        train = cap_per_class(train, y, self.max_per_class)
        if self.fitted is not None:  # the source model's statistics, not this population's
            mean = np.asarray(self.fitted.mean, dtype=np.float32)
            std = np.asarray(self.fitted.std, dtype=np.float32)
        else:
            mean = x[train].mean(axis=0)
            std = x[train].std(axis=0)
            std[std == 0] = 1.0
            if not self.standardize:
                mean, std = np.zeros_like(mean), np.ones_like(std)
        self.stats = {"mean": mean.tolist(), "std": std.tolist()}
        xs = ((x - mean) / std).astype(np.float32)
        return {
            name: TensorDataset(torch.from_numpy(xs[ids]), torch.from_numpy(y[ids]))
            for name, ids in (("train", train), ("val", val), ("test", test))
        }

    def _check_fitted(self, inputs: list[str]) -> None:
        """The data's input columns and categorical columns are the source preprocessing's."""
        assert self.fitted is not None
        self.fitted.check_columns(inputs, where="data.preprocessing=source")
        mine, theirs = sorted(self.categorical), sorted(self.fitted.categorical)
        if mine != theirs:
            raise ConfigError(
                f"data.categorical: {mine} but the source model's preprocessing encodes {theirs} as categorical; "
                f"set data.categorical={theirs} or data.preprocessing=refit"
            )

    def preprocessing(self) -> TabularPreprocessing:
        """What this module fitted (or took from the source): saved with the model it trains."""
        self.setup()
        return TabularPreprocessing(
            label=self.label, classes=list(self.class_names), columns=list(self._columns),
            categorical={c: list(v) for c, v in self._categories.items()}, features=list(self.feature_names),
            mean=[float(v) for v in self.stats["mean"]], std=[float(v) for v in self.stats["std"]],
            drop=list(self.drop), fillna=self.fillna,
        )

    def identity(self) -> dict[str, Any]:
        ident = self._identity()
        if self.category_order:
            ident["category_order"] = self.category_order
        if self.fitted is not None:  # the features depend on the source's statistics
            from tlexp.data.preprocessing import to_dict

            blob = json.dumps(to_dict(self.fitted), sort_keys=True).encode()
            ident["preprocessing"] = f"the source model's: {hashlib.sha256(blob).hexdigest()}"
        return ident

    def _identity(self) -> dict[str, Any]:
        return {
            "data": self.kind,
            "origin": self._origin,
            "sha256": self._file_hash,
            "label": self.label,
            "drop": self.drop,
            "categorical": self.categorical,
            "where": self.where,
            "max_per_class": self.max_per_class,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            "dropna": self.dropna,
            "fillna": self.fillna,
            "preprocessing": "one-hot drop-first; "
            + ("standardize with train-split statistics" if self.standardize else "raw values"),
        }


def _is_missing(v: str) -> bool:
    """An empty cell or a NaN (``nan``, ``NaN``, ``NA``, ``null``, ``None``)."""
    t = v.strip().lower()
    return t in ("", "nan", "-nan", "na", "null", "none")


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _label_order(v: str) -> tuple[int, float | str]:
    return (0, float(v)) if _is_number(v) else (1, v)
