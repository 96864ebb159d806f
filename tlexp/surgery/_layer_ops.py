"""Layer ops (DL4J TransferLearning.Builder): remove/add/replace layers, input preprocessors."""

from __future__ import annotations

from typing import Any

from tlexp.errors import choices
from tlexp.graph import GraphInput, LayerGraph
from tlexp.surgery._edit import copy_nodes, make_graph, rewire
from tlexp.surgery._registry import OpContext, register_op

__all__ = ["PREPROCESSORS", "check_new_name"]

#: layer types set_input_preprocessor inserts (DL4J's CnnToFeedForward, FeedForwardToCnn, …)
PREPROCESSORS = ("flatten", "reshape", "permute", "normalize")


def check_new_name(graph: LayerGraph, context: OpContext, name: str, key: str = "name") -> None:
    if not name:
        raise context.error(key, "a node name cannot be empty")
    if name in graph or name in graph.inputs:
        raise context.error(key, f"{name!r} is already a layer or input of the model; choose another name")


def _remove_outputs(graph: LayerGraph, context: OpContext, key: str | None = None) -> LayerGraph:
    """Remove the nodes that produce the outputs; their inputs become the outputs."""
    outs = list(dict.fromkeys(graph.outputs))
    for o in outs:
        if o not in graph:
            raise context.error(key, f"output {o!r} is a graph input, not a layer; there is no output layer to remove")
    removed = set(outs)
    for o in outs:
        users = [c for c in graph.consumers(o) if c not in removed]
        if users:
            raise context.error(key, f"output layer {o!r} also feeds {choices(users)}; "
                                 "use remove_vertex_and_connections or set_outputs instead")
    # the removed layers' inputs become the outputs; graph inputs cannot be outputs
    new_outputs: list[str] = []
    for o in outs:
        for i in graph.node(o).inputs:
            if i in graph and i not in removed and i not in new_outputs:
                new_outputs.append(i)
    if not new_outputs:
        raise context.error(key, f"removing output layer(s) {choices(outs)} would leave only graph inputs "
                             f"({choices(graph.inputs)}); at least one layer must remain")
    nodes = [n for n in copy_nodes(graph) if n.name not in removed]
    return make_graph(graph, nodes, new_outputs)


@register_op("remove_output_layer")
def remove_output_layer(graph: LayerGraph, context: OpContext) -> LayerGraph:
    """Remove the output layer (on a graph: every node producing an output); its inputs become the outputs."""
    return _remove_outputs(graph, context)


@register_op("remove_layers_from_output")
def remove_layers_from_output(graph: LayerGraph, context: OpContext, *, n: int) -> LayerGraph:
    """Remove the last ``n`` layers (remove_output_layer ``n`` times)."""
    if n < 1:
        raise context.error("n", f"{n} layers cannot be removed; valid: 1..{max(len(graph) - 1, 1)}")
    if graph.is_chain and n >= len(graph):
        raise context.error("n", f"{n} is past the end: the model has {len(graph)} layers and at least one must "
                             f"remain; valid: 1..{len(graph) - 1}")
    for _ in range(n):
        graph = _remove_outputs(graph, context, "n")
    return graph


@register_op("add_layer", layer_args=True)
def add_layer(
    graph: LayerGraph, context: OpContext, *, name: str, type: str, after: str | int | None = None,
    inputs: list[str | int] | str | None = None, args: dict[str, Any]
) -> LayerGraph:
    """Add a layer at the output (it becomes the output) or right after the node ``after``.

    Inserted after a node, the new layer takes that node's output and every consumer of that
    node (and the graph outputs naming it) takes the new layer's output instead. With
    ``inputs`` (DL4J's ``addLayer(name, layer, inputs…)``) it takes those; re-adding a name a
    ``remove_vertex_keep_connections`` just removed gives it back that node's consumers and
    output slots (DL4J's ``removeVertexKeepConnections("x").addLayer("x", …, src)``).
    """
    check_new_name(graph, context, name)
    if inputs is not None:
        if after is not None:
            raise context.error("inputs", "give 'after' or 'inputs', not both")
        return _add_with_inputs(graph, context, name, type, inputs, args)
    if after is None:
        if len(graph.outputs) != 1:
            raise context.error("after", f"the model has {len(graph.outputs)} outputs ({choices(graph.outputs)}); "
                                     "name the node to add the layer after")
        src = graph.outputs[0]
    else:
        src = context.resolve(graph, after, "after", allow_inputs=True)
    new = context.new_node(name, [src], type, args, context.input_shapes([src]))
    nodes = copy_nodes(graph)
    if after is None:
        nodes.append(new)
        return make_graph(graph, nodes, [name])
    rewire(nodes, {src: name})
    pos = graph.index(src) + 1 if src in graph else 0
    nodes.insert(pos, new)
    return make_graph(graph, nodes, [name if o == src else o for o in graph.outputs])


