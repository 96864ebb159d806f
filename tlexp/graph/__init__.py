"""The model representation every source produces and every op transforms.

Layer types are registered with their capabilities (:class:`Role`, sizes, what fine-tuning may
override): see :mod:`tlexp.graph._registry` for the contract. Sources bring their own layer
types as providers, imported when first needed.
"""

from tlexp.graph import _layers  # noqa: F401  (registers the built-in layer types)
from tlexp.graph._activations import ACTIVATIONS, KERAS_LEAKY_SLOPE, TORCH_LEAKY_SLOPE, make_activation
from tlexp.graph._graph import CONFIG_FORMAT, GraphInput, LayerGraph, Node, SummaryRow
from tlexp.graph._registry import (
    LayerSpec,
    LayerType,
    Role,
    build_layer,
    build_layer_and_spec,
    built_spec,
    get_layer_type,
    layer_names,
    list_layers,
    rebuild_layer_and_spec,
    register_layer,
    register_provider,
)

__all__ = [
    "ACTIVATIONS",
    "CONFIG_FORMAT",
    "KERAS_LEAKY_SLOPE",
    "TORCH_LEAKY_SLOPE",
    "GraphInput",
    "LayerGraph",
    "LayerSpec",
    "LayerType",
    "Node",
    "Role",
    "SummaryRow",
    "build_layer",
    "build_layer_and_spec",
    "built_spec",
    "get_layer_type",
    "layer_names",
    "list_layers",
    "make_activation",
    "rebuild_layer_and_spec",
    "register_layer",
    "register_provider",
]
