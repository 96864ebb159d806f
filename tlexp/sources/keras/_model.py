"""Sequential and functional Keras models (nested ones too) flattened into one LayerGraph.

A Sequential model is a chain; a functional model lists each layer's calls (``inbound_nodes``:
Keras 2 writes ``[[name, node_index, tensor_index, kwargs], ...]``, Keras 3 writes
``{"args": [...keras_history...], "kwargs": {...}}``). A model used as a layer is expanded in
place, its layers named ``outer/inner``; a layer called twice (a shared layer) becomes two nodes
that use one module (one set of weights, updated once by an optimizer step), the second named
``name:1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tlexp.errors import ConfigError, SourceError, choices
from tlexp.graph import GraphInput, LayerGraph, Node
from tlexp.sources.keras._builder import CHANNELS_FIRST, CHANNELS_LAST, Builder, KerasTensor, MetaUnsupported, Op
from tlexp.sources.keras._convert import CONVERTERS, KerasLayer, convert_layer, supported_classes
from tlexp.sources.keras._read import KerasFile, is_model, layer_name, model_layers

__all__ = ["build_graph", "ImportedTerms", "LAYOUTS"]

LAYOUTS = ("channels_first", "channels_last")

Ref = tuple[str, int, int]


class _ModelImport:
    def __init__(self, kf: KerasFile, layout: str, input_shapes: list[list[int]] | None, meta: bool = True) -> None:
        self.kf = kf
        self.layout = layout
        self.input_shapes = input_shapes
        self.b = Builder(meta)
        self.n_inputs = 0
        #: the model's spatial layers compute channels-first (Theano-era and some Keras 2 models)
        self.channels_first = _channels_first_model(kf.model_config)
        #: the modules holding each Keras layer's weights (by weight path), from its first call
        self.layer_modules: dict[tuple[str, ...], list[nn.Module]] = {}


# ---- data formats -----------------------------------------------------------------------------


def _spatial_hint(lc: dict[str, Any]) -> tuple[str, str] | None:
    """(data_format, class) of the first layer in ``lc`` (a layer, wrapper or model) that has one."""
    cfg = lc.get("config") or {}
    if is_model(lc):
        for sub in model_layers(lc):
            hint = _spatial_hint(sub)
            if hint is not None:
                return hint
        return None
    if cfg.get("data_format") and lc.get("class_name") != "Flatten":
        return str(cfg["data_format"]), str(lc.get("class_name"))
    inner = cfg.get("layer")
    return _spatial_hint(inner) if isinstance(inner, dict) and lc.get("class_name") != "TimeDistributed" else None


def _channels_first_model(cfg: dict[str, Any]) -> bool:
    """Do the model's spatial layers (convolutions, pooling, ...) all compute channels-first?"""
    formats: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            c = v.get("config")
            if isinstance(c, dict) and c.get("data_format") and v.get("class_name") != "Flatten":
                formats.add(str(c["data_format"]))
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(cfg)
    return formats == {"channels_first"}


def _first_hint(cfg: dict[str, Any], input_name: str) -> tuple[str, str] | None:
    """The data format of the first spatial layer that reads the input ``input_name``."""
    layers = [lc for lc in model_layers(cfg) if lc.get("class_name") != "InputLayer"]
    if cfg.get("class_name") == "Sequential":
        for lc in layers:
            hint = _spatial_hint(lc)
            if hint is not None:
                return hint
        return None
    frontier, seen = {input_name}, {input_name}
    while frontier:
        nxt: set[str] = set()
        for lc in layers:
            if not any(r[0] in frontier for node in lc.get("inbound_nodes") or [] for r in _refs(node)):
                continue
            hint = _spatial_hint(lc)
            if hint is not None:
                return hint
            name = layer_name(lc)
            if name not in seen:
                seen.add(name)
                nxt.add(name)
        frontier = nxt
    return None


def _torch_channels_first(ctx: _ModelImport, rank: int, hint: tuple[str, str] | None) -> bool:
    """Does this input (per-sample rank) take torch's channels-first order in channels_first layout?

    Images (rank 3) do unless the model itself computes channels-first (then Keras's order is
    already torch's); volumes (rank 4) do when a 3-D layer reads them (not a TimeDistributed
    sequence of images); vectors and sequences stay as Keras takes them.
    """
    if ctx.layout != "channels_first" or ctx.channels_first:
        return False
    if hint is not None and hint[0] == "channels_first":
        return False
    if rank == 3:
        return True
    return rank == 4 and hint is not None and "3D" in hint[1]


