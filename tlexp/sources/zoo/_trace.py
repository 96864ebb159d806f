"""A timm model as a LayerGraph at block granularity, by ``torch.fx``.

The model is traced with timm's own no-trace registry (its leaf modules and wrapped
functions) and with every *block* as a leaf: the tracer goes through the model itself, through
containers (``layer1``, ``stages``, ``blocks``, ``features``), through stages (a module holding a
container of blocks, such as a ConvNeXt or CSP stage) and through the modules that hold the
classifier (``head``), so that each block, each stem and head part, and the classifier are nodes.

Every traced call of a module becomes a ``timm_module`` node (the classifier, a linear layer,
becomes a registry ``dense`` node so surgery can edit it). An operation between modules whose
result is a per-sample tensor becomes an ``add``/``concat``/``tensor_op`` node; anything else
(shapes, split tuples, parameters such as a class token, a resampled position embedding) is
folded into the expression of the node that uses it, so every tensor that can cross a cut has
the batch as its first axis. ``nn.Identity`` modules are dropped.

The result is checked: on an example batch the graph's output must equal the model's exactly,
or the next coarser granularity is tried (top-level children, then the whole model as one node).
"""

from __future__ import annotations

import builtins
import copy
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn

from tlexp.errors import TlexpError
from tlexp.graph import GraphInput, LayerGraph, LayerSpec, Node, build_layer
from tlexp.sources.zoo._layers import ATTRIBUTES, METHODS, TimmCall, function_name, is_computed_buffer

__all__ = ["to_graph", "classifier_path", "LEVELS", "Unsupported", "BadInput"]

log = logging.getLogger(__name__)

#: granularities tried in order
LEVELS = ("block", "top", "model")
INPUT = "input"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_BATCH = 2


class Unsupported(Exception):
    """The model cannot be expressed at this granularity (tried at a coarser one)."""


class BadInput(Exception):
    """The model itself does not run on an example of the input shape."""


