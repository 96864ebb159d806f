"""What a data set is, without loading it or importing Lightning: its sample shape and classes.

Model assembly needs only these two facts (``auto`` sizes, the model's input shape);
``tlexp-inspect`` reads them here so it starts without Lightning. A data set whose facts need
its files read (csv, image folders) has none here; its data module is built instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tlexp.errors import ConfigError

__all__ = ["DataFacts", "DIGITS_INPUT_SHAPE", "digits_classes", "data_facts"]

DIGITS_INPUT_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class DataFacts:
    input_shape: tuple[int, ...]
    num_classes: int


def digits_classes(classes: Any) -> list[int]:
    """The digits kept (all ten by default), checked."""
    classes = list(range(10)) if classes is None else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c <= 9]
    if bad or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ConfigError(f"data.classes: {classes} must be at least two distinct digits among 0..9")
    return classes


def data_facts(cfg: Mapping[str, Any]) -> DataFacts | None:
    """The facts of the ``data`` config node, or None when the data must be read for them."""
    if cfg.get("type") == "digits":
        return DataFacts(DIGITS_INPUT_SHAPE, len(digits_classes(cfg.get("classes"))))
    return None