# ---- inputs -----------------------------------------------------------------------------------


def _declared_shape(lc: dict[str, Any]) -> list[int | None] | None:
    cfg = lc.get("config") or {}
    for key in ("batch_shape", "batch_input_shape"):
        if cfg.get(key) is not None:
            return list(cfg[key])[1:]
    if cfg.get("input_shape") is not None:
        return list(cfg["input_shape"])
    return None


def _input_shape(ctx: _ModelImport, declared: list[int | None] | None, name: str) -> list[int | None]:
    i = ctx.n_inputs
    given = ctx.input_shapes[i] if ctx.input_shapes is not None and i < len(ctx.input_shapes) else None
    if given is None:
        if declared is None:
            raise SourceError(
                f"source.input_shape: the Keras model was saved without an input shape for {name!r}; "
                "set source.input_shape=[...] (per sample, in Keras's order, e.g. [32,32,3])"
            )
        return declared
    if declared is not None:
        fits = len(given) == len(declared) and all(d is None or d == g for d, g in zip(declared, given))
        if not fits:
            raise ConfigError(
                f"source.input_shape: {list(given)} does not fit the model's input {name!r} of shape "
                f"{['None' if d is None else d for d in declared]} (per sample, Keras's order)"
            )
    return list(given)


def _make_input(ctx: _ModelImport, name: str, declared: list[int | None] | None, dtype: str | None,
                hint: tuple[str, str] | None = None) -> KerasTensor:
    shape = _input_shape(ctx, declared, name)
    ctx.n_inputs += 1
    rank = len(shape)
    cf = _torch_channels_first(ctx, rank, hint)
    torch_shape = [shape[-1], *shape[:-1]] if cf else shape
    is_int = bool(dtype) and str(dtype).startswith(("int", "uint"))
    gi = GraphInput(name, tuple(torch_shape), "int64" if is_int else "float32")
    fill = [(32 if rank == 3 else 8) if d is None else int(d) for d in torch_shape]
    if ctx.b.meta:
        example = torch.empty((2, *fill), dtype=torch.int64 if is_int else torch.float32, device="meta")
    else:
        g = torch.Generator().manual_seed(0)
        example = torch.randint(0, 2, (2, *fill), generator=g) if is_int else torch.rand((2, *fill), generator=g)
    ctx.b.add_input(gi, example)
    return KerasTensor(name, rank, CHANNELS_FIRST if cf else CHANNELS_LAST)


# ---- layers -----------------------------------------------------------------------------------


def _call(ctx: _ModelImport, lc: dict[str, Any], prefix: str, wpath: tuple[str, ...], ins: list[KerasTensor], call: int,
          masks: list[KerasTensor | None] | None = None, consts: list[Any] | None = None,
          kwargs: dict[str, Any] | None = None) -> list[KerasTensor]:
    name = layer_name(lc)
    cls = str(lc.get("class_name"))
    node_name = f"{prefix}{name}" + (f":{call}" if call else "")
    if cls == "Lambda" or cls == "TFOpLambda" or cls == "SlicingOpLambda":
        raise SourceError(
            f"keras layer {node_name!r} is a {cls} layer: its code is not imported or run (it is marshalled Python); "
            "replace it with built-in layers in Keras and save again, or save the model without it and add the "
            "equivalent step with tlexp surgery (surgery.ops: add_layer)"
        )
    if is_model(lc):
        return _model(ctx, lc, f"{node_name}/", (*wpath, name), ins)
    if cls not in CONVERTERS:
        raise SourceError(
            f"keras layer {node_name!r}: layer class {cls!r} is not supported; supported: "
            f"{', '.join(supported_classes())}"
        )
    weights = ctx.kf.weights.get((*wpath, name), [])
    k = KerasLayer(node_name, cls, lc.get("config") or {}, weights, ctx.kf.keras_version, list(consts or []),
               dict(kwargs or {}))
    if masks:
        # Keras 3 writes the masks a layer's ``call(mask=...)`` takes (and the ops computing them)
        # into the file: those replace the ones carried along (which layers such as
        # MultiHeadAttention read from their inputs, as Keras does)
        if len(masks) == 1:
            masks = masks + [None] * (len(ins) - 1)
        ins = [KerasTensor(t.ref, t.rank, t.layout, t.index, m) for t, m in zip(ins, masks)] + ins[len(masks):]
    first = len(ctx.b.nodes)
    outs = convert_layer(ctx.b, k, ins)
    _tie(ctx, (*wpath, name), ctx.b.nodes[first:])
    if _is_op(lc):
        # an op applied to Keras tensors (``x + y``, ``ops.concatenate``), not a layer: Keras
        # carries no mask past it
        outs = [KerasTensor(o.ref, o.rank, o.layout, o.index) if o.mask is not None else o for o in outs]
    return outs