def _builtin(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn")


def _is_stage(m: nn.Module) -> bool:
    """A module that holds a container of blocks (non-builtin modules), not a block itself."""
    return any(
        isinstance(c, _CONTAINERS) and any(not _builtin(g) for g in c.children()) for c in m.children()
    )


def classifier_path(model: nn.Module) -> str | None:
    get = getattr(model, "get_classifier", None)
    cls = get() if callable(get) else None
    if not isinstance(cls, nn.Module):
        return None
    for name, m in model.named_modules():
        if m is cls and name:
            return name
    return None


def _traced_through(model: nn.Module, level: str) -> set[str]:
    """Module paths the tracer enters; every other module called is a leaf (a node)."""
    paths = {""}
    if level == "block":
        for name, m in model.named_modules():
            if name and (isinstance(m, _CONTAINERS) or _is_stage(m)):
                paths.add(name)
    cls = classifier_path(model)
    if cls:
        parts = cls.split(".")
        paths.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return paths


class _Tracer(fx.Tracer):
    def __init__(self, enter: set[str]) -> None:
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._enter = enter
        self._leaf_types = tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name not in self._enter or isinstance(m, self._leaf_types)


class _Record(fx.Interpreter):
    """Runs the traced graph and notes, per node, whether its value is a per-sample tensor."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.batched: dict[fx.Node, bool] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.batched[n] = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == _BATCH
        return value


def _trace(model: nn.Module, level: str) -> fx.GraphModule:
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    concrete = {}
    for p in params:
        if p.default is inspect.Parameter.empty:
            raise Unsupported(f"forward argument {p.name!r} has no default")
        concrete[p.name] = p.default
    try:
        graph = _Tracer(_traced_through(model, level)).trace(model, concrete_args=concrete or None)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, assertion, ...)
        raise Unsupported(f"torch.fx cannot trace it: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return fx.GraphModule(model, graph)


def _reachable(output: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [output]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


class _Builder:
    """Turns a traced graph (with per-node batch facts) into LayerGraph nodes."""

    def __init__(self, gm: fx.GraphModule, batched: Mapping[fx.Node, bool], origin: dict[str, Any],
                 classifier: str | None) -> None:
        self.gm, self.origin, self.classifier = gm, origin, classifier
        self.nodes: list[Node] = []
        self.names: dict[fx.Node, str] = {}  # fx node -> LayerGraph node or input name
        self.holders: dict[str, str] = {}  # get_attr target -> node holding it
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.names[placeholders[0]] = INPUT
        depends = {placeholders[0]}
        for n in gm.graph.nodes:
            if any(i in depends for i in n.all_input_nodes):
                depends.add(n)
        self.is_node = {
            n: n.op == "call_module" or (n.op in ("call_function", "call_method") and batched.get(n, False) and n in depends)
            for n in gm.graph.nodes
        }

    # ---- expressions -------------------------------------------------------------------------

    def _encode(self, a: Any, parts: dict[str, Any]) -> Any:
        if isinstance(a, fx.Node):
            if a in self.names:
                if self.names[a] not in parts["inputs"]:
                    parts["inputs"].append(self.names[a])
                return {"input": parts["inputs"].index(self.names[a])}
            if a.op == "get_attr" and parts.get("call"):
                return {"tensor": self._call_buffer(a, parts)}
            if a.op == "get_attr":
                return {"tensor": self._hold(a, parts)}
            if a.op == "placeholder" and a.args:
                return self._encode(a.args[0], parts)  # a forward argument fixed to its default
            if a.op in ("call_function", "call_method") and not self.is_node[a]:
                return self._expr(a, parts)
            raise Unsupported(f"value {a.name!r} ({a.op}) cannot be passed between nodes")
        if isinstance(a, bool) or a is None or isinstance(a, (int, float, str)):
            return a
        if isinstance(a, torch.dtype):
            return {"dtype": str(a).removeprefix("torch.")}
        if isinstance(a, tuple):
            return {"tuple": [self._encode(x, parts) for x in a]}
        if isinstance(a, list):
            return [self._encode(x, parts) for x in a]
        if isinstance(a, slice):
            return {"slice": [self._encode(x, parts) for x in (a.start, a.stop, a.step)]}
        if a is Ellipsis:
            return {"ellipsis": True}
        if isinstance(a, dict):
            return {"dict": {str(k): self._encode(v, parts) for k, v in a.items()}}
        raise Unsupported(f"argument {a!r} of type {type(a).__name__} cannot be saved")

    def _hold(self, n: fx.Node, parts: dict[str, Any]) -> str:
        target = str(n.target)
        owner = self.holders.setdefault(target, parts["name"])
        if owner != parts["name"]:
            raise Unsupported(f"tensor {target!r} is used by two operations ({owner}, {parts['name']})")
        name = "t_" + target.replace(".", "_")
        parts["tensors"][name] = _fetch(self.gm, target)
        if target not in parts["targets"]:
            parts["targets"].append(target)
        return name

    def _call_buffer(self, n: fx.Node, parts: dict[str, Any]) -> str:
        target = str(n.target)
        if not is_computed_buffer(self.gm, target):
            raise Unsupported(f"module {parts['name']!r} takes {target!r}, a tensor the model's weights hold")
        parts["buffers"][target] = self.gm.get_buffer(target)
        return target

    def _expr(self, n: fx.Node, parts: dict[str, Any]) -> dict[str, Any]:
        args = [self._encode(a, parts) for a in n.args]
        kwargs = {k: self._encode(v, parts) for k, v in n.kwargs.items()}
        if n.op == "call_method":
            if n.target not in METHODS:
                raise Unsupported(f"tensor method {n.target!r} is not in the allowed set")
            return {"method": n.target, "args": args, "kwargs": kwargs}
        if n.target is builtins.getattr:
            if len(n.args) != 2 or n.args[1] not in ATTRIBUTES or kwargs:
                raise Unsupported(f"attribute {n.args[1:]!r} is not in the allowed set")
            return {"attr": n.args[1], "of": args[0]}
        fname = function_name(n.target)
        if fname is None:
            raise Unsupported(f"function {getattr(n.target, '__name__', n.target)!r} is not in the allowed set")
        return {"call": fname, "args": args, "kwargs": kwargs}

    # ---- nodes ---------------------------------------------------------------------------------

    def _unique(self, name: str) -> str:
        taken = {INPUT, *(nd.name for nd in self.nodes)}
        out, i = name, 1
        while out in taken:
            out, i = f"{name}_{i}", i + 1
        return out

    def add_module(self, n: fx.Node) -> None:
        path = str(n.target)
        call = None
        if n.kwargs or not all(isinstance(a, fx.Node) and a in self.names for a in n.args):
            # called with constants or values derived from earlier nodes besides its inputs
            parts: dict[str, Any] = {"name": path, "inputs": [], "tensors": {}, "targets": [], "call": True, "buffers": {}}
            call = {"args": [self._encode(a, parts) for a in n.args], "kwargs": {k: self._encode(v, parts) for k, v in n.kwargs.items()}}
            if parts["tensors"] or not parts["inputs"]:
                raise Unsupported(f"module {path!r} takes a parameter of its parent, or no earlier node")
            inputs = list(parts["inputs"])
            buffers = dict(parts["buffers"])
        else:
            inputs = [self.names[a] for a in n.args]
        module = self.gm.get_submodule(path)
        if type(module) is nn.Identity and len(inputs) == 1 and call is None:
            self.names[n] = inputs[0]  # a no-op: its users read its input
            return
        if any(nd.module is module for nd in self.nodes):
            if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
                raise Unsupported(f"module {path!r} is called twice with the same weights")
            module = copy.deepcopy(module)  # a stateless module (an activation) used twice
        if isinstance(getattr(module, "inplace", None), bool):
            # a node's input may be a cut's boundary tensor, made under inference mode (featurize)
            # or stored; the same values computed out of place leave it untouched
            module.inplace = False
        spec = None  # the dense classifier's comes from build_layer
        if path == self.classifier and isinstance(module, nn.Linear) and call is None:
            module = _as_dense(module)
        elif call is None:
            spec = LayerSpec("timm_module", {**self.origin, "path": path})
        else:
            module = TimmCall(module, call, buffers)
            spec = LayerSpec("timm_module", {**self.origin, "path": path, "call": call})
        self.names[n] = self._unique(path)
        self.nodes.append(Node(self.names[n], module, inputs, spec=spec))

    def add_dropout(self, n: fx.Node) -> bool:
        """``F.dropout(x, p, training=self.training)`` as a dropout layer, which follows the node's mode."""
        if n.op != "call_function" or n.target is not torch.nn.functional.dropout:
            return False
        bound = inspect.signature(torch.nn.functional.dropout).bind(*n.args, **n.kwargs)
        x, p = bound.arguments.get("input"), bound.arguments.get("p", 0.5)
        if not (isinstance(x, fx.Node) and x in self.names and isinstance(p, (int, float)) and not isinstance(p, bool)):
            return False
        if not 0 <= p < 1 or bound.arguments.get("inplace", False):
            return False
        if p == 0:
            self.names[n] = self.names[x]
            return True
        # timm writes training=self.training: the value traced is the eval mode's, the layer's mode decides
        self.names[n] = self._unique(n.name)
        self.nodes.append(Node(self.names[n], build_layer("dropout", {"p": float(p)}), [self.names[x]]))
        return True

    def add_op(self, n: fx.Node) -> None:
        if self.add_dropout(n):
            return
        parts: dict[str, Any] = {"name": n.name, "inputs": [], "tensors": {}, "targets": []}
        expr = self._expr(n, parts)
        if not parts["inputs"]:
            raise Unsupported(f"operation {n.name!r} reads no earlier node")
        # an operation holding one tensor is named after it (cls_token, pos_embed), else as fx names it
        name = self._unique(parts["targets"][0] if len(parts["targets"]) == 1 else n.name)
        self.names[n] = name
        self.nodes.append(Node(name, _op_module(expr, parts), list(parts["inputs"])))

    def build(self, input_shape: Sequence[int]) -> LayerGraph:
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        live = _reachable(output)
        for n in self.gm.graph.nodes:
            if n not in live or n.op in ("placeholder", "get_attr", "output") or not self.is_node[n]:
                continue
            if n.op == "call_module":
                self.add_module(n)
            else:
                self.add_op(n)
        result = output.args[0]
        outs = list(result) if isinstance(result, (tuple, list)) else [result]
        if not all(isinstance(o, fx.Node) and o in self.names for o in outs):
            raise Unsupported("the model's output is not a tensor (or tuple of tensors) from a node")
        if not self.nodes:
            raise Unsupported("no nodes")
        return LayerGraph([GraphInput(INPUT, tuple(input_shape))], self.nodes, [self.names[o] for o in outs])


def _fetch(gm: fx.GraphModule, target: str) -> dict[str, Any]:
    *path, attr = target.split(".")
    owner = gm.get_submodule(".".join(path))
    value = getattr(owner, attr)
    if not isinstance(value, torch.Tensor):
        raise Unsupported(f"attribute {target!r} is not a tensor")
    return {"value": value, "param": isinstance(value, nn.Parameter)}


def _op_module(expr: dict[str, Any], parts: dict[str, Any]) -> nn.Module:
    n_in = len(parts["inputs"])
    plain = [{"input": i} for i in range(n_in)]
    if not parts["tensors"] and n_in >= 2 and not expr.get("kwargs"):
        # the registry's own merge layers where they are the same operation
        if expr.get("call") in ("add", "torch_add") and expr["args"] == plain:
            return build_layer("add")
    if not parts["tensors"] and n_in >= 2 and expr.get("call") == "torch_cat":
        args, kwargs = expr["args"], expr.get("kwargs") or {}
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if args[0] == plain and isinstance(dim, int) and set(kwargs) <= {"dim"} and len(args) <= 2:
            return build_layer("concat", {"dim": dim})
    specs = {
        k: {"shape": list(v["value"].shape), "dtype": str(v["value"].dtype).removeprefix("torch."), "param": v["param"]}
        for k, v in parts["tensors"].items()
    }
    module = build_layer("tensor_op", {"expr": expr, "tensors": specs or None})
    with torch.no_grad():
        for k, v in parts["tensors"].items():
            getattr(module, k).copy_(v["value"])
            if v["param"]:
                getattr(module, k).requires_grad_(v["value"].requires_grad)
    return module


def _as_dense(linear: nn.Linear) -> nn.Module:
    dense = build_layer(
        "dense", {"in_features": linear.in_features, "out_features": linear.out_features, "bias": linear.bias is not None}
    )
    dense.load_state_dict(linear.state_dict())
    return dense.train(linear.training)


def _whole(model: nn.Module, origin: dict[str, Any], input_shape: Sequence[int]) -> LayerGraph:
    spec = LayerSpec("timm_module", {**origin, "path": ""})
    return LayerGraph([GraphInput(INPUT, tuple(input_shape))], [Node("model", model, [INPUT], spec=spec)], ["model"])


def _as_tuple(y: Any) -> tuple[Any, ...]:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _same(a: Any, b: Any) -> bool:
    ta, tb = _as_tuple(a), _as_tuple(b)
    return len(ta) == len(tb) and all(
        isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)
        for x, y in zip(ta, tb)
    )


