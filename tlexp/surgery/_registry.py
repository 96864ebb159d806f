"""The op registry and the loop that applies a list of ops to a LayerGraph.

An op is a function ``fn(graph, context, **args) -> LayerGraph`` registered under a name. Its
keyword-only parameters are its config keys: their names and type hints are checked before the
op runs, so an unknown key or a wrong type is one line naming ``surgery.ops[i].<key>``. Ops that
build a layer (``layer_args=True``) take the layer's arguments inline or under ``args``, as
``source=spec`` does, and receive them as ``args``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tlexp.errors import ConfigError, choices, fits, hint_name
from tlexp.graph import LayerGraph, Node, build_layer_and_spec, get_layer_type

__all__ = ["OpSpec", "OpContext", "register_op", "list_ops", "get_op", "apply_ops"]

Shape = tuple[int, ...]
OpFn = Callable[..., LayerGraph]

#: keys every op entry may carry besides its own arguments
_COMMON = {"op"}


@dataclass(frozen=True)
class OpSpec:
    """One registered op: its function, its config keys and whether it builds a layer."""

    name: str
    fn: OpFn
    params: dict[str, inspect.Parameter]
    hints: dict[str, Any]
    layer_args: bool = False
    doc: str = ""

    def required(self) -> list[str]:
        return [n for n, p in self.params.items() if p.default is inspect.Parameter.empty and n != "args"]

    def keys(self) -> list[str]:
        return [n for n in self.params if not (self.layer_args and n == "args")]


_OPS: dict[str, OpSpec] = {}


def register_op(name: str, *, layer_args: bool = False) -> Callable[[OpFn], OpFn]:
    """Register ``fn(graph, context, *, key=...)`` as the surgery op ``name``.

    With ``layer_args=True`` keys that are not the op's own go to the layer being built and the
    function receives them (merged with an ``args`` mapping) as ``args``.
    """

    def deco(fn: OpFn) -> OpFn:
        sig = inspect.signature(fn)
        params = {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if name in _OPS:
            raise RuntimeError(f"surgery op {name!r} registered twice")
        _OPS[name] = OpSpec(
            name=name,
            fn=fn,
            params=params,
            hints=typing.get_type_hints(fn),
            layer_args=layer_args,
            doc=(inspect.getdoc(fn) or "").split("\n")[0],
        )
        return fn

    return deco


def list_ops() -> list[str]:
    """Every registered op name, sorted."""
    return sorted(_OPS)


def get_op(name: str, field_name: str = "op") -> OpSpec:
    try:
        return _OPS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"{field_name}: unknown op {name!r}; valid: {choices(list_ops())}") from None


# ---- the context an op runs in -------------------------------------------------------------


@dataclass
class OpContext:
    """What an op knows besides its arguments: where it sits in the list, the traced shapes."""

    field: str
    op: str
    label: str
    #: per-sample output shapes of every input and node of the graph before the op; None when
    #: the graph's inputs have no declared shapes
    shapes: dict[str, tuple[Shape, ...]] | None
    #: the names of the ops that follow this one, in order
    later_ops: tuple[str, ...] = ()
    #: where each layer argument came from ("args.x" or "x"), for error messages
    arg_fields: dict[str, str] = dataclasses.field(default_factory=dict)

    def error(self, key: str | None, message: str) -> ConfigError:
        where = self.field if key is None else f"{self.field}.{key}"
        return ConfigError(f"{where}: {message}")

    def resolve(self, graph: LayerGraph, ref: Any, key: str, allow_inputs: bool = False) -> str:
        """A node name from a name or index; graph inputs too when ``allow_inputs``."""
        if allow_inputs and isinstance(ref, str):
            if ref in graph.inputs:
                return ref
            if ref not in graph and not ref.lstrip("-").isdigit():
                raise self.error(key, f"no layer or input named {ref!r}; valid: "
                                      f"{choices([*graph.inputs, *graph.node_names])}")
        return graph.resolve(ref, f"{self.field}.{key}")

    def check_unshared(self, graph: LayerGraph, names: Sequence[str], key: str, what: str) -> None:
        """Refuse to give one use of a shared layer (a node that ``shares``, or one whose layer
        another node shares) a new layer: the other uses would keep the old one."""
        for name in names:
            owner = graph.shares(name) or name
            group = [n for n in graph.node_names if n == owner or graph.shares(n) == owner]
            if len(group) > 1:
                others = ", ".join(repr(n) for n in group if n != name)
                raise self.error(key, f"layer {name!r} shares its layer with {others}: {what} would give "
                                      f"only {name!r} a new layer while {others} would keep the old one; a shared layer is "
                                      "changed at all its uses or none: remove the other uses first "
                                      "(remove_vertex_keep_connections or remove_vertex_and_connections) or change a layer that is not shared")

    def input_shapes(self, names: Sequence[str]) -> list[Shape] | None:
        """Shapes of the named tensors before this op, or None when they are not known."""
        if self.shapes is None:
            return None
        out = []
        for n in names:
            s = self.shapes.get(n)
            if s is None or len(s) != 1:
                return None
            out.append(s[0])
        return out

    def new_node(self, name: str, inputs: Sequence[str], type_name: str, args: Mapping[str, Any],
                 input_shapes: Sequence[Shape] | None) -> Node:
        """A node with a new layer from the registry (sizes inferred from ``input_shapes``),
        marked new (``reinit``: fine-tune applies its weight init to it)."""
        lt = get_layer_type(type_name, f"{self.field}.type")
        for k in args:
            if k not in lt.params:
                raise self.error(self.arg_fields.get(k, k),
                                 f"unknown argument for layer type {lt.name!r}; valid: {choices(lt.params) or '(none)'}")
        where = self.field
        if args and all(v.startswith("args.") for v in self.arg_fields.values()):
            where = f"{self.field}.args"
        module, spec = build_layer_and_spec(type_name, dict(args), input_shapes, where=where)
        return Node(name, module, list(inputs), spec=spec, reinit=True)


# ---- parsing ops -------------------------------------------------------------------------


@dataclass
class _Parsed:
    spec: OpSpec
    kwargs: dict[str, Any]
    arg_fields: dict[str, str]
    label: str


def _label(where: str, op: str, entry: Mapping[str, Any]) -> str:
    for key in ("name", "layer", "input"):
        if isinstance(entry.get(key), (str, int)) and not isinstance(entry.get(key), bool):
            return f"{where} ({op} {entry[key]!r})"
    if "n" in entry:
        return f"{where} ({op} {entry['n']!r})"
    return f"{where} ({op})"


def _parse(i: int, entry: Any, field_name: str) -> _Parsed:
    where = f"{field_name}[{i}]"
    if isinstance(entry, str):
        entry = {"op": entry}  # a bare op name: `- remove_output_layer`
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'op' and its arguments, got {entry!r}")
    if "op" not in entry:
        raise ConfigError(f"{where}.op: missing; valid ops: {choices(list_ops())}")
    spec = get_op(entry["op"], f"{where}.op")
    kwargs: dict[str, Any] = {}
    layer: dict[str, Any] = {}
    arg_fields: dict[str, str] = {}
    for key, value in entry.items():
        if key in _COMMON:
            continue
        if spec.layer_args and key == "args":
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.args: expected a mapping of layer arguments, got {value!r}")
            for k, v in value.items():
                layer[str(k)] = v
                arg_fields[str(k)] = f"args.{k}"
        elif key in spec.params and key != "args":
            hint = spec.hints.get(key, Any)
            if not fits(value, hint):
                raise ConfigError(f"{where}.{key}: {value!r} is not a {hint_name(hint)} (op {spec.name!r})")
            kwargs[key] = value
        elif spec.layer_args:
            layer[str(key)] = value
            arg_fields[str(key)] = str(key)
        else:
            raise ConfigError(
                f"{where}.{key}: unknown argument of op {spec.name!r}; valid: {choices(spec.keys()) or '(none)'}"
            )
    for req in spec.required():
        if req not in kwargs:
            raise ConfigError(f"{where}.{req}: missing; op {spec.name!r} needs {choices(spec.required())}")
    if spec.layer_args:
        kwargs["args"] = layer
    return _Parsed(spec, kwargs, arg_fields, _label(where, spec.name, entry))


def _plain(ops: Any) -> Any:
    """Hydra hands over ListConfig/DictConfig; ops work on plain lists and dicts."""
    from tlexp.config import plain

    return plain(ops)


def _has_shapes(graph: LayerGraph) -> bool:
    return all(g.shape is not None for g in graph.graph_inputs)


def apply_ops(graph: LayerGraph, ops: Sequence[Mapping[str, Any]] | None, field: str = "surgery.ops") -> LayerGraph:
    """Apply ``ops`` in order and return the edited graph; ``graph`` itself is left as it was.

    Every op entry is checked (name, keys, value types) before the first op runs. Each op checks
    its own references (layer names, indexes) before it changes anything, and after each op the
    new graph is run on example inputs of the declared input shapes, so an edit that makes the
    shapes impossible is a ShapeError naming the op, the layer and the shapes. The result shares
    the modules it did not change with ``graph``; the nodes of new and re-initialized modules
    are marked ``reinit``.
    """
    ops = _plain(ops)
    if ops is None:
        return graph
    if not isinstance(ops, (list, tuple)):
        raise ConfigError(f"{field}: expected a list of ops, got {ops!r}; valid ops: {choices(list_ops())}")
    parsed = [_parse(i, _plain(entry), field) for i, entry in enumerate(ops)]
    shapes = graph.trace_shapes(where=f"{field} (the model before surgery)") if _has_shapes(graph) else None
    added: dict[str, str] = {}  # node created by an op -> that op's label
    for i, p in enumerate(parsed):
        context = OpContext(
            field=f"{field}[{i}]",
            op=p.spec.name,
            label=p.label,
            shapes=shapes,
            later_ops=tuple(q.spec.name for q in parsed[i + 1:]),
            arg_fields=p.arg_fields,
        )
        before = set(graph.node_names)
        new = p.spec.fn(graph, context, **p.kwargs)
        if not isinstance(new, LayerGraph):
            raise TypeError(f"surgery op {p.spec.name!r} returned {type(new).__name__}, not a LayerGraph")
        shapes = new.trace_shapes(where=p.label) if _has_shapes(new) else None
        for n in new.node_names:
            if n not in before:
                added[n] = p.label
        graph = new
    _check_connected(graph, added)
    return graph


def _check_connected(graph: LayerGraph, added: Mapping[str, str]) -> None:
    # A node the ops added that no output depends on would never be trained or used: almost
    # always a forgotten set_outputs after add_vertex.
    live = graph.ancestors(graph.outputs)
    for name, label in added.items():
        if name in graph and name not in live:
            raise ConfigError(
                f"{label}: node {name!r} does not lead to any output (outputs: {choices(graph.outputs)}); "
                "connect it or add a set_outputs op"
            )
