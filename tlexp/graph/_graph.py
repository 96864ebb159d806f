"""LayerGraph: a torch module made of named nodes.

Each node is a module plus the names of its inputs (graph inputs or other nodes). Nodes are
kept in topological order; for a sequential network (a chain) that order is its layer index.
Every source (spec, saved, keras, zoo) produces a LayerGraph, every surgery op transforms one,
freeze splits one, and saved/inspect serialize one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from tlexp.errors import ConfigError, ShapeError, choices
from tlexp.graph._registry import LayerSpec, build_layer_and_spec, built_spec

__all__ = ["GraphInput", "Node", "LayerGraph", "SummaryRow", "CONFIG_FORMAT"]

CONFIG_FORMAT = "tlexp.layergraph/1"

Shape = tuple[int, ...]


@dataclass(frozen=True)
class GraphInput:
    """A named input. ``shape`` is per sample (no batch axis); None entries are free lengths."""

    name: str
    shape: tuple[int | None, ...] | None = None
    dtype: str = "float32"


@dataclass
class Node:
    """A module and the names of its inputs, with what the graph knows about it.

    ``spec``: the registry type and arguments the module was built from (what ``to_config``
    saves); left out, it is the spec :func:`~tlexp.graph.build_layer` built the module from,
    or None for a module not from the registry (it runs, it cannot be saved). ``reinit``: the
    module is new or re-initialized (surgery marks it; fine-tune applies its weight init to it);
    ``weight_init``: the scheme the op that re-initialized it named (kept by fine-tune's init).
    These are data of the node, never attributes of the torch module.
    """

    name: str
    module: nn.Module
    inputs: list[str]
    spec: LayerSpec | None = None
    reinit: bool = False
    weight_init: str | None = None

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = built_spec(self.module)

    @property
    def type(self) -> str:
        return self.spec.type if self.spec is not None else type(self.module).__name__

    @property
    def args(self) -> dict[str, Any]:
        """A copy of the spec's arguments ({} for a module not from the registry)."""
        return dict(self.spec.args) if self.spec is not None else {}


@dataclass(frozen=True)
class SummaryRow:
    index: int
    name: str
    type: str
    inputs: tuple[str, ...]
    output_shape: tuple[Shape, ...] | None
    params: int
    trainable: bool
    frozen: bool
    #: the earlier node whose module this one uses (a shared layer's later use; its parameters
    #: are counted there), or None
    shares: str | None = None

    @property
    def feature_size(self) -> int | None:
        """Values per sample in this node's output."""
        if self.output_shape is None:
            return None
        total = 0
        for s in self.output_shape:
            n = 1
            for d in s:
                n *= d
            total += n
        return total


def _key(name: str) -> str:
    # nn.Module attribute names may not contain '.', timm block names do ('layer3.0')
    return name.replace(".", "/")


class LayerGraph(nn.Module):
    """Named nodes, named inputs, named outputs; forward takes the inputs in order.

    A single output is returned as a tensor, several as a tuple.
    """

    def __init__(
        self,
        inputs: Sequence[GraphInput | str],
        nodes: Sequence[Node],
        outputs: Sequence[str],
        frozen: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        #: what the source knows beyond the layers (timm's data config, the classifier's name,
        #: a Keras file's training config …); JSON data, saved with the model
        self.meta: dict[str, Any] = dict(meta or {})
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:  # a tensor or an object: carry it another declared way
            raise TypeError(f"LayerGraph meta must be JSON data (it is saved with the model): {e}") from None
        #: how a saved model's inputs were prepared (tlexp.data.preprocessing; set by load_model)
        self.preprocessing: Any = None
        self.graph_inputs: list[GraphInput] = [i if isinstance(i, GraphInput) else GraphInput(i) for i in inputs]
        self.layers = nn.ModuleDict()
        self._nodes: list[Node] = []
        known = {i.name for i in self.graph_inputs}
        #: node -> the earlier node whose module it uses (a shared layer); first uses are not listed
        self._shares: dict[str, str] = {}
        owners: dict[int, str] = {}
        if len(known) != len(self.graph_inputs):
            raise ConfigError("graph inputs: names must be unique")
        for node in nodes:
            if node.name in known:
                raise ConfigError(f"node {node.name!r}: name used twice")
            for src in node.inputs:
                if src not in known:
                    raise ConfigError(
                        f"node {node.name!r}: input {src!r} is not a graph input or an earlier node; "
                        f"valid: {choices(sorted(known))}"
                    )
            if not node.inputs:
                raise ConfigError(f"node {node.name!r}: has no inputs")
            known.add(node.name)
            owner = owners.setdefault(id(node.module), node.name)
            if owner == node.name:
                self.layers[_key(node.name)] = node.module
            else:
                self._shares[node.name] = owner
            self._nodes.append(replace(node, inputs=list(node.inputs)))
        if not outputs:
            raise ConfigError("graph outputs: at least one output is needed")
        for out in outputs:
            if out not in known:
                raise ConfigError(f"graph outputs: {out!r} is not a node; valid: {choices(sorted(known))}")
        self.outputs: list[str] = list(outputs)
        self._index = {n.name: i for i, n in enumerate(self._nodes)}
        self.frozen: set[str] = set()
        self.set_frozen(frozen)

    # ---- structure -----------------------------------------------------------------------

    @property
    def inputs(self) -> list[str]:
        return [i.name for i in self.graph_inputs]

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self._nodes]

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:  # type: ignore[override]
        return iter(self._nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def resolve(self, ref: str | int, field: str = "layer") -> str:
        """A node name from a name or an index (negative indexes count from the end)."""
        if isinstance(ref, bool):
            raise ConfigError(f"{field}: {ref!r} is not a layer name or index")
        if isinstance(ref, int) or (isinstance(ref, str) and ref.lstrip("-").isdigit() and ref not in self._index):
            i = int(ref)
            n = len(self._nodes)
            if not -n <= i < n:
                raise ConfigError(f"{field}: index {i} is out of range; valid: 0..{n - 1} (or a name: "
                                  f"{choices(self.node_names, 12)})")
            return self._nodes[i].name
        if ref not in self._index:
            # a group name (a timm stage 'layer3', a nested Keras model 'inner') stands for the
            # last of its members, so freezing up to a stage freezes the whole stage
            members = [n for n in self.node_names if n.startswith(f"{ref}.") or n.startswith(f"{ref}/")]
            if members:
                return members[-1]
            raise ConfigError(f"{field}: no layer named {ref!r}; valid: {choices(self.node_names)}")
        return ref

    def node(self, ref: str | int) -> Node:
        return self._nodes[self._index[self.resolve(ref)]]

    def index(self, ref: str | int) -> int:
        return self._index[self.resolve(ref)]

    def module(self, ref: str | int) -> nn.Module:
        return self.node(ref).module

    def shares(self, name: str) -> str | None:
        """The earlier node whose module this node uses (a shared layer), or None."""
        return self._shares.get(name)

    def _frozen_modules(self, names: Iterable[str] | None = None) -> set[int]:
        return {id(self._nodes[self._index[n]].module) for n in (self.frozen if names is None else names)}

    def consumers(self, name: str) -> list[str]:
        return [n.name for n in self._nodes if name in n.inputs]

    @property
    def is_chain(self) -> bool:
        """One input, one output, each node fed by the one before it (a sequential network)."""
        if len(self.graph_inputs) != 1 or len(self.outputs) != 1:
            return False
        prev = self.graph_inputs[0].name
        for n in self._nodes:
            if n.inputs != [prev]:
                return False
            prev = n.name
        return self.outputs == [prev]

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """The named nodes and every node they depend on (graph inputs excluded)."""
        out: set[str] = set()
        stack = [n for n in names if n in self._index]
        while stack:
            n = stack.pop()
            if n in out:
                continue
            out.add(n)
            stack.extend(i for i in self._nodes[self._index[n]].inputs if i in self._index)
        return out

    def descendants(self, names: Iterable[str]) -> set[str]:
        """The named nodes and every node that depends on them."""
        out = set(names)
        for n in self._nodes:
            if any(i in out for i in n.inputs):
                out.add(n.name)
        return out

    # ---- running ---------------------------------------------------------------------------

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(xs) != len(self.graph_inputs):
            raise TypeError(f"LayerGraph takes {len(self.graph_inputs)} input(s) ({', '.join(self.inputs)}), got {len(xs)}")
        env: dict[str, Any] = dict(zip(self.inputs, xs))
        for node in self._nodes:
            env[node.name] = node.module(*(env[i] for i in node.inputs))
        if len(self.outputs) == 1:
            return env[self.outputs[0]]
        return tuple(env[o] for o in self.outputs)

    def train(self, mode: bool = True) -> LayerGraph:
        # Frozen nodes always run in inference mode: BatchNorm keeps its running statistics,
        # dropout is off, whatever mode the surrounding Lightning module is in.
        super().train(mode)
        for name in self.frozen:
            self._nodes[self._index[name]].module.eval()
        return self

    def set_frozen(self, names: Iterable[str]) -> None:
        """Freeze exactly these nodes (no gradients, always inference mode); unfreeze the rest."""
        names = set(names)
        for n in names:
            if n not in self._index:
                raise ConfigError(f"freeze: no layer named {n!r}; valid: {choices(self.node_names)}")
        before, self.frozen = self.frozen, names
        frozen_modules = self._frozen_modules(names)  # a shared module is frozen at every use
        for node in self._nodes:
            frozen = id(node.module) in frozen_modules
            for p in node.module.parameters():
                p.requires_grad_(not frozen)
            if frozen:
                node.module.eval()
            elif node.name in before:
                node.module.train(self.training)  # unfrozen: back to the graph's mode

    def example_inputs(self, batch: int = 2, shapes: Sequence[Sequence[int | None]] | None = None) -> list[torch.Tensor]:
        """Zero-free example tensors for a dry run, from the declared input shapes."""
        tensors = []
        g = torch.Generator().manual_seed(0)
        for i, gi in enumerate(self.graph_inputs):
            shape = shapes[i] if shapes is not None else gi.shape
            if shape is None:
                raise ShapeError(f"input {gi.name!r}: no shape declared; set the input shape in the source config")
            dims = [8 if d is None else int(d) for d in shape]
            if gi.dtype.startswith("int"):
                tensors.append(torch.randint(0, 2, (batch, *dims), generator=g))
            else:
                tensors.append(torch.rand((batch, *dims), generator=g))
        return tensors

    @torch.no_grad()
    def trace_shapes(self, shapes: Sequence[Sequence[int | None]] | None = None, where: str = "graph") -> dict[str, tuple[Shape, ...]]:
        """Run the graph on example inputs and return each node's output shape(s), per sample.

        A node whose inputs do not fit raises ShapeError naming the node and the input shapes.
        """
        was_training = self.training
        self.eval()
        try:
            xs = self.example_inputs(2, shapes)
            env: dict[str, Any] = dict(zip(self.inputs, xs))
            shapes_out: dict[str, tuple[Shape, ...]] = {i: (tuple(x.shape[1:]),) for i, x in zip(self.inputs, xs)}
            for node in self._nodes:
                args = [env[i] for i in node.inputs]
                try:
                    y = node.module(*args)
                except (RuntimeError, ValueError, IndexError, TypeError) as e:
                    ins = ", ".join(f"{i} {list(_shapes(env[i])[0])}" for i in node.inputs)
                    msg = str(e).strip().split("\n")[0]
                    raise ShapeError(f"{where}: layer {node.name!r} ({node.type}) does not accept its input ({ins}): {msg}") from None
                env[node.name] = y
                shapes_out[node.name] = _shapes(y)
            return shapes_out
        finally:
            self.train(was_training)

    # ---- inspection ------------------------------------------------------------------------

    def summary(self, input_shape: Sequence[Sequence[int | None]] | Sequence[int] | None = None) -> list[SummaryRow]:
        """One row per node: name, type, output shape, parameter count, trainable or frozen, and
        the node it shares its module with (a shared layer's later use counts no parameters)."""
        shapes_in = None
        if input_shape is not None:
            shapes_in = [input_shape] if input_shape and isinstance(input_shape[0], int) else input_shape  # type: ignore[index]
        try:
            shapes = self.trace_shapes(shapes_in)  # type: ignore[arg-type]
        except ShapeError:
            if shapes_in is not None or all(g.shape is not None for g in self.graph_inputs):
                raise
            shapes = {}
        rows = []
        frozen_modules = self._frozen_modules()
        for i, node in enumerate(self._nodes):
            # a shared layer's weights are counted at its first use
            params = [] if node.name in self._shares else list(node.module.parameters())
            rows.append(
                SummaryRow(
                    index=i,
                    name=node.name,
                    type=node.type,
                    inputs=tuple(node.inputs),
                    output_shape=shapes.get(node.name),
                    params=sum(p.numel() for p in params),
                    trainable=any(p.requires_grad for p in node.module.parameters()),
                    frozen=id(node.module) in frozen_modules,
                    shares=self._shares.get(node.name),
                )
            )
        return rows

    # ---- splitting -------------------------------------------------------------------------

    def boundary(self, cut: Iterable[str]) -> list[str]:
        """Tensors that cross the cut: produced inside it (or graph inputs) and used outside.

        In topological order, graph inputs first. Graph outputs produced inside the cut count.
        """
        cut = set(cut)
        needed: list[str] = []
        for name in [*self.inputs, *self.node_names]:
            if name in self._index and name not in cut:
                continue
            used_outside = any(name in n.inputs for n in self._nodes if n.name not in cut)
            if used_outside or name in self.outputs:
                needed.append(name)
        return needed

    def split(self, cut: Iterable[str]) -> tuple[LayerGraph, LayerGraph]:
        """Split into (prefix, suffix) so that ``suffix(*as_tuple(prefix(*x)))`` equals ``self(*x)``.

        ``cut`` must be closed under ancestors (a node's inputs are in the cut too). The prefix
        returns every boundary tensor; the suffix takes them as its inputs, named as the nodes
        (or graph inputs) that produce them. The two share modules with this graph.
        """
        cut = set(cut)
        for n in cut:
            if n not in self._index:
                raise ConfigError(f"cut: no layer named {n!r}; valid: {choices(self.node_names)}")
        missing = self.ancestors(cut) - cut
        if missing:
            raise ConfigError(f"cut: not closed under inputs; also needs {choices(sorted(missing))}")
        boundary = self.boundary(cut)
        shapes: dict[str, tuple[Shape, ...]] = {}
        if all(g.shape is not None for g in self.graph_inputs):
            shapes = self.trace_shapes()
        in_dtypes = {g.name: g for g in self.graph_inputs}
        prefix_nodes = [n for n in self._nodes if n.name in cut]
        suffix_nodes = [n for n in self._nodes if n.name not in cut]
        prefix_outputs = boundary
        if not prefix_nodes:
            # Nothing frozen: the prefix is the identity on the inputs.
            prefix_outputs = list(self.inputs)
        # a shared module frozen at one use stays frozen at its uses on the other side
        frozen_modules = self._frozen_modules()
        prefix_frozen = (self.frozen & cut) | {n.name for n in prefix_nodes if id(n.module) in frozen_modules}
        suffix_frozen = (self.frozen - cut) | {n.name for n in suffix_nodes if id(n.module) in frozen_modules}
        prefix = LayerGraph(self.graph_inputs, prefix_nodes, prefix_outputs, frozen=prefix_frozen)
        suffix_inputs = []
        for b in boundary:
            if b in in_dtypes:
                suffix_inputs.append(in_dtypes[b])
            else:
                shp = shapes.get(b)
                suffix_inputs.append(GraphInput(b, shp[0] if shp and len(shp) == 1 else None))
        suffix = LayerGraph(suffix_inputs, suffix_nodes, self.outputs, frozen=suffix_frozen)
        # the parts share modules with this graph: keep them in this graph's mode
        prefix.train(self.training)
        suffix.train(self.training)
        return prefix, suffix

    # ---- serialization ---------------------------------------------------------------------

    def to_config(self) -> dict[str, Any]:
        """The architecture as JSON-able data: registry type names and arguments, no code."""
        nodes: list[dict[str, Any]] = []
        for node in self._nodes:
            if node.name in self._shares:
                nodes.append({"name": node.name, "shares": self._shares[node.name], "inputs": list(node.inputs)})
                continue
            if node.spec is None:
                raise ConfigError(
                    f"node {node.name!r}: {type(node.module).__name__} is not a registry layer and cannot be saved"
                )
            nodes.append({"name": node.name, "type": node.spec.type, "args": dict(node.spec.args),
                          "inputs": list(node.inputs)})
        return {
            "format": CONFIG_FORMAT,
            "inputs": [
                {"name": g.name, "shape": None if g.shape is None else list(g.shape), "dtype": g.dtype}
                for g in self.graph_inputs
            ],
            "nodes": nodes,
            "outputs": list(self.outputs),
            "frozen": [n for n in self.node_names if n in self.frozen],
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], infer_shapes: bool = True,
                    meta: Mapping[str, Any] | None = None) -> LayerGraph:
        """Build a graph from ``to_config()`` data (or a hand-written equivalent).

        Missing size arguments (``in_features`` …) are inferred from the declared input shapes
        by running each node as it is built.
        """
        if not isinstance(cfg, dict) or "nodes" not in cfg:
            raise ConfigError("architecture: expected a mapping with 'inputs', 'nodes', 'outputs'")
        fmt = cfg.get("format", CONFIG_FORMAT)
        if fmt != CONFIG_FORMAT:
            raise ConfigError(f"architecture.format: {fmt!r} is not supported; valid: {CONFIG_FORMAT}")
        inputs = []
        for i, spec in enumerate(cfg.get("inputs") or []):
            if isinstance(spec, str):
                spec = {"name": spec}
            if "name" not in spec:
                raise ConfigError(f"architecture.inputs[{i}]: needs a name")
            shape = spec.get("shape")
            inputs.append(GraphInput(str(spec["name"]), None if shape is None else tuple(shape), spec.get("dtype", "float32")))
        if not inputs:
            raise ConfigError("architecture.inputs: at least one input is needed")
        env: dict[str, torch.Tensor | None] = {}
        if infer_shapes and all(g.shape is not None for g in inputs):
            g = torch.Generator().manual_seed(0)
            for gi in inputs:
                dims = [8 if d is None else int(d) for d in gi.shape]  # type: ignore[union-attr]
                env[gi.name] = (
                    torch.randint(0, 2, (2, *dims), generator=g) if gi.dtype.startswith("int") else torch.rand((2, *dims), generator=g)
                )
        nodes: list[Node] = []
        for i, spec in enumerate(cfg["nodes"]):
            where = f"nodes[{i}]" + (f" ({spec.get('name')})" if isinstance(spec, dict) and spec.get("name") else "")
            if not isinstance(spec, dict) or "name" not in spec or ("type" not in spec and "shares" not in spec):
                raise ConfigError(f"architecture.{where}: each node needs 'name' and 'type' (or 'shares': an earlier node)")
            ins = spec.get("inputs")
            if ins is None:
                ins = [nodes[-1].name] if nodes else [inputs[0].name]
            if isinstance(ins, str):
                ins = [ins]
            ins = [str(x) for x in ins]
            known = [g.name for g in inputs] + [n.name for n in nodes]
            for x in ins:
                # before building: an unknown input would otherwise read as a missing size argument
                if x not in known:
                    raise ConfigError(f"node {spec['name']!r}: input {x!r} is not a graph input or an earlier node; "
                                      f"valid: {choices(sorted(known))}")
            in_tensors = [env.get(x) for x in ins]
            in_shapes = None
            if in_tensors and all(isinstance(t, torch.Tensor) for t in in_tensors):
                in_shapes = [tuple(t.shape[1:]) for t in in_tensors]  # type: ignore[union-attr]
            if spec.get("shares") is not None:
                # the same module as an earlier node (a shared layer: one set of weights)
                owner = next((n for n in nodes if n.name == str(spec["shares"])), None)
                if owner is None:
                    raise ConfigError(f"architecture.{where}: shares {spec['shares']!r}, which is not an earlier node; "
                                      f"valid: {choices([n.name for n in nodes])}")
                module, layer = owner.module, owner.spec
            else:
                module, layer = build_layer_and_spec(str(spec["type"]), dict(spec.get("args") or {}), in_shapes,
                                                     where=f"{spec['name']}")
            if in_shapes is not None:
                module.eval()
                try:
                    with torch.no_grad():
                        env[str(spec["name"])] = module(*in_tensors)
                except (RuntimeError, ValueError, IndexError, TypeError) as e:
                    shp = ", ".join(str(list(s)) for s in in_shapes)
                    raise ShapeError(
                        f"layer {spec['name']!r} ({spec.get('type') or 'shared'}) does not accept input shape {shp}: "
                        f"{str(e).strip().splitlines()[0]}"
                    ) from None
                module.train()
            nodes.append(Node(str(spec["name"]), module, ins, spec=layer))
        outputs = cfg.get("outputs") or ([nodes[-1].name] if nodes else [])
        if isinstance(outputs, str):
            outputs = [outputs]
        return cls(inputs, nodes, [str(o) for o in outputs], frozen=cfg.get("frozen") or (), meta=meta)

    def rebuilt(self, nodes: Sequence[Node] | None = None, outputs: Sequence[str] | None = None,
                inputs: Sequence[GraphInput] | None = None, meta: Mapping[str, Any] | None = None) -> LayerGraph:
        """A new graph from parts of this one, its ``meta`` kept (or ``meta`` given instead): the
        one way graphs are edited.

        It shares the modules it is given. A node stays frozen when it was frozen here and still
        holds the same module; a new or re-initialized module starts trainable (freezing fresh
        random weights is never meant).
        """
        nodes = self.nodes if nodes is None else list(nodes)
        frozen = {n.name for n in nodes if n.name in self.frozen and n.name in self and self.module(n.name) is n.module}
        graph = LayerGraph(
            self.graph_inputs if inputs is None else inputs,
            nodes,
            self.outputs if outputs is None else outputs,
            frozen=frozen,
            meta=self.meta if meta is None else meta,
        )
        return graph.train(self.training)

    def extra_repr(self) -> str:
        return f"inputs={self.inputs}, outputs={self.outputs}, nodes={len(self._nodes)}, frozen={len(self.frozen)}"


def _shapes(y: Any) -> tuple[Shape, ...]:
    if isinstance(y, torch.Tensor):
        return (tuple(y.shape[1:]),)
    if isinstance(y, (tuple, list)):
        out: list[Shape] = []
        for t in y:
            out.extend(_shapes(t))
        return tuple(out)
    return ()
