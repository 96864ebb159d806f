"""What the fine-tuned result is compared with: the source as loaded, the model before training,
and the same architecture from random weights (``source.init=random``).

``baseline.source`` evaluates the source model, unchanged, on the target test split when its
output size equals the number of classes (its zero-shot score); ``baseline.before_fit`` evaluates
the model after surgery, before any training (the seed book's "Eval stats BEFORE fit").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from tlexp.errors import TlexpError, check

__all__ = ["INITS", "check_init", "source_baseline"]

log = logging.getLogger(__name__)

INITS = ("pretrained", "random")  # tlexp.config.SourceInit (tests/test_compose.py keeps them equal)


def check_init(init: Any) -> str:
    from tlexp.config import SourceInit

    return str(check(init, SourceInit, "source.init").value)


def source_baseline(source_cfg: Mapping[str, Any], data: Any, device: torch.device) -> tuple[dict[str, Any] | None, str]:
    """The source model as loaded (pretrained weights, no surgery) on the test split.

    Returns (metrics, "") or (None, why it is not defined).
    """
    from tlexp.assemble import _with_input_shape
    from tlexp.module import evaluate
    from tlexp.sources import load_source

    cfg = dict(source_cfg)
    if cfg.get("type") == "spec" or (cfg.get("type") == "dl4j_zoo" and cfg.get("init") != "pretrained"):
        return None, "the source has no trained weights"
    if cfg.get("type") != "dl4j_zoo":
        cfg.pop("init", None)  # the source as loaded: its own weights, whatever source.init says
    try:
        graph = _with_input_shape(load_source(cfg), data)
        if any(g.shape is None for g in graph.graph_inputs):
            return None, "the source's input shape is unknown"
        out = graph.trace_shapes(where="model")[graph.outputs[0]][0]
    except TlexpError as e:
        return None, f"the source does not take this data ({e})"
    if tuple(out[-1:]) != (data.num_classes,):
        return None, f"the source has {out[-1] if out else '?'} outputs, the data {data.num_classes} classes"
    graph.eval()
    result = evaluate(graph, data.test_dataloader(), data.num_classes, device)
    graph.cpu()
    return result, ""