def _is_op(lc: dict[str, Any]) -> bool:
    """Keras 3 writes an op on Keras tensors as a layer-like entry: its module names keras.src.ops
    (the legacy .h5 config leaves the module out; an op's config then lacks the ``trainable``
    every layer's config has)."""
    module = lc.get("module")
    if module is not None:
        return str(module).startswith("keras.src.ops")
    return "trainable" not in (lc.get("config") or {})


def _has_state(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


def _tie(ctx: _ModelImport, key: tuple[str, ...], nodes: list[Node]) -> None:
    """A Keras layer called again (a shared layer, or a nested model called twice) uses the
    modules of its first call: one set of weights at every call, as in Keras."""
    stateful = [n for n in nodes if _has_state(n.module)]
    if not stateful:
        return
    first = ctx.layer_modules.get(key)
    if first is None:
        ctx.layer_modules[key] = [n.module for n in stateful]
        return
    shapes = [[(k, v.shape) for k, v in m.state_dict().items()] for m in first]
    if len(first) != len(stateful) or any(
        type(m) is not type(n.module) or s != [(k, v.shape) for k, v in n.module.state_dict().items()]
        for m, s, n in zip(first, shapes, stateful)
    ):
        raise SourceError(f"keras layer {nodes[0].name!r}: a shared layer's calls convert to different weights; "
                          "tlexp cannot keep them one layer")
    for m, n in zip(first, stateful):
        n.module = m


def _sequential(ctx: _ModelImport, cfg: dict[str, Any], prefix: str, wpath: tuple[str, ...], ins: list[KerasTensor] | None) -> list[KerasTensor]:
    layers = model_layers(cfg)
    if ins is None:
        first = layers[0] if layers else {}
        declared = _declared_shape(first)
        if declared is None and cfg["config"].get("build_input_shape") is not None:
            declared = list(cfg["config"]["build_input_shape"])[1:]
        name = layer_name(first) if first.get("class_name") == "InputLayer" else "input"
        ins = [_make_input(ctx, name, declared, (first.get("config") or {}).get("dtype"), _first_hint(cfg, name))]
    if len(ins) != 1:
        raise SourceError(f"keras model {prefix!r}: a Sequential model takes one input, got {len(ins)}")
    x = ins[0]
    for lc in layers:
        if lc.get("class_name") == "InputLayer":
            continue
        outs = _call(ctx, lc, prefix, wpath, [x], 0)
        x = outs[0]
    return [x]


#: a reference to a constant operand (Keras 3 writes a tensor that is no layer's output in place)
CONST = "\x00const"


def _refs(node: Any, consts: list[dict[str, Any]] | None = None) -> list[Ref]:
    """Tensor references of one inbound node, in argument order (Keras 2 and Keras 3 forms).

    With ``consts``, a constant tensor operand (``__tensor__``) is listed too, as ``(CONST, i, 0)``
    with its config appended to ``consts``."""
    refs: list[Ref] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if v.get("class_name") == "__keras_tensor__":
                h = v["config"]["keras_history"]
                refs.append((str(h[0]), int(h[1]), int(h[2])))
            elif v.get("class_name") == "__tensor__" and consts is not None:
                refs.append((CONST, len(consts), 0))
                consts.append(dict(v.get("config") or {}))
            return
        if isinstance(v, (list, tuple)):
            if len(v) >= 3 and isinstance(v[0], str) and isinstance(v[1], int) and isinstance(v[2], int):
                refs.append((v[0], int(v[1]), int(v[2])))  # Keras 2: [name, node, tensor, kwargs]
                return
            for item in v:
                walk(item)

    if isinstance(node, dict) and "args" in node:
        walk(node["args"])
        # an RNN's initial states come as a keyword (Keras 2 lists them among the inputs)
        walk((node.get("kwargs") or {}).get("initial_state"))
    else:
        walk(node)
    return refs


def _constant(ctx: _ModelImport, name: str, cfg: dict[str, Any], donor: KerasTensor) -> KerasTensor:
    """A node holding a constant operand (a positional table, say), repeated along the batch of
    ``donor`` (one of the call's tensor inputs); its per-sample rank must line up with the donor's."""
    dtype = str(cfg.get("dtype") or "float32")
    value = np.asarray(cfg.get("value"), dtype=np.int64 if dtype.startswith(("int", "uint")) else np.float32)
    if value.ndim == donor.rank + 1 and value.shape[0] == 1:
        pass
    elif value.ndim == donor.rank:
        value = value[None]
    else:
        raise SourceError(
            f"keras layer {name!r}: a constant operand of shape {list(value.shape)} does not line up with its tensor "
            f"input (per-sample rank {donor.rank}); tlexp cannot tell its batch axis"
        )
    op = Op("keras_constant", {"shape": list(value.shape[1:]), "integer": value.dtype == np.int64}, {"value": value})
    return ctx.b.add(f"{name}/constant", op, [donor], donor.rank, CHANNELS_LAST)


def _mask_refs(node: Any) -> list[Ref | None]:
    """The tensors a Keras 3 call passes as ``mask=``: one, or one per input (None where none)."""
    if not isinstance(node, dict):
        return []

    def ref(v: Any) -> Ref | None:
        if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
            h = v["config"]["keras_history"]
            return (str(h[0]), int(h[1]), int(h[2]))
        return None

    m = (node.get("kwargs") or {}).get("mask")
    if isinstance(m, (list, tuple)):
        refs = [ref(v) for v in m]
        return refs if any(r is not None for r in refs) else []
    r = ref(m)
    return [r] if r is not None else []


#: keyword arguments of a Keras 3 call that hold tensors a converter reads (attention layers)
_TENSOR_KWARGS = ("key", "attention_mask", "query_mask", "value_mask", "key_mask")


def _kw_refs(node: Any) -> dict[str, Ref]:
    out: dict[str, Ref] = {}
    kwargs = node.get("kwargs") if isinstance(node, dict) else None
    for name in _TENSOR_KWARGS:
        v = (kwargs or {}).get(name)
        if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
            h = v["config"]["keras_history"]
            out[name] = (str(h[0]), int(h[1]), int(h[2]))
    return out


def _kw_consts(node: Any) -> dict[str, Any]:
    kwargs = node.get("kwargs") if isinstance(node, dict) else None
    return {k: v for k, v in (kwargs or {}).items() if not isinstance(v, (dict, list))}


def _consts(node: Any) -> list[Any]:
    """The positional arguments of a Keras 3 call that are not tensors (an op's constants)."""
    if not isinstance(node, dict):
        return []
    return [a for a in node.get("args") or [] if not isinstance(a, (dict, list))]


def _k2_skips_first_call(lc: dict[str, Any]) -> bool:
    if not is_model(lc):
        return False
    if lc.get("class_name") != "Sequential":
        return True
    layers = model_layers(lc)
    return bool(layers) and layers[0].get("class_name") == "InputLayer"


def _io_refs(v: Any) -> list[Ref]:
    """``input_layers`` / ``output_layers``: a list of [name, node, tensor], or one such triple."""
    if isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[0], str):
        v = [v]
    return [(str(r[0]), int(r[1]), int(r[2])) for r in v]