def _add_with_inputs(graph: LayerGraph, context: OpContext, name: str, type: str, inputs: Any,
                     args: dict[str, Any]) -> LayerGraph:
    from tlexp.graph import Role, get_layer_type

    refs = [inputs] if isinstance(inputs, (str, int)) else list(inputs)
    if not refs:
        raise context.error("inputs", "name at least one input")
    srcs = [context.resolve(graph, r, f"inputs[{j}]", allow_inputs=True) for j, r in enumerate(refs)]
    lt = get_layer_type(type, f"{context.field}.type")
    if len(srcs) > 1 and lt.role not in (Role.CONCAT, Role.ELEMENTWISE):
        raise context.error("inputs", f"layer {name!r} ({type}) is given {len(srcs)} inputs ({choices(srcs)}) without a "
                                  "merge; DL4J merges them itself, here add a concat vertex first "
                                  "({op: add_vertex, type: concat, inputs: [...]}) and give the layer that")
    new = context.new_node(name, srcs, type, args, context.input_shapes(srcs))
    nodes = copy_nodes(graph)
    nodes.append(new)
    outputs = list(graph.outputs)
    meta = dict(graph.meta)
    kept = dict(meta.get("removed_keep_connections") or {})
    record = kept.pop(name, None)
    if record is not None and srcs == [record["input"]]:
        back = set(record["consumers"])
        for n in nodes:
            if n.name in back:
                n.inputs = [name if i == record["input"] else i for i in n.inputs]
        for i in record["outputs"]:
            if i < len(outputs) and outputs[i] == record["input"]:
                outputs[i] = name
        # consumers come after the re-added layer in topological order
        nodes = [n for n in nodes if n.name != name]
        pos = max([j for j, n in enumerate(nodes) if n.name in srcs] + [-1]) + 1
        nodes.insert(pos, new)
    meta["removed_keep_connections"] = kept
    return make_graph(graph, nodes, outputs, meta=meta)


@register_op("replace_layer", layer_args=True)
def replace_layer(graph: LayerGraph, context: OpContext, *, name: str | int, type: str, args: dict[str, Any]) -> LayerGraph:
    """Replace a node's layer by a new one, keeping the node's name and connections."""
    target = context.resolve(graph, name, "name")
    context.check_unshared(graph, [target], "name", "replace_layer")
    old = graph.node(target)
    nodes = copy_nodes(graph)
    nodes[graph.index(target)] = context.new_node(target, old.inputs, type, args, context.input_shapes(old.inputs))
    return make_graph(graph, nodes)


def _input_shape(context: OpContext, gi: GraphInput, type: str, args: dict[str, Any],
                 input_shape: list[int | None] | None) -> tuple[int | None, ...] | None:
    """The declared shape of the graph input once the preprocessor sits behind it.

    The declared shape is what the data now look like, before the preprocessor. ``normalize``
    keeps it; ``permute`` can derive it from the model's old input shape (the inverse
    permutation); ``flatten`` and ``reshape`` cannot guess it, so it must be given when the old
    shape was declared (the dry run then checks the preprocessor's output against the model).
    """
    if input_shape is not None:
        for d in input_shape:
            if d is not None and d < 1:
                raise context.error("input_shape", f"{input_shape!r} has a size below 1; sizes are positive ints or null")
        return tuple(input_shape)
    if gi.shape is None or type == "normalize":
        return gi.shape
    dims = args.get("dims")
    if type == "permute" and isinstance(dims, (list, tuple)) and sorted(dims) == list(range(len(gi.shape))):
        raw: list[int | None] = [None] * len(dims)
        for k, d in enumerate(dims):
            raw[d] = gi.shape[k]
        return tuple(raw)
    raise context.error("input_shape", f"a {type} preprocessor changes the input's shape; give the shape of the data "
                                   f"input {gi.name!r} now receives (the model takes {list(gi.shape)})")


@register_op("set_input_preprocessor", layer_args=True)
def set_input_preprocessor(
    graph: LayerGraph,
    context: OpContext,
    *,
    type: str,
    input: str | None = None,
    name: str | None = None,
    input_shape: list[int | None] | None = None,
    args: dict[str, Any],
) -> LayerGraph:
    """Insert a preprocessing node (flatten, reshape, permute, normalize) right after a graph input.

    ``input_shape`` is the new declared shape of that input: the shape of the data as they
    arrive, before the preprocessor (e.g. [28, 28] for raw images in front of a flatten).
    """
    if type not in PREPROCESSORS:
        raise context.error("type", f"{type!r} is not an input preprocessor; valid: {choices(PREPROCESSORS)}")
    if input is None:
        if len(graph.inputs) != 1:
            raise context.error("input", f"the model has {len(graph.inputs)} inputs; name one: {choices(graph.inputs)}")
        input = graph.inputs[0]
    elif input not in graph.inputs:
        raise context.error("input", f"no graph input named {input!r}; valid: {choices(graph.inputs)}")
    name = name if name is not None else f"preprocess_{input}"
    check_new_name(graph, context, name)
    k = graph.inputs.index(input)
    gi = graph.graph_inputs[k]
    shape = _input_shape(context, gi, type, args, input_shape)
    known = shape is not None and all(d is not None for d in shape)
    new = context.new_node(name, [input], type, args, [tuple(shape)] if known else None)  # type: ignore[arg-type]
    nodes = copy_nodes(graph)
    rewire(nodes, {input: name})
    nodes.insert(0, new)
    inputs = list(graph.graph_inputs)
    inputs[k] = GraphInput(gi.name, shape, gi.dtype)
    return make_graph(graph, nodes, [name if o == input else o for o in graph.outputs], inputs)
