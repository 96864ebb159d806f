"""tlexp: transfer-learning experiments from configuration."""

from tlexp.errors import TlexpError
from tlexp.graph import LayerGraph
from tlexp.sources.saved import load_model, save_model

__version__ = "0.1.0"

__all__ = ["LayerGraph", "TlexpError", "load_model", "save_model", "__version__"]
