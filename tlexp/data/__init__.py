"""LightningDataModules for the shipped data sets and the user's own files.

``data.type`` picks the module (each file in ``conf/data/`` sets it); every other key of the
``data`` node is passed to its constructor.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tlexp.data._facts import DataFacts, data_facts
from tlexp.errors import ConfigError, choices

if TYPE_CHECKING:
    from tlexp.data._base import SPLITS, TlexpDataModule

__all__ = ["DATA_MODULES", "SPLITS", "DataFacts", "TlexpDataModule", "build_datamodule", "data_facts"]


def __getattr__(name: str) -> Any:
    # the data modules are LightningDataModules: Lightning is imported when one is first needed,
    # so that what needs only a data set's facts (tlexp-inspect) starts without it
    if name in ("SPLITS", "TlexpDataModule"):
        from tlexp.data import _base

        return getattr(_base, name)
    raise AttributeError(f"module 'tlexp.data' has no attribute {name!r}")

#: data.type -> "module:Class"; imported on use
DATA_MODULES: dict[str, str] = {
    "digits": "tlexp.data.digits:DigitsDataModule",
    "churn": "tlexp.data.tabular:TabularDataModule",
    "csv": "tlexp.data.tabular:TabularDataModule",
    "image_folder": "tlexp.data.image_folder:ImageFolderDataModule",
}

#: keys that choose the data module rather than configure it
_PASS_TYPE = {"churn", "csv"}


def build_datamodule(cfg: Mapping[str, Any], seed: int, source_preprocessing: Any = None, **extra: Any) -> TlexpDataModule:
    """The data module that the ``data`` config node describes (``seed`` orders the batches).

    ``source_preprocessing``: the preprocessing a saved source model carries
    (:mod:`tlexp.data.preprocessing`); a table applies it under ``data.preprocessing=source``
    (the default) instead of fitting its own, and ``refit`` ignores it.
    """
    from tlexp.data.preprocessing import TabularPreprocessing, check_mode

    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    mode = check_mode(str(cfg.pop("preprocessing", "source")))
    if kind not in DATA_MODULES:
        raise ConfigError(f"data.type: unknown data set {kind!r}; valid: {choices(DATA_MODULES)}")
    mod_name, cls_name = DATA_MODULES[kind].split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    if kind in _PASS_TYPE:
        cfg["type"] = kind
        if mode == "source" and source_preprocessing is not None:
            if not isinstance(source_preprocessing, TabularPreprocessing):
                raise ConfigError(
                    f"data.preprocessing: the source model was trained on {source_preprocessing.kind} data, this is a "
                    "table; set data.preprocessing=refit"
                )
            extra["fitted"] = source_preprocessing
    return cls(seed=seed, **cfg, **extra)
