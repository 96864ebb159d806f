"""Does the output layer fit the loss? (Deeplearning4j's ``validateOutputLayerConfig``.)

Under the classification loss (``cross_entropy``/``nll``) the output must give class scores:
softmax or log-softmax probabilities, or raw logits (no activation). A sigmoid, tanh or relu head
squashes or clips the scores, and a softmax over one unit is always 1: each stops the run before
compute with one line naming the layer and the fix. ``finetune.loss=bce`` takes a single unit for
two classes, a sigmoid probability or a raw logit. ``finetune.validate_output=false`` skips the check.
"""

from __future__ import annotations

from typing import Any

from tlexp.errors import ConfigError
from tlexp.graph import LayerGraph

__all__ = ["output_activation", "check_output"]

#: activations whose outputs are class scores the classification loss reads
SCORE_ACTIVATIONS = (None, "linear", "identity", "softmax", "log_softmax")


def output_activation(graph: LayerGraph) -> tuple[str, str | None]:
    """(node name, activation) of the first output; activation None for none or unknown."""
    name = graph.outputs[0]
    if name not in graph:
        return name, None
    spec = graph.node(name).spec
    if spec is None:
        return name, None
    kind, args = spec.type, spec.args
    act = args.get("name") if kind == "activation" else args.get("activation")
    return name, (str(act).lower() if act else None)


def check_output(graph: LayerGraph, units: int, num_classes: int, loss: str) -> None:
    name, act = output_activation(graph)
    shown = act or "no activation"
    fix = "set finetune.validate_output=false to run it anyway"
    if loss == "bce":
        if num_classes != 2 or units != 1:
            raise ConfigError(
                f"finetune.loss: bce needs one output unit and two classes; the output layer {name!r} has {units} "
                f"unit(s) for {num_classes} classes; use finetune.loss=cross_entropy, or {fix}")
        if act not in (None, "linear", "identity", "sigmoid"):
            raise ConfigError(
                f"finetune.loss: the output layer {name!r} ends in {shown}, which bce cannot read; give it a sigmoid "
                f"(activation: sigmoid) or no activation, or {fix}")
        return
    if units == 1 and num_classes == 2:
        raise ConfigError(
            f"finetune.loss: the output layer {name!r} has one unit ({shown}) for two classes; "
            f"{'a softmax over one unit is always 1; ' if act == 'softmax' else ''}set finetune.loss=bce for a single "
            f"sigmoid unit, or give the layer 2 units with softmax, or {fix}")
    if act == "softmax" and units == 1:
        raise ConfigError(f"finetune.loss: the output layer {name!r} is a softmax over one unit (always 1); "
                          f"give it one unit per class, or {fix}")
    if act not in SCORE_ACTIVATIONS:
        raise ConfigError(
            f"finetune.loss: the output layer {name!r} ends in {shown}, which does not fit {loss} (it needs class "
            f"scores: softmax or no activation); replace the layer (surgery=replace_output, activation: softmax), or {fix}")


def output_units(graph: LayerGraph, shapes: Any) -> int | None:
    out = shapes.get(graph.outputs[0]) if shapes else None
    return int(out[0][-1]) if out and out[0] else None
