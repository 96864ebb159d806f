"""Fine-tune overrides applied to the graph: dropout, activation, init of new layers.

Scope of ``dropout`` / ``activation``: the unfrozen nodes, minus the output head unless
``apply_to_output``. The output head is each graph output plus, walking back through
parameter-free single-input nodes (a softmax activation, a flatten, a dropout), the first
layer with parameters: for ``dense -> activation(softmax)`` both are the output layer, so
the classifier's logits are never passed through a hidden-layer activation.

Within the scope:
- ``dropout`` sets ``p`` of dropout nodes and the input dropout of dense/conv layers
  (Deeplearning4j's dropOut), except a layer fed directly by a dropout node that gets the
  override itself, so dropout is never stacked twice. 0 removes dropout.
- ``activation`` replaces the function of activation nodes and of dense/conv layers that have
  a nonlinearity. Layers without one (``identity``/``linear``) stay linear, so a Keras-style
  ``conv -> batchnorm -> activation`` block keeps its shape of computation.

Each changed layer gets the same sub-modules that building it from the changed spec would give
(built on the meta device, so no memory and no random numbers are used), and the spec is
updated too, so a saved model keeps the override. Weights are untouched.

Init of new layers: the nodes surgery marked new or re-initialized (``Node.reinit``). With ``seed`` or
``weight_init`` set, each first gets its layer's own init (torch's ``reset_parameters``),
then ``weight_init`` replaces the weights (parameters with >= 2 dimensions) and ``bias_init``
fills the biases. With ``seed`` this runs inside ``torch.random.fork_rng`` seeded with it:
the result depends only on the seed and the new layers, and the global random stream is left
as it was. Without ``seed`` the global stream is used, like any torch init.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from tlexp.finetune._params import check_group_patterns, is_weight
from tlexp.finetune._settings import Settings, parse
from tlexp.graph import LayerGraph, Node, build_layer_and_spec, get_layer_type
from tlexp.graph._weight_init import WEIGHT_INITS

__all__ = ["apply_graph_overrides", "output_head", "reinit_nodes"]

_LINEAR = ("identity", "linear")


def apply_graph_overrides(graph: LayerGraph, cfg: Any) -> None:
    """Apply the dropout/activation overrides and init the new layers of ``graph`` in place.

    Also checks that every ``finetune.groups`` pattern names a layer of ``graph``; call it on
    the whole model (before it is split) so a typo fails before featurization.
    """
    s = parse(cfg)
    check_group_patterns(graph, s)
    if s.dropout is not None or s.activation is not None:
        _override_layers(graph, s)
    if s.seed is not None or s.weight_init is not None or s.bias_init is not None:
        _init_new_layers(graph, s)


# ---- dropout / activation ----------------------------------------------------------------------


def output_head(graph: LayerGraph) -> set[str]:
    """The output nodes and, behind parameter-free single-input nodes, the layer feeding them."""
    head: set[str] = set()
    for name in graph.outputs:
        while True:
            head.add(name)
            node = graph.node(name)
            if _has_params(node.module) or len(node.inputs) != 1 or node.inputs[0] not in graph:
                break
            name = node.inputs[0]
    return head


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _override_layers(graph: LayerGraph, s: Settings) -> None:
    head = set() if s.apply_to_output else output_head(graph)
    scope = [n for n in graph.nodes if n.name not in graph.frozen and n.name not in head]
    names = {n.name for n in scope}
    dropout_set = False
    for node in scope:
        spec = node.spec
        # a plain module has no spec to keep an override in; a shared layer's module is changed
        # (or not) at its first use, for every use
        if spec is None or graph.shares(node.name):
            continue
        changes = _changes(graph, node, spec.type, spec.args, s, names)
        dropout_set = dropout_set or "dropout" in changes or "p" in changes
        if changes:
            _respec(node, spec.type, {**spec.args, **changes})
    for node in graph.nodes:
        owner = graph.shares(node.name)
        if owner is not None:
            node.spec = graph.node(owner).spec
    if s.dropout is not None and not dropout_set:
        from tlexp.errors import warn

        warn(
            f"finetune.dropout: the override (drop probability {s.dropout:g}) changes no layer: no unfrozen layer "
            "takes dropout (frozen layers and the output layer are left alone; finetune.apply_to_output=true "
            "includes the output layer)"
        )


def _changes(
    graph: LayerGraph, node: Node, t: str, args: dict[str, Any], s: Settings, scope: set[str]
) -> dict[str, Any]:
    """What the overrides change in one layer, read off its type's declared capabilities."""
    lt = get_layer_type(t)
    changes: dict[str, Any] = {}
    if s.dropout is not None:
        if lt.is_dropout:
            changes["p"] = s.dropout
        elif lt.takes_dropout and not _fed_by_dropout(graph, node, scope):
            changes["dropout"] = s.dropout
    if s.activation is not None:
        if lt.is_activation:
            changes["name"] = s.activation
        elif lt.takes_activation and args.get("activation", "identity") not in _LINEAR:
            changes["activation"] = s.activation
    return changes


def _fed_by_dropout(graph: LayerGraph, node: Node, scope: set[str]) -> bool:
    return any(
        i in scope and graph.node(i).spec is not None and get_layer_type(graph.node(i).type).is_dropout
        for i in node.inputs
    )


def _respec(node: Node, type_name: str, args: dict[str, Any]) -> None:
    """Change the node's module and its spec (the graph's own node: a saved model keeps it)."""
    with torch.device("meta"):
        fresh, spec = build_layer_and_spec(type_name, args, where=f"finetune override of {node.name!r}")
    _transplant(fresh, node.module)
    node.spec = spec


def _transplant(src: nn.Module, dst: nn.Module) -> None:
    """Give ``dst`` the settings and tensor-free sub-modules of ``src``; keep its tensors."""
    for key, value in vars(src).items():
        if key.startswith("_") or key == "training" or isinstance(value, torch.Tensor):
            continue
        setattr(dst, key, value)
    for name, child in src.named_children():
        if _has_tensors(child):
            _transplant(child, getattr(dst, name))
        else:
            setattr(dst, name, child.train(dst.training))


def _has_tensors(module: nn.Module) -> bool:
    return _has_params(module) or next(module.buffers(), None) is not None


# ---- init of new layers ------------------------------------------------------------------------


def reinit_nodes(graph: LayerGraph) -> list[Node]:
    """The nodes marked new or re-initialized (``Node.reinit``), in node order, each module once."""
    out: list[Node] = []
    seen: set[int] = set()
    for node in graph.nodes:
        if node.reinit and id(node.module) not in seen:
            seen.add(id(node.module))
            out.append(node)
    return out


def _init_new_layers(graph: LayerGraph, s: Settings) -> None:
    nodes = reinit_nodes(graph)
    if not nodes:
        return
    params = [p for n in nodes for p in n.module.parameters()]
    with _seeded(s.seed, params), torch.no_grad():
        for n in nodes:
            _init_module(n.module, n.weight_init, s)


@contextlib.contextmanager
def _seeded(seed: int | None, params: Sequence[torch.Tensor]) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)
        yield


def _init_module(module: nn.Module, op_scheme: str | None, s: Settings) -> None:
    # a scheme named by the surgery op itself (n_out_replace weight_init=…) beats the config's
    scheme = op_scheme or s.weight_init
    if s.seed is not None or scheme is not None:
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    for name, p in module.named_parameters():
        if scheme not in (None, "default") and is_weight(p):
            WEIGHT_INITS[scheme](p)  # type: ignore[misc]
        elif s.bias_init is not None and name.rsplit(".", 1)[-1].startswith("bias"):
            p.fill_(s.bias_init)