def _functional(ctx: _ModelImport, cfg: dict[str, Any], prefix: str, wpath: tuple[str, ...], ins: list[KerasTensor] | None) -> list[KerasTensor]:
    c = cfg["config"]
    layers = model_layers(cfg)
    by_name = {layer_name(lc): lc for lc in layers}
    # Keras 2 numbers a nested model's calls from 1: its call 0 is the one that built it on its own
    # Input, and that call is left out of the saved config (Keras 3 renumbers them from 0)
    skip = {n for n, lc in by_name.items() if ctx.kf.keras_version < 3 and _k2_skips_first_call(lc)}

    def fix(refs: list[Ref]) -> list[Ref]:
        return [(n, i - 1 if n in skip else i, j) for n, i, j in refs]

    in_refs, out_refs = _io_refs(c["input_layers"]), fix(_io_refs(c["output_layers"]))
    tensors: dict[Ref, KerasTensor] = {}
    if ins is not None and len(ins) != len(in_refs):
        raise SourceError(f"keras model {prefix!r}: takes {len(in_refs)} inputs, is called with {len(ins)}")
    for i, ref in enumerate(in_refs):
        if ins is None:
            lc = by_name[ref[0]]
            tensors[ref] = _make_input(ctx, ref[0], _declared_shape(lc), (lc.get("config") or {}).get("dtype"),
                                       _first_hint(cfg, ref[0]))
        else:
            tensors[ref] = ins[i]
    constants: list[dict[str, Any]] = []
    pending = [
        (lc, call, fix(_refs(node, constants)), [None if r is None else fix([r])[0] for r in _mask_refs(node)], _consts(node),
         {k: fix([r])[0] for k, r in _kw_refs(node).items()}, _kw_consts(node))
        for lc in layers
        if lc.get("class_name") != "InputLayer"
        for call, node in enumerate(lc.get("inbound_nodes") or [])
    ]
    def known(r: Ref) -> bool:
        return r in tensors or r[0] == CONST

    while pending:
        ready = next((p for p in pending if all(known(r) for r in p[2] + [m for m in p[3] if m] + list(p[5].values()))), None)
        if ready is None:
            missing = sorted({r[0] for p in pending for r in p[2] + [m for m in p[3] if m] + list(p[5].values()) if not known(r)})
            raise SourceError(f"keras model {prefix or 'top'!r}: layers wait for tensors nothing produces: {choices(missing)}")
        pending.remove(ready)
        lc, call, refs, mrefs, consts, kwrefs, kwconsts = ready
        kwargs = {**kwconsts, **{k: tensors[r] for k, r in kwrefs.items()}}
        args = [tensors.get(r) for r in refs]
        if any(r[0] == CONST for r in refs):
            donor = next((t for t in args if t is not None), None)
            where = f"{prefix}{layer_name(lc)}" + (f":{call}" if call else "")
            if donor is None:
                raise SourceError(f"keras layer {where!r}: takes constants only; tlexp needs a tensor input to each layer")
            args = [_constant(ctx, where, constants[r[1]], donor) if r[0] == CONST else t for r, t in zip(refs, args)]
        outs = _call(ctx, lc, prefix, wpath, args, call,  # type: ignore[arg-type]
                     [None if r is None else tensors[r] for r in mrefs], consts,
                     kwargs)
        for j, t in enumerate(outs):
            tensors[(layer_name(lc), call, j)] = t
    missing_out = [r for r in out_refs if r not in tensors]
    if missing_out:
        raise SourceError(f"keras model {prefix or 'top'!r}: output {missing_out[0][0]!r} is never computed")
    return [tensors[r] for r in out_refs]


