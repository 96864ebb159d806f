"""A model's fitted preprocessing, kept beside it as JSON (``model/preprocessing.json``).

A run saves how its inputs were prepared with the model it trains: for a table the column order,
the one-hot layout (each categorical column's categories, the first dropped), the numeric
statistics and the label mapping; for an image folder the normalization, image size and class
names. A run that starts from a saved model (``source=saved``) prepares its data the same way
by default (``data.preprocessing=source``): a model trained on one population and fine-tuned or
evaluated on another sees its inputs as it learnt them (DL4J keeps its normalizer in the model
file for the same reason). ``data.preprocessing=refit`` re-estimates it on the new training split.

``tlexp.load_model(DIR).preprocessing`` (or :func:`load_preprocessing`) gives it back, so new
data can be prepared the same way from Python::

    model = tlexp.load_model("outputs/run/model")
    x = model.preprocessing.transform("new_customers.csv")   # float32 [rows, features]
    names = model.preprocessing.decode(model(x).argmax(1))

Plain JSON only: nothing is unpickled. This module imports neither Lightning nor a data module.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlexp.errors import ConfigError, SourceError, choices

__all__ = [
    "PREPROCESSING_FILE",
    "PREPROCESSING_MODES",
    "Preprocessing",
    "TabularPreprocessing",
    "ImagePreprocessing",
    "DigitsPreprocessing",
    "from_dict",
    "load_preprocessing",
    "check_mode",
]

PREPROCESSING_FILE = "preprocessing.json"
FORMAT = "tlexp.preprocessing/1"
#: data.preprocessing: the source model's (when it carries one) or re-estimated on this run's training split
PREPROCESSING_MODES = ("source", "refit")


def check_mode(mode: Any) -> str:
    if mode not in PREPROCESSING_MODES:
        raise ConfigError(f"data.preprocessing: {mode!r} is not a mode; valid: {', '.join(PREPROCESSING_MODES)}")
    return str(mode)


def _is_missing(v: str) -> bool:
    return v.strip().lower() in ("", "nan", "-nan", "na", "null", "none")


@dataclass
class TabularPreprocessing:
    """How a table's rows became a model's input vectors.

    ``columns``: the input columns in the order they are encoded; ``categorical``: each
    categorical column's categories (one-hot, the first dropped); ``features``: the encoded
    feature names, in model input order; ``mean``/``std``: per feature, subtracted and divided
    (mean 0, std 1 when the run did not standardize); ``classes``: label value of each class index.
    """

    label: str
    classes: list[str]
    columns: list[str]
    categorical: dict[str, list[str]]
    features: list[str]
    mean: list[float]
    std: list[float]
    drop: list[str] = field(default_factory=list)
    fillna: float | None = None
    kind: str = "tabular"

    def check_columns(self, columns: Sequence[str], where: str, strict: bool = True) -> None:
        """``columns`` (a data set's input columns) are the ones this preprocessing encodes.

        ``strict``: extra columns are an error too (a run's data set); otherwise they are ignored.
        """
        missing = [c for c in self.columns if c not in columns]
        extra = [c for c in columns if c not in self.columns] if strict else []
        if missing or extra:
            parts = ([f"missing {missing}"] if missing else []) + ([f"not in the source {extra}"] if extra else [])
            raise ConfigError(
                f"{where}: the data's columns do not match the source model's preprocessing ({'; '.join(parts)}); "
                f"the model takes {choices(self.columns)}"
                + ("; drop extra columns with data.drop, or, for a table of its own, set data.preprocessing=refit (the run "
                   "then says how to resize the model's first layer to the data's width)" if strict else "")
            )

    def encode(self, columns: Mapping[str, Sequence[str]], origin: str) -> np.ndarray:
        """Raw (not yet standardized) feature matrix of text columns, in this layout."""
        feats: list[np.ndarray] = []
        for c in self.columns:
            values = [str(v) for v in columns[c]]
            if c in self.categorical:
                known = self.categorical[c]
                unknown = sorted({v for v in values if v not in known})
                if unknown:
                    raise SourceError(
                        f"{origin}: column {c!r} has value(s) {unknown[:5]} the source model's preprocessing does not "
                        f"know; known: {choices(known)}"
                    )
                feats.extend(np.array([v == k for v in values], dtype=np.float32) for k in known[1:])
            else:
                try:
                    feats.append(np.array([self._number(v) for v in values], dtype=np.float32))
                except ValueError:
                    bad = next(v for v in values if not _number_or_missing(v))
                    raise SourceError(f"{origin}: column {c!r} has a non-numeric value {bad!r}") from None
        return np.stack(feats, axis=1) if feats else np.zeros((0, 0), dtype=np.float32)

    def _number(self, v: str) -> float:
        if _is_missing(v):
            if self.fillna is None:
                raise ValueError(v)
            return float(self.fillna)
        return float(v)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((x - mean) / std).astype(np.float32)

    def transform(self, table: Any) -> Any:
        """New data prepared as the model's inputs were: a float32 tensor ``[rows, features]``.

        ``table``: a CSV file's path, a mapping of column name to values (a pandas DataFrame
        works), or a list of row mappings. Columns the model does not take (the label, ids) are
        ignored; a missing one is named.
        """
        import torch

        columns, origin = _columns_of(table)
        self.check_columns(list(columns), where=origin, strict=False)
        return torch.from_numpy(self.standardize(self.encode(columns, origin)))

    def decode(self, indices: Any) -> list[str]:
        """Class indices (a model's argmax) as the label values they stand for."""
        return [self.classes[int(i)] for i in np.asarray(indices).reshape(-1)]


@dataclass
class ImagePreprocessing:
    """How images became a model's inputs: timm's data config (size, mean/std, resize) and class names."""

    data_config: dict[str, Any]
    classes: list[str]
    kind: str = "image"

    def transform(self) -> Any:
        """timm's evaluation transform (resize, center crop, normalize) for a PIL image."""
        from timm.data import create_transform

        c = self.data_config
        return create_transform(input_size=tuple(c["input_size"]), is_training=False, interpolation=c["interpolation"],
                                mean=tuple(c["mean"]), std=tuple(c["std"]), crop_pct=c["crop_pct"], crop_mode=c["crop_mode"])

    def decode(self, indices: Any) -> list[str]:
        return [self.classes[int(i)] for i in np.asarray(indices).reshape(-1)]


@dataclass
class DigitsPreprocessing:
    """scikit-learn's 8×8 digits: pixel values 0..16 divided by ``scale``, shape ``[1, 8, 8]``."""

    classes: list[str]
    scale: float = 16.0
    kind: str = "digits"

    def transform(self, images: Any) -> Any:
        import torch

        x = torch.as_tensor(np.asarray(images, dtype=np.float32) / self.scale)
        return x.reshape(-1, 1, 8, 8)

    def decode(self, indices: Any) -> list[str]:
        return [self.classes[int(i)] for i in np.asarray(indices).reshape(-1)]


Preprocessing = TabularPreprocessing | ImagePreprocessing | DigitsPreprocessing
_KINDS: dict[str, Any] = {"tabular": TabularPreprocessing, "image": ImagePreprocessing, "digits": DigitsPreprocessing}


def to_dict(p: Preprocessing) -> dict[str, Any]:
    return {"format": FORMAT, **asdict(p)}


def from_dict(data: Any, where: str = "preprocessing") -> Preprocessing:
    """A preprocessing record read back from its JSON form, checked."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise SourceError(f"{where}: not a tlexp preprocessing record (format {FORMAT!r} expected)")
    kind = data.get("kind")
    if kind not in _KINDS:
        raise SourceError(f"{where}: unknown preprocessing kind {kind!r}; valid: {', '.join(_KINDS)}")
    cls = _KINDS[kind]
    fields = {k: v for k, v in data.items() if k != "format"}
    try:
        p = cls(**fields)
    except TypeError as e:
        raise SourceError(f"{where}: the {kind} preprocessing record does not fit ({e})") from None
    if isinstance(p, TabularPreprocessing) and not (len(p.features) == len(p.mean) == len(p.std)):
        raise SourceError(f"{where}: {len(p.features)} features but {len(p.mean)} means and {len(p.std)} stds")
    return p  # type: ignore[no-any-return]


def save_preprocessing(p: Preprocessing, directory: str | os.PathLike[str]) -> Path:
    path = Path(directory) / PREPROCESSING_FILE
    path.write_text(json.dumps(to_dict(p), indent=2))
    return path


def load_preprocessing(directory: str | os.PathLike[str]) -> Preprocessing | None:
    """The preprocessing saved with a model folder; None for a model saved without one
    (models written before preprocessing travelled with them)."""
    from tlexp._resources import resolve_path

    path = resolve_path(str(directory)) / PREPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"source.path: {path} is not valid JSON ({e}); the file is damaged") from None
    return from_dict(data, where=f"source.path: {path}")


def _number_or_missing(v: str) -> bool:
    if _is_missing(v):
        return True
    try:
        float(v)
        return True
    except ValueError:
        return False


def _columns_of(table: Any) -> tuple[dict[str, list[str]], str]:
    """Text columns of a CSV path, a column mapping (or DataFrame) or a list of row mappings."""
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            raise SourceError(f"{str(path)!r} does not exist or is not a file")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [r for r in reader if r]
        return {h: [r[i] for r in rows] for i, h in enumerate(header)}, str(path)
    if isinstance(table, Sequence) and table and isinstance(table[0], Mapping):
        names = list(table[0])
        return {h: [str(r[h]) for r in table] for h in names}, "rows"
    if hasattr(table, "columns") or isinstance(table, Mapping):
        return {str(h): [str(v) for v in table[h]] for h in list(table.columns if hasattr(table, "columns") else table)}, "table"
    raise ConfigError(f"preprocessing.transform: a CSV path, a column mapping or a list of rows is needed, not {type(table).__name__}")