def _at_level(model: nn.Module, level: str, origin: dict[str, Any], input_shape: Sequence[int],
              x: torch.Tensor, expected: Any) -> LayerGraph:
    gm = _trace(model, level)
    rec = _Record(gm)
    with torch.no_grad():
        traced = _run(rec.run, x, "the traced graph")
    if not _same(traced, expected):
        raise Unsupported("the traced graph's output differs from the model's")
    try:
        graph = _Builder(gm, rec.batched, origin, classifier_path(model)).build(input_shape)
    except TlexpError as e:  # a node the registry refuses (an argument it cannot check)
        raise Unsupported(str(e)) from None
    graph.eval()
    with torch.no_grad():
        if not _same(_run(graph, x, "the node graph"), expected):
            raise Unsupported("the node graph's output differs from the model's")
    return graph


def _run(fn: Any, x: torch.Tensor, what: str) -> Any:
    # the model itself ran on x: a failure here is the trace's (shapes baked in, lists mutated)
    try:
        return fn(x)
    except Exception as e:
        raise Unsupported(f"{what} fails on the example input: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


def to_graph(model: nn.Module, origin: dict[str, Any], input_shape: Sequence[int],
             levels: Sequence[str] = LEVELS) -> tuple[LayerGraph, str]:
    """The finest granularity in ``levels`` at which the graph reproduces ``model`` exactly.

    ``origin`` is the ``timm_module`` spec (``model``, ``kwargs``) the nodes save. ``model`` must
    be in eval mode; its submodules become the nodes (shared, not copied).
    """
    x = torch.rand((_BATCH, *input_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = model(x)
    except Exception as e:  # whatever the model raises on a wrong size
        raise BadInput((str(e).strip().splitlines() or [type(e).__name__])[0]) from None
    reasons = []
    for level in levels:
        try:
            if level == "model":
                graph = _whole(model, origin, input_shape)
            else:
                graph = _at_level(model, level, origin, input_shape, x, expected)
        except Unsupported as e:
            reasons.append(f"{level}: {e}")
            continue
        if reasons:
            log.warning("%s split at %r granularity only (%s)", origin.get("model"), level, "; ".join(reasons))
        return graph, level
    raise Unsupported("; ".join(reasons))

