"""n_out_replace and n_in_replace (DL4J nOutReplace / nInReplace).

Changing a layer's output size changes what every layer after it receives. Like DL4J, the
next parameterized layer is re-initialized with the new input size; parameter-free layers in
between (activation, dropout, pooling, flatten, concat, …) are followed, and layers sized by
their input (batch norm, layer norm, depthwise conv) are resized and followed too. New sizes
are read off the traced shapes, so a dense layer after a flatten gets channels × height ×
width. Every path from the resized layer is followed (all consumers on a graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tlexp.errors import ShapeError, choices
from tlexp.graph import (
    GraphInput,
    LayerGraph,
    LayerType,
    Node,
    Role,
    get_layer_type,
    list_layers,
    rebuild_layer_and_spec,
)
from tlexp.graph._weight_init import WEIGHT_INITS, init_weights
from tlexp.surgery._edit import copy_nodes, make_graph
from tlexp.surgery._registry import OpContext, register_op

__all__ = ["resizable_next", "can_replace_n_out", "can_replace_n_in"]


def _type(node: Node) -> LayerType | None:
    """The registry type of a node, or None for a plain module (not from the registry)."""
    return get_layer_type(node.type) if node.spec is not None else None


def resizable_next() -> list[str]:
    """Layer types a resize can reach and rebuild (they declare ``n_in`` or ``follow``)."""
    return sorted(lt.name for lt in list_layers() if lt.n_in is not None or lt.role is Role.FOLLOW)


def can_replace_n_out() -> list[str]:
    return sorted(lt.name for lt in list_layers() if lt.n_out is not None)


def can_replace_n_in() -> list[str]:
    return sorted(lt.name for lt in list_layers() if lt.role is Role.WEIGHTS and lt.n_in is not None)


def _check_init(context: OpContext, key: str, scheme: str | None) -> None:
    if scheme is not None and scheme not in WEIGHT_INITS:
        raise context.error(key, f"unknown weight init {scheme!r}; valid: {choices(WEIGHT_INITS)}")


def _plan(graph: LayerGraph, target: str, context: OpContext) -> dict[str, str]:
    """What happens to each node after ``target``: pass, follow (resize and go on) or in (resize, stop).

    Raises before anything is built when a node on the way cannot take the new size.
    """
    plan = {target: "out"}
    changed = {target}
    for node in graph.nodes[graph.index(target) + 1:]:
        hit = [i for i in node.inputs if i in changed]
        if not hit:
            continue
        lt = _type(node)
        role = lt.role if lt is not None else Role.FIXED
        if role is Role.ELEMENTWISE:
            others = [i for i in node.inputs if i not in changed]
            if others:
                raise context.error("layer", f"layer {node.name!r} ({node.type}) combines the resized output of {hit[0]!r} "
                                         f"element-wise with {others[0]!r}, whose size stays; it cannot be resized")
            kind = "pass"
        elif role in (Role.PASS, Role.CONCAT):
            kind = "pass"
        elif role is Role.FOLLOW:
            kind = "follow"
        elif role is Role.WEIGHTS and lt is not None and lt.n_in is not None:
            kind = "in"
        else:
            raise context.error("layer", f"layer {node.name!r} ({node.type}) takes the output of {target!r}"
                                     f"{'' if hit[0] == target else f' (through {hit[0]!r})'} and cannot be resized "
                                     f"to fit; resizable next layers: {choices(resizable_next())}")
        plan[node.name] = kind
        if kind != "in":
            changed.add(node.name)
    return plan


class _Tracer:
    """Runs the edited nodes one by one on example inputs, for the shapes the resizes need."""

    def __init__(self, graph: LayerGraph, label: str) -> None:
        self.env: dict[str, Any] = dict(zip(graph.inputs, graph.example_inputs(2)))
        self.label = label

    def shapes(self, names: Sequence[str]) -> list[tuple[int, ...]] | None:
        vals = [self.env[n] for n in names]
        if not all(isinstance(v, torch.Tensor) for v in vals):
            return None
        return [tuple(v.shape[1:]) for v in vals]

    @torch.no_grad()
    def run(self, node: Node) -> None:
        was = node.module.training
        node.module.eval()
        try:
            self.env[node.name] = node.module(*(self.env[i] for i in node.inputs))
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            ins = ", ".join(f"{i} {list(self.env[i].shape[1:])}" for i in node.inputs if isinstance(self.env[i], torch.Tensor))
            msg = str(e).strip().split("\n")[0]
            raise ShapeError(f"{self.label}: layer {node.name!r} ({node.type}) does not accept its input ({ins}): {msg}") from None
        finally:
            node.module.train(was)


def _rebuild(node: Node, context: OpContext, changes: dict[str, Any], scheme: str | None) -> None:
    """Give ``node`` (a copy, never the input graph's own) a fresh layer with ``changes``, marked
    re-initialized."""
    assert node.spec is not None
    module, node.spec = rebuild_layer_and_spec(node.spec, where=f"{context.label}: layer {node.name!r}", **changes)
    node.module, node.reinit, node.weight_init = module, True, scheme
    if scheme is not None:
        init_weights(module, scheme)


def _in_changes(node: Node, context: OpContext, shapes: list[tuple[int, ...]] | None, size: int | None) -> dict[str, Any]:
    """The new input-size argument of ``node``, from its traced input shape (or the known size)."""
    lt = get_layer_type(node.type)
    key = lt.n_in if lt.role is Role.WEIGHTS else lt.follow
    assert key is not None
    old = node.args.get(key)
    if shapes is not None:
        if isinstance(old, list):  # a shape (layer norm's normalized_shape): its trailing axes
            return {key: list(shapes[0][-len(old):])}
        if lt.infer is not None:
            return {key: lt.infer(shapes)[key]}
    if size is None or (isinstance(old, list) and len(old) != 1):
        raise context.error("layer", f"the new input size of {node.name!r} ({node.type}) cannot be worked out without "
                                 "shapes; declare the model's input shape in the source config")
    return {key: [size] if isinstance(old, list) else size}


def _out_size(node: Node, n_out: int) -> int:
    args = node.args
    return get_layer_type(node.type).produced_size(args, n_out)


def _pass_size(node: Node, sizes: dict[str, int | None]) -> int | None:
    ins = [sizes.get(i) for i in node.inputs]
    lt = _type(node)
    if lt is not None and (lt.role is Role.ELEMENTWISE or (lt.role is Role.PASS and lt.keeps_size)):
        return ins[0]
    return None  # flatten, permute, concat: needs the traced shapes


@register_op("n_out_replace")
def n_out_replace(
    graph: LayerGraph,
    context: OpContext,
    *,
    layer: str | int,
    n_out: int,
    weight_init: str | None = None,
    weight_init_next: str | None = None,
) -> LayerGraph:
    """Re-initialize a layer with a new output size and resize the layers that take its output.

    ``weight_init`` applies to the resized layer and (unless ``weight_init_next`` is given) to
    the layers re-initialized after it, as DL4J's nOutReplace(layer, nOut, scheme) does.
    """
    _check_init(context, "weight_init", weight_init)
    _check_init(context, "weight_init_next", weight_init_next)
    target = context.resolve(graph, layer, "layer")
    node = graph.node(target)
    lt = _type(node)
    if lt is None or lt.n_out is None:
        raise context.error("layer", f"layer {target!r} ({node.type}) has no output size to replace; "
                                 f"valid layer types: {choices(can_replace_n_out())}")
    if n_out < 1:
        raise context.error("n_out", f"{n_out} is not a size; valid: a positive int")
    changes: dict[str, Any] = {lt.n_out: n_out}
    if lt.role is Role.FOLLOW:  # sized by its input: n_out is a multiple of it (depthwise conv)
        assert lt.follow is not None
        in_ch = node.args[lt.follow]
        if n_out % in_ch:
            raise context.error("n_out", f"{n_out} is not a multiple of the {in_ch} input channels of "
                                     f"layer {target!r} ({node.type}); valid: {in_ch}, {2 * in_ch}, …")
        changes = {lt.n_out: n_out // in_ch}
    plan = _plan(graph, target, context)
    context.check_unshared(graph, [n for n, kind in plan.items() if kind != "pass"], "layer",
                       f"n_out_replace of {target!r}")
    scheme_next = weight_init_next if weight_init_next is not None else weight_init
    tracer = _Tracer(graph, context.label) if context.shapes is not None else None
    sizes: dict[str, int | None] = {}
    nodes = []
    for n in copy_nodes(graph):
        kind = plan.get(n.name)
        if kind == "out":
            _rebuild(n, context, changes, weight_init)
            sizes[n.name] = _out_size(n, n_out)
        elif kind in ("follow", "in"):
            size = sizes.get(n.inputs[0])
            _rebuild(n, context, _in_changes(n, context, tracer.shapes(n.inputs) if tracer else None, size), scheme_next)
            if kind == "follow":
                follow_type = get_layer_type(n.type)
                args = n.args
                mult = args.get(follow_type.n_out, 1) if follow_type.n_out else 1
                sizes[n.name] = None if size is None else size * mult
        elif kind == "pass":
            sizes[n.name] = _pass_size(n, sizes)
        if tracer is not None:
            tracer.run(n)
        nodes.append(n)
    return make_graph(graph, nodes)


@register_op("n_in_replace")
def n_in_replace(
    graph: LayerGraph, context: OpContext, *, layer: str | int, n_in: int, weight_init: str | None = None
) -> LayerGraph:
    """Re-initialize a layer with a new input size.

    The layer before it must produce that size (the dry run checks). A layer fed by a graph
    input changes what the model takes: that input's declared shape gets the new size on its
    feature axis (the last one for dense and recurrent layers, the channel axis for convs).
    """
    _check_init(context, "weight_init", weight_init)
    target = context.resolve(graph, layer, "layer")
    node = graph.node(target)
    lt = _type(node)
    if lt is None or lt.role is not Role.WEIGHTS or lt.n_in is None:
        raise context.error("layer", f"layer {target!r} ({node.type}) has no input size to replace; "
                                 f"valid layer types: {choices(can_replace_n_in())}")
    if n_in < 1:
        raise context.error("n_in", f"{n_in} is not a size; valid: a positive int")
    context.check_unshared(graph, [target], "layer", "n_in_replace")
    nodes = copy_nodes(graph)
    k = graph.index(target)
    _rebuild(nodes[k], context, {lt.n_in: n_in}, weight_init)
    inputs = list(graph.graph_inputs)
    src = node.inputs[0]
    if src in graph.inputs:
        j = graph.inputs.index(src)
        gi = inputs[j]
        if gi.shape is not None and len(gi.shape) > 0:
            shape = list(gi.shape)
            shape[lt.size_axis] = n_in
            inputs[j] = GraphInput(gi.name, tuple(shape), gi.dtype)
    return make_graph(graph, nodes, inputs=inputs)
