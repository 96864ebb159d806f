"""tlexp: transfer-learning experiments from configuration."""

import os
import sys
from typing import Any

if "torch" not in sys.modules:
    # OpenMP threads that wait for work sleep instead of spinning. With spinning (the default), a
    # busy machine (other runs, other users, a sweep's jobs) makes every small operator wait for
    # spinning threads that hold the cores: a run of the default experiment on 2 shared cores
    # took 4-7 s beyond its imports instead of ~1.5 s. Read once, when torch loads; a value the
    # user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tlexp.errors import TlexpError  # noqa: E402
from tlexp.graph import LayerGraph  # noqa: E402
from tlexp.sources.saved import load_model, save_model  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LayerGraph", "TlexpError", "TransferLearningHelper", "load_model", "save_model", "__version__"]


def __getattr__(name: str) -> Any:
    # imported on use: loading a model needs neither Lightning nor Hydra's compose
    if name == "TransferLearningHelper":
        from tlexp.helper import TransferLearningHelper

        return TransferLearningHelper
    raise AttributeError(f"module 'tlexp' has no attribute {name!r}")
