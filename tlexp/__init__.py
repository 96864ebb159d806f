"""tlexp: transfer-learning experiments from configuration."""

from typing import Any

from tlexp.errors import TlexpError
from tlexp.graph import LayerGraph
from tlexp.sources.saved import load_model, save_model

__version__ = "0.1.0"

__all__ = ["LayerGraph", "TlexpError", "TransferLearningHelper", "load_model", "save_model", "__version__"]


def __getattr__(name: str) -> Any:
    # imported on use: loading a model needs neither Lightning nor Hydra's compose
    if name == "TransferLearningHelper":
        from tlexp.helper import TransferLearningHelper

        return TransferLearningHelper
    raise AttributeError(f"module 'tlexp' has no attribute {name!r}")
