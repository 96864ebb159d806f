"""Building the edited graph: fresh node lists, never the input graph's own Node objects.

``LayerGraph.nodes`` hands out the graph's Node objects; editing their ``inputs`` in place would
change the caller's graph. Every op therefore starts from :func:`copy_nodes` and ends with
:func:`make_graph`, which shares the untouched modules and keeps them frozen as they were.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from tlexp.graph import GraphInput, LayerGraph, Node

__all__ = ["copy_nodes", "make_graph", "rewire"]


def copy_nodes(graph: LayerGraph) -> list[Node]:
    return [replace(n, inputs=list(n.inputs)) for n in graph.nodes]


def make_graph(
    graph: LayerGraph,
    nodes: Sequence[Node],
    outputs: Sequence[str] | None = None,
    inputs: Sequence[GraphInput] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> LayerGraph:
    """A new graph from edited parts of ``graph`` (:meth:`LayerGraph.rebuilt`: meta kept unless
    ``meta`` is given; a node stays frozen only while it holds the same module)."""
    return graph.rebuilt(nodes, outputs, inputs, meta)


def rewire(nodes: Iterable[Node], mapping: Mapping[str, str], skip: Iterable[str] = ()) -> None:
    """Point every input named in ``mapping`` to its replacement (``skip``: nodes left alone)."""
    skip = set(skip)
    for n in nodes:
        if n.name not in skip:
            n.inputs = [mapping.get(i, i) for i in n.inputs]

