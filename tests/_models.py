"""Small models the graph and surgery tests share."""

from __future__ import annotations

import torch

from tlexp.graph import LayerGraph
from tlexp.sources.spec import build_spec


def conv_chain() -> LayerGraph:
    torch.manual_seed(0)
    return build_spec(
        [
            {"name": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"name": "bn", "type": "batchnorm2d"},
            {"name": "r", "type": "activation", "args": {"name": "relu"}},
            {"name": "p", "type": "max_pool2d", "kernel_size": 2},
            {"name": "f", "type": "flatten"},
            {"name": "fc1", "type": "dense", "out_features": 8, "activation": "relu"},
            {"name": "drop", "type": "dropout", "p": 0.5},
            {"name": "fc2", "type": "dense", "out_features": 3},
        ],
        input_shape=[1, 8, 8],
    )


def skip_graph(outputs: list[str] | None = None, seed: int = 1) -> LayerGraph:
    """Two inputs, two outputs, a skip connection (fa -> r) and input b used again late (hb)."""
    torch.manual_seed(seed)
    return build_spec(
        [
            {"name": "fa", "type": "dense", "out_features": 6, "activation": "relu", "inputs": ["a"]},
            {"name": "fb", "type": "dense", "out_features": 6, "inputs": ["b"]},
            {"name": "s", "type": "add", "inputs": ["fa", "fb"]},
            {"name": "h", "type": "dense", "out_features": 5, "activation": "tanh", "inputs": ["s"]},
            {"name": "hn", "type": "batchnorm1d", "inputs": ["h"]},
            {"name": "r", "type": "concat", "inputs": ["hn", "fa"]},
            {"name": "o1", "type": "dense", "out_features": 2, "inputs": ["r"]},
            {"name": "hb", "type": "concat", "inputs": ["h", "b"]},
            {"name": "o2", "type": "dense", "out_features": 3, "inputs": ["hb"]},
        ],
        inputs=[{"name": "a", "shape": [4]}, {"name": "b", "shape": [3]}],
        outputs=outputs or ["o1", "o2"],
    )
