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