def _model(ctx: _ModelImport, cfg: dict[str, Any], prefix: str, wpath: tuple[str, ...], ins: list[KerasTensor] | None) -> list[KerasTensor]:
    if cfg.get("class_name") == "Sequential":
        return _sequential(ctx, cfg, prefix, wpath, ins)
    if "input_layers" in cfg.get("config", {}):
        return _functional(ctx, cfg, prefix, wpath, ins)
    raise SourceError(f"keras model {prefix or 'top'!r}: class {cfg.get('class_name')!r} is not a Sequential or functional model")


def _output(ctx: _ModelImport, t: KerasTensor) -> str:
    b = ctx.b
    torch_cf = ctx.layout == "channels_first" and not ctx.channels_first
    want = CHANNELS_FIRST if torch_cf and (t.rank == 3 or (t.rank == 4 and t.layout == CHANNELS_FIRST)) else CHANNELS_LAST
    t = b.plain(b.layout(t, want))
    if t.ref in {gi.name for gi in b.inputs}:
        t = b.add(f"{t.ref}/output", Op("identity", {}), [t], t.rank, t.layout)
    return t.ref


@dataclass(frozen=True)
class ImportedTerms:
    """The imported model's regularizers and constraints: training terms (JSON data, see _terms),
    a label per term, and labels of the ones tlexp cannot apply."""

    terms: list[dict[str, Any]]
    labels: list[str]
    unsupported: list[str]


def build_graph(kf: KerasFile, input_layout: str = "channels_first",
                input_shapes: Sequence[Sequence[int]] | None = None) -> tuple[LayerGraph, ImportedTerms]:
    if input_layout not in LAYOUTS:
        raise ConfigError(f"source.input_layout: {input_layout!r} is not a layout; valid: {', '.join(LAYOUTS)}")
    shapes = [list(s) for s in input_shapes] if input_shapes is not None else None
    ctx = _ModelImport(kf, input_layout, shapes)
    try:
        outs = _model(ctx, kf.model_config, "", (), None)
    except MetaUnsupported:
        ctx = _ModelImport(kf, input_layout, shapes, meta=False)  # a layer needs real values to trace
        outs = _model(ctx, kf.model_config, "", (), None)
    outputs = [_output(ctx, t) for t in outs]
    if not ctx.b.nodes:
        raise SourceError(f"source.path: {kf.path}: the Keras model has no layers")
    graph = LayerGraph(ctx.b.inputs, ctx.b.nodes, outputs)
    return graph, ImportedTerms(ctx.b.terms, ctx.b.term_labels, ctx.b.unsupported_terms)
