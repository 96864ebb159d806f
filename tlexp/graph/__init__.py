"""The model representation every source produces and every op transforms."""

from tlexp.graph import _layers  # noqa: F401  (registers the built-in layer types)
from tlexp.graph import _layers_timm  # noqa: F401  (timm_module, tensor_op: zoo nodes)
from tlexp.graph import _layers_keras  # noqa: F401  (registers the layer types Keras imports need)
from tlexp.graph._graph import CONFIG_FORMAT, GraphInput, LayerGraph, Node, SummaryRow
from tlexp.graph._layers import ACTIVATIONS, HAS_WEIGHTS, make_activation
from tlexp.graph._registry import (
    LayerType,
    build_layer,
    get_layer_type,
    layer_spec,
    list_layers,
    rebuild_layer,
    register_layer,
    set_spec,
)

__all__ = [
    "ACTIVATIONS",
    "CONFIG_FORMAT",
    "HAS_WEIGHTS",
    "GraphInput",
    "LayerGraph",
    "LayerType",
    "Node",
    "SummaryRow",
    "build_layer",
    "get_layer_type",
    "layer_spec",
    "list_layers",
    "make_activation",
    "rebuild_layer",
    "register_layer",
    "set_spec",
]
