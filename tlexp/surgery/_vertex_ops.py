"""Graph ops (DL4J TransferLearning.GraphBuilder): vertices with named inputs, the outputs list."""

from __future__ import annotations

from typing import Any

from tlexp.errors import choices
from tlexp.graph import LayerGraph, Node, get_layer_type, list_layers
from tlexp.surgery._edit import copy_nodes, make_graph, rewire
from tlexp.surgery._layer_ops import check_new_name
from tlexp.surgery._registry import OpContext, register_op

__all__ = ["variadic_types"]


def variadic_types() -> list[str]:
    """Merges that still work when one of their inputs is taken away (they declare ``variadic``)."""
    return sorted(lt.name for lt in list_layers() if lt.variadic)


def _variadic(node: Node) -> bool:
    return node.spec is not None and get_layer_type(node.type).variadic


def _refs(value: Any) -> list[Any]:
    return [value] if isinstance(value, (str, int)) else list(value)


@register_op("add_vertex", layer_args=True)
def add_vertex(
    graph: LayerGraph, context: OpContext, *, name: str, type: str, inputs: list[str | int] | str, args: dict[str, Any]
) -> LayerGraph:
    """Add a node taking the named nodes or graph inputs; it becomes an output only through set_outputs."""
    check_new_name(graph, context, name)
    refs = _refs(inputs)
    if not refs:
        raise context.error("inputs", f"a vertex needs at least one input; valid: {choices([*graph.inputs, *graph.node_names])}")
    srcs = [context.resolve(graph, r, f"inputs[{j}]", allow_inputs=True) for j, r in enumerate(refs)]
    new = context.new_node(name, srcs, type, args, context.input_shapes(srcs))
    nodes = copy_nodes(graph)
    nodes.append(new)  # last: every input is already defined
    return make_graph(graph, nodes)


@register_op("remove_vertex_keep_connections")
def remove_vertex_keep_connections(graph: LayerGraph, context: OpContext, *, name: str | int) -> LayerGraph:
    """Remove a node; whatever took its output (consumers, graph outputs) takes its input instead."""
    target = context.resolve(graph, name, "name")
    node = graph.node(target)
    users = graph.consumers(target)
    is_output = target in graph.outputs
    if len(node.inputs) != 1 and (users or is_output):
        taking = choices(users + (["the graph outputs"] if is_output else []))
        raise context.error("name", f"vertex {target!r} has {len(node.inputs)} inputs ({choices(node.inputs)}) and "
                                f"{taking} take one tensor from it; its connections can be kept only when it has "
                                "exactly one input; use remove_vertex_and_connections")
    src = node.inputs[0]
    if is_output and src not in graph:
        raise context.error("name", f"removing {target!r} would make graph input {src!r} an output; "
                                "at least one layer must produce each output")
    nodes = [n for n in copy_nodes(graph) if n.name != target]
    rewire(nodes, {target: src})
    # remembered so that re-adding the name (DL4J's removeVertexKeepConnections("x").addLayer("x",
    # …, src)) gives the new layer back the removed one's consumers and output slots
    meta = dict(graph.meta)
    kept = dict(meta.get("removed_keep_connections") or {})
    kept[target] = {"input": src, "consumers": list(users),
                    "outputs": [i for i, o in enumerate(graph.outputs) if o == target]}
    meta["removed_keep_connections"] = kept
    return make_graph(graph, nodes, [src if o == target else o for o in graph.outputs], meta=meta)


@register_op("add_inputs")
def add_inputs(graph: LayerGraph, context: OpContext, *, inputs: list[str] | str,
               shapes: list[list[int]] | None = None) -> LayerGraph:
    """New graph inputs (DL4J ``addInputs``); ``shapes``: one per-sample shape per input."""
    from tlexp.graph import GraphInput

    names = [inputs] if isinstance(inputs, str) else list(inputs)
    if not names:
        raise context.error("inputs", "name at least one new input")
    if shapes is not None and len(shapes) != len(names):
        raise context.error("shapes", f"{len(shapes)} shapes for {len(names)} inputs; give one per input")
    for n in names:
        check_new_name(graph, context, n, "inputs")
    new = [GraphInput(n, tuple(shapes[i]) if shapes is not None else None) for i, n in enumerate(names)]
    return make_graph(graph, copy_nodes(graph), inputs=[*graph.graph_inputs, *new])


@register_op("remove_vertex_and_connections")
def remove_vertex_and_connections(graph: LayerGraph, context: OpContext, *, name: str | int) -> LayerGraph:
    """Remove a node, its connections and every node left without inputs by that.

    A merge (add, concat, average, …) that loses one of several inputs keeps the others. A
    removed graph output must be replaced by a later set_outputs op; until then the outputs are
    the remaining ones (or, if none remain, the nodes nothing consumes).
    """
    target = context.resolve(graph, name, "name")
    removed = {target}
    nodes = []
    for n in copy_nodes(graph):
        if n.name in removed:
            continue
        kept = [i for i in n.inputs if i not in removed]
        if len(kept) == len(n.inputs):
            nodes.append(n)
        elif not kept:
            removed.add(n.name)  # depended only on removed nodes
        elif _variadic(n):
            n.inputs = kept
            nodes.append(n)
        else:
            lost = next(i for i in n.inputs if i in removed)
            raise context.error("name", f"layer {n.name!r} ({n.type}) takes both {lost!r} and {kept[0]!r}; removing "
                                    f"{target!r} would leave it without an input it needs; remove or replace "
                                    f"{n.name!r} first (inputs can be dropped only from {choices(variadic_types())})")
    if not nodes:
        raise context.error("name", f"removing {target!r} would remove every layer of the model")
    lost_outputs = [o for o in graph.outputs if o in removed]
    outputs = [o for o in graph.outputs if o not in removed]
    if lost_outputs:
        if "set_outputs" not in context.later_ops:
            raise context.error("name", f"removing {target!r} removes graph output(s) {choices(lost_outputs)}; "
                                    "add a set_outputs op after it naming the new outputs")
        if not outputs:
            used = {i for n in nodes for i in n.inputs}
            outputs = [n.name for n in nodes if n.name not in used]
    return make_graph(graph, nodes, outputs)


@register_op("set_outputs")
def set_outputs(graph: LayerGraph, context: OpContext, *, outputs: list[str | int] | str, prune: bool = True) -> LayerGraph:
    """Replace the graph outputs; with ``prune`` (default) drop the nodes no output depends on."""
    refs = _refs(outputs)
    if not refs:
        raise context.error("outputs", f"at least one output is needed; valid: {choices(graph.node_names)}")
    names = [context.resolve(graph, r, f"outputs[{j}]") for j, r in enumerate(refs)]
    nodes = copy_nodes(graph)
    if prune:
        live = graph.ancestors(names)
        nodes = [n for n in nodes if n.name in live]
    return make_graph(graph, nodes, names)
