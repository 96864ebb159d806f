"""Which part of a model stays frozen: ``freeze.up_to`` resolved to a cut.

On a chain (a sequential network) ``up_to: k`` freezes layers 0..k inclusive, by index or name.
On a graph, the named node(s) and all their ancestors are frozen, never their descendants
(Deeplearning4j's GraphBuilder ``setFeatureExtractor`` semantics).
"""

from __future__ import annotations

from collections.abc import Sequence

from tlexp.errors import check
from tlexp.graph import LayerGraph

__all__ = ["resolve_cut", "freeze", "MODES"]

MODES = ("featurize", "in_model")


def resolve_cut(graph: LayerGraph, up_to: str | int | Sequence[str | int] | None, field: str = "freeze.up_to") -> set[str]:
    """The frozen node names for ``up_to`` (empty when it is None; ``saved``: the layers the
    model file records as frozen, as when continuing a saved run)."""
    if up_to is None:
        return set()
    if up_to == "saved" and "saved" not in graph:
        return set(graph.frozen)
    refs = list(up_to) if isinstance(up_to, (list, tuple)) else [up_to]
    if not refs:
        return set()
    names = [graph.resolve(r, field) for r in refs]
    if graph.is_chain and len(names) == 1:
        k = graph.index(names[0])
        return set(graph.node_names[: k + 1])
    return graph.ancestors(names)


def freeze(graph: LayerGraph, up_to: str | int | Sequence[str | int] | None, mode: str = "featurize") -> set[str]:
    """Freeze the cut for ``up_to`` in place and return it."""
    from tlexp.config import FreezeMode

    check(mode, FreezeMode, "freeze.mode")
    cut = resolve_cut(graph, up_to)
    graph.set_frozen(cut)
    return cut
