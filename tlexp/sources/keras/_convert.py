"""One converter per Keras layer class: Keras config + weights -> registry layers.

A converter receives the layer (its node name, config, weight arrays in Keras's order, the file's
Keras major version) and its input tensors, asks the builder for the layout it needs, adds its
node(s) and returns its output tensor(s). Kernels are converted to torch's layouts here (HWIO ->
OIHW, (in, out) -> (out, in), GRU gates z, r, h -> r, z, n, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlexp.errors import SourceError, choices, warn
from tlexp.sources.keras import _layers_more  # noqa: F401  (registers the layer types below need)
from tlexp.sources.keras._builder import CHANNELS_FIRST, CHANNELS_LAST, Builder, Chain, KerasTensor, Op, to_cl_dims
from tlexp.sources.keras._layers import KERAS_ACTIVATIONS
from tlexp.sources.keras._terms import parse_constraint, parse_regularizer

__all__ = ["KerasLayer", "CONVERTERS", "supported_classes", "convert_layer"]

BuildTarget = Builder | Chain


@dataclass
class KerasLayer:
    name: str
    cls: str
    cfg: dict[str, Any]
    weights: list[np.ndarray]
    version: int
    #: constants among the call's positional arguments (Keras 3 op layers: ``not_equal(x, 0)``)
    consts: list[Any] = field(default_factory=list)
    #: the call's keyword arguments: constants, and tensors (KerasTensor) such as an attention mask
    kwargs: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.cfg.get(key, default)

    def expect(self, *counts: int) -> list[np.ndarray]:
        if len(self.weights) not in counts:
            want = " or ".join(str(c) for c in counts)
            raise SourceError(
                f"weights: keras layer {self.name!r} ({self.cls}) has {len(self.weights)} weight arrays in the "
                f"weights file, the architecture needs {want}; the weights do not fit the architecture"
            )
        return self.weights


Converter = Callable[[BuildTarget, KerasLayer, list[KerasTensor]], list[KerasTensor]]
CONVERTERS: dict[str, Converter] = {}


def converter(*names: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for n in names:
            CONVERTERS[n] = fn
        return fn

    return deco


def supported_classes() -> list[str]:
    return sorted(CONVERTERS)


#: layers that pass a step mask on unchanged (Keras: supports_masking with the default compute_mask)
MASK_PASS = {
    "Dense", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Activation", "ReLU",
    "LeakyReLU", "PReLU", "ELU", "BatchNormalization", "LayerNormalization", "GroupNormalization", "Rescaling",
    "Normalization", "ActivityRegularization", "TimeDistributed", "Identity", "UnitNormalization",
}
#: merging layers: the output mask is the steps unmasked in every masked input
MASK_MERGE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}


#: class -> Keras weight -> (torch parameter, Keras kernel axes in torch's order, or None for a vector)
def _weight_map(k: KerasLayer, module: Any) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    if k.cls == "Dense":
        return {"kernel": ("weight", (1, 0)), "bias": ("bias", None)}
    if k.cls == "Embedding":
        return {"embeddings": ("weight", (0, 1))}
    if k.cls.startswith("ConvLSTM"):
        perm = _KERNEL_PERM[int(k.cls[-2])]
        return {"kernel": ("kernel", perm), "recurrent": ("recurrent_kernel", perm), "bias": ("bias", None)}
    if k.cls.startswith(("Conv", "Convolution", "Deconvolution")):
        dims = int(k.cls.replace("Transpose", "").rstrip("D")[-1])
        bias = "bias" if hasattr(module, "crops") else "conv.bias"
        return {"kernel": ("conv.weight", _KERNEL_PERM[dims]), "bias": (bias, None)}
    return {}


def _record_terms(ctx: Builder, k: KerasLayer) -> None:
    """Regularizers and constraints of ``k`` as training terms of its node (see _terms)."""
    found = [(key, v) for key, v in k.cfg.items() if v and key.endswith(("_regularizer", "_constraint"))]
    if not found:
        return
    node = next((n for n in reversed(ctx.nodes) if n.name == k.name), None)
    wmap = _weight_map(k, node.module) if node is not None else {}
    for key, v in found:
        what = key.rsplit("_", 1)[0]
        label = f"{k.name}: {key} {v.get('class_name') if isinstance(v, dict) else v}"
        if key == "activity_regularizer":
            reg = parse_regularizer(v)
            if reg is None or node is None:
                ctx.unsupported_terms.append(label)
            else:
                ctx.terms.append({"node": k.name, "output": True, **reg})
                ctx.term_labels.append(label)
            continue
        if what not in wmap:
            ctx.unsupported_terms.append(label)
            continue
        param, perm = wmap[what]
        if key.endswith("_regularizer"):
            reg = parse_regularizer(v)
            if reg is None:
                ctx.unsupported_terms.append(label)
                continue
            ctx.terms.append({"node": k.name, "param": param, **reg})
        else:
            con = parse_constraint(v)
            if con is None:
                ctx.unsupported_terms.append(label)
                continue
            axes = con.pop("axis", None)
            if axes is not None:
                rank = len(perm) if perm is not None else 1
                keras_axes = [a if a >= 0 else rank + a for a in axes]
                con["dims"] = sorted(perm.index(a) if perm is not None else a for a in keras_axes)
            ctx.terms.append({"node": k.name, "param": param, **con})
        ctx.term_labels.append(label)


def convert_layer(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    outs = CONVERTERS[k.cls](ctx, k, ins)
    if isinstance(ctx, Builder):
        _record_terms(ctx, k)
    masks = list({t.mask.ref: t.mask for t in ins if t.mask is not None}.values())
    if not masks or any(o.mask is not None for o in outs) or isinstance(ctx, Chain):
        return outs
    if k.cls in MASK_MERGE and k.cls != "Concatenate" and k.version >= 3 and any(t.mask is None for t in ins):
        return outs  # Keras 3: an elementwise merge of masked and unmasked inputs carries no mask
    if k.cls in MASK_PASS or (k.cls in MASK_MERGE and len(masks) == 1):
        mask = masks[0]
    elif k.cls in MASK_MERGE:
        mask = ctx.add(f"{k.name}/mask", Op("mask_and", {}), masks, 1, CHANNELS_LAST)
    else:
        return outs  # Keras drops the mask at a layer that does not support masking
    return [KerasTensor(o.ref, o.rank, o.layout, o.index, mask) if o.rank >= 2 else o for o in outs]


# ---- helpers ----------------------------------------------------------------------------------


def _tuple(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        v = list(v)
        return [int(x) for x in (v * n if len(v) == 1 else v)]
    return [int(v)] * n


def _padding(k: KerasLayer) -> str | int:
    pad = str(k.get("padding", "valid")).lower()
    if pad not in ("valid", "same"):
        raise SourceError(f"keras layer {k.name!r} ({k.cls}): padding {pad!r} is not supported; valid: valid, same")
    return "same" if pad == "same" else 0


def activation_name(k: KerasLayer, key: str = "activation", default: str = "linear") -> str:
    """The Keras activation stored under ``key`` as a name in KERAS_ACTIVATIONS."""
    a = k.get(key, default)
    if isinstance(a, dict):  # Keras 3 may serialize the function as an object
        a = a.get("config") if isinstance(a.get("config"), str) else a.get("class_name")
    name = str(a if a is not None else "linear")
    if name in ("hard_sigmoid",) and k.version < 3:
        name = "hard_sigmoid_keras2"
    if name == "softmax_v2":
        name = "softmax"
    if name not in KERAS_ACTIVATIONS:
        raise SourceError(
            f"keras layer {k.name!r} ({k.cls}): activation {name!r} is not supported; "
            f"valid: {choices(sorted(KERAS_ACTIVATIONS))}"
        )
    return name


#: Keras activation -> built-in activation that computes exactly the same thing
_FUSABLE = {
    "linear": "identity", "relu": "relu", "relu6": "relu6", "elu": "elu", "selu": "selu", "gelu": "gelu",
    "silu": "silu", "swish": "silu", "sigmoid": "sigmoid", "hard_sigmoid": "hard_sigmoid",
    "hard_sigmoid_keras2": "hard_sigmoid_keras2", "hard_silu": "hard_swish", "hard_swish": "hard_swish",
    "tanh": "tanh", "softmax": "softmax", "log_softmax": "log_softmax", "softplus": "softplus",
    "softsign": "softsign", "mish": "mish",
}


def _split_activation(k: KerasLayer) -> tuple[str, str | None]:
    """(fused built-in activation, separate Keras activation or None)."""
    name = activation_name(k)
    if name in _FUSABLE:
        return _FUSABLE[name], None
    return "identity", name


def _keras_dim(t: KerasTensor, axis: int) -> int:
    """torch dim (batch included) of a Keras axis (batch included, negative allowed) of ``t``."""
    r = t.rank
    a = axis if axis >= 0 else r + 1 + axis
    if not 1 <= a <= r:
        raise SourceError(f"axis {axis} is out of range for a rank-{r} tensor")
    if t.layout == CHANNELS_FIRST and r >= 2:
        return 1 if a == r else a + 1
    return a


def _activation_op(name: str, t: KerasTensor) -> Op:
    dim = _keras_dim(t, -1) if name in ("softmax", "log_softmax", "sparsemax", "glu") else -1
    if name in ("softmax", "log_softmax"):
        return Op("activation", {"name": name, "dim": dim})
    return Op("keras_activation", {"name": name, "dim": dim})


def _with_activation(ctx: BuildTarget, k: KerasLayer, out: KerasTensor, extra: str | None) -> list[KerasTensor]:
    if extra is None:
        return [out]
    return [ctx.add(f"{k.name}/activation", _activation_op(extra, out), [out], out.rank, out.layout)]


def _same_layout(ctx: BuildTarget, ins: list[KerasTensor]) -> tuple[list[KerasTensor], str]:
    want = ins[0].layout if ins[0].rank >= 2 else CHANNELS_LAST
    return [ctx.layout(t, want) for t in ins], want


# ---- core layers ------------------------------------------------------------------------------


@converter("Dense")
def _dense(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(2 if use_bias else 1)
    x = ctx.layout(ins[0], CHANNELS_LAST)
    fused, extra = _split_activation(k)
    state = {"weight": w[0].T}
    if use_bias:
        state["bias"] = w[1]
    op = Op("dense", {"in_features": int(w[0].shape[0]), "out_features": int(k.get("units", w[0].shape[1])),
                      "bias": use_bias, "activation": fused}, state)
    out = ctx.add(k.name, op, [x], x.rank, CHANNELS_LAST)
    return _with_activation(ctx, k, out, extra)


@converter("Activation")
def _activation(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    k.expect(0)
    x = ins[0]
    return [ctx.add(k.name, _activation_op(activation_name(k), x), [x], x.rank, x.layout)]


@converter("Dropout")
def _dropout(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    return [ctx.add(k.name, Op("dropout", {"p": float(k.get("rate", 0.0))}), [x], x.rank, x.layout)]


@converter("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")
def _spatial_dropout(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    dim = _keras_dim(x, 1 if k.get("data_format") == "channels_first" else -1)
    if dim not in (1, x.rank):
        x, _ = _spatial(ctx, k, x)
        dim = 1
    op = Op("spatial_dropout", {"rate": float(k.get("rate", 0.0)), "channels_last": dim != 1})
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


@converter("GaussianNoise")
def _gaussian_noise(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    return [ctx.add(k.name, Op("gaussian_noise", {"stddev": float(k.get("stddev", 0.0))}), [x], x.rank, x.layout)]


@converter("GaussianDropout")
def _gaussian_dropout(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    return [ctx.add(k.name, Op("gaussian_dropout", {"rate": float(k.get("rate", 0.0))}), [x], x.rank, x.layout)]


@converter("AlphaDropout")
def _alpha_dropout(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    return [ctx.add(k.name, Op("alpha_dropout", {"rate": float(k.get("rate", 0.0))}), [x], x.rank, x.layout)]


@converter("ActivityRegularization")
def _identity(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    return [ctx.add(k.name, Op("identity", {}), [x], x.rank, x.layout)]


@converter("Flatten")
def _flatten(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    # Keras flattens its own tensor's order, the next Dense's kernel rows follow it; with
    # data_format="channels_first" Keras first moves axis 1 to the end (keeping a model's Dense
    # weights valid across data formats), so the same move comes first here
    x = ctx.layout(ins[0], CHANNELS_LAST)
    if k.get("data_format") == "channels_first" and x.rank >= 2:
        x = ctx.add(f"{k.name}/channels_last", Op("permute", {"dims": to_cl_dims(x.rank)}), [x], x.rank, CHANNELS_LAST)
    return [ctx.add(k.name, Op("flatten", {}), [x], 1, CHANNELS_LAST)]


@converter("Reshape")
def _reshape(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ctx.layout(ins[0], CHANNELS_LAST)
    target = [int(d) for d in k.get("target_shape")]
    return [ctx.add(k.name, Op("reshape", {"shape": target}), [x], len(target), CHANNELS_LAST)]


@converter("Permute")
def _permute(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ctx.layout(ins[0], CHANNELS_LAST)
    dims = [int(d) - 1 for d in k.get("dims")]
    return [ctx.add(k.name, Op("permute", {"dims": dims}), [x], x.rank, CHANNELS_LAST)]


@converter("RepeatVector")
def _repeat(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    return [ctx.add(k.name, Op("repeat_vector", {"n": int(k.get("n"))}), [x], 2, CHANNELS_LAST)]


@converter("Rescaling")
def _rescaling(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    scale, offset = k.get("scale", 1.0), k.get("offset", 0.0)
    if not isinstance(scale, (int, float)) or not isinstance(offset, (int, float)):
        raise SourceError(f"keras layer {k.name!r} (Rescaling): only scalar scale and offset are supported")
    return [ctx.add(k.name, Op("rescaling", {"scale": float(scale), "offset": float(offset)}), [x], x.rank, x.layout)]


@converter("Embedding")
def _embedding(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    (w,) = k.expect(1)
    x = ins[0]
    op = Op("embedding", {"num_embeddings": int(w.shape[0]), "embedding_dim": int(w.shape[1])}, {"weight": w})
    out = ctx.add(k.name, op, [x], x.rank + 1, CHANNELS_LAST)
    if k.get("mask_zero"):
        # id 0 is padding: the mask goes with the output to every layer that consumes it
        mask = ctx.add(f"{k.name}/mask", Op("step_mask", {"kind": "ids"}), [x], x.rank, CHANNELS_LAST)
        out = KerasTensor(out.ref, out.rank, out.layout, out.index, mask)
    return [out]


@converter("Masking")
def _masking(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ctx.layout(ins[0], CHANNELS_LAST)
    mask = ctx.add(f"{k.name}/mask", Op("step_mask", {"kind": "features", "value": float(k.get("mask_value", 0.0))}),
                   [x], x.rank - 1, CHANNELS_LAST)
    out = ctx.add(k.name, Op("apply_mask", {}), [x, mask], x.rank, CHANNELS_LAST)
    return [KerasTensor(out.ref, out.rank, CHANNELS_LAST, None, mask)]


# ---- Keras 3 operations written as layers (the masks' computations) ---------------------------

_OPS = {"NotEqual": "not_equal", "Equal": "equal", "Any": "any", "All": "all", "LogicalOr": "logical_or",
        "LogicalAnd": "logical_and", "LogicalNot": "logical_not", "ExpandDims": "expand_dims",
        "ZerosLike": "zeros_like", "OnesLike": "ones_like"}


@converter(*_OPS)
def _keras_op(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    name = _OPS[k.cls]
    x = ins[0]
    xs = [ctx.layout(t, x.layout) for t in ins]
    args: dict[str, Any] = {"name": name}
    rank = x.rank
    if name in ("not_equal", "equal"):
        if len(ins) == 1:
            if len(k.consts) != 1 or not isinstance(k.consts[0], (int, float)):
                raise SourceError(f"keras layer {k.name!r} ({k.cls}): compares with {k.consts!r}; only a number is supported")
            args["value"] = float(k.consts[0])
    elif name == "expand_dims":
        axis = k.get("axis")
        if not isinstance(axis, int):
            raise SourceError(f"keras layer {k.name!r} ({k.cls}): axis {axis!r} is not supported; one axis")
        x = ctx.layout(x, CHANNELS_LAST)  # Keras's order: a Keras axis (batch 0) is the torch dimension
        xs = [x]
        args["dim"] = axis
        rank = x.rank + 1
    elif name in ("zeros_like", "ones_like"):
        dtype = str(k.get("dtype") or "float32")
        if dtype not in ("bool", "float32"):
            raise SourceError(f"keras layer {k.name!r} ({k.cls}): dtype {dtype!r} is not supported; bool, float32")
        args["dtype"] = dtype
    elif name in ("any", "all"):
        axis = k.get("axis")
        if not isinstance(axis, int):
            raise SourceError(f"keras layer {k.name!r} ({k.cls}): axis {axis!r} is not supported; one axis")
        args["dim"] = _keras_dim(x, axis)
        args["keepdims"] = bool(k.get("keepdims", False))
        rank = x.rank if args["keepdims"] else x.rank - 1
    return [ctx.add(k.name, Op("keras_op", args), xs, rank, x.layout if rank >= 2 else CHANNELS_LAST)]


# ---- layers of keras.applications models ------------------------------------------------------


@converter("LayerScale")
def _layer_scale(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    (gamma,) = k.expect(1)
    x = ins[0]
    op = Op("channel_scale", {"channels": int(gamma.shape[-1]), "dim": _keras_dim(x, -1)}, {"gamma": gamma.reshape(-1)})
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


@converter("StochasticDepth")
def _stochastic_depth(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    op = Op("stochastic_depth", {"rate": float(k.get("drop_path_rate", 0.0))})
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


# ---- attention ----------------------------------------------------------------------------------


def _attention_inputs(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor], names: tuple[str, ...]) -> tuple[list[KerasTensor], list[str]]:
    """query and value (positional, or a list), then the optional tensors the call passed."""
    if len(ins) < 2:
        raise SourceError(f"keras layer {k.name!r} ({k.cls}): needs a query and a value tensor")
    query, value = ins[0], ins[1]
    extra: dict[str, KerasTensor] = {}
    if len(ins) > 2:
        extra["key"] = ins[2]
    elif isinstance(k.kwargs.get("key"), KerasTensor):
        extra["key"] = k.kwargs["key"]
    for name in names:
        if isinstance(k.kwargs.get(name), KerasTensor):
            extra[name] = k.kwargs[name]
    # masks carried with the inputs (Keras 3 passes them as ``mask=[query_mask, value_mask]``)
    if query.mask is not None and "query_mask" in names:
        extra.setdefault("query_mask", query.mask)
    if value.mask is not None and "value_mask" in names:
        extra.setdefault("value_mask", value.mask)
    order = [n for n in ("key", *names) if n in extra]
    tensors = [ctx.layout(query, CHANNELS_LAST), ctx.layout(value, CHANNELS_LAST)]
    tensors += [ctx.layout(extra[n], CHANNELS_LAST) if n == "key" else extra[n] for n in order]
    return tensors, order


@converter("MultiHeadAttention")
def _mha(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(8 if use_bias else 4)
    if use_bias:
        qk, qb, kk, kb, vk, vb, ok, ob = w
    else:
        qk, kk, vk, ok = w
    if k.kwargs.get("return_attention_scores"):
        raise SourceError(f"keras layer {k.name!r} (MultiHeadAttention): return_attention_scores=True is not supported")
    if qk.ndim != 3 or ok.ndim != 3:
        raise SourceError(f"keras layer {k.name!r} (MultiHeadAttention): only a last-axis output projection is supported")
    tensors, order = _attention_inputs(ctx, k, ins, ("attention_mask", "query_mask", "value_mask", "key_mask"))
    rank = tensors[0].rank
    axes = k.get("attention_axes")
    axes = list(range(1, rank)) if axes is None else [a if a >= 0 else rank + 1 + a for a in
                                                      (axes if isinstance(axes, (list, tuple)) else [axes])]
    if rank != 2 and any(n.endswith("mask") for n in order):
        raise SourceError(f"keras layer {k.name!r} (MultiHeadAttention): masks on inputs of rank {rank + 1} are not supported")
    state = {"query_kernel": qk, "key_kernel": kk, "value_kernel": vk, "output_kernel": ok}
    if use_bias:
        state.update(query_bias=qb, key_bias=kb, value_bias=vb, output_bias=ob)
    op = Op("keras_multi_head_attention", {
        "num_heads": int(qk.shape[1]), "key_dim": int(qk.shape[2]), "value_dim": int(vk.shape[2]),
        "query_in": int(qk.shape[0]), "key_in": int(kk.shape[0]), "value_in": int(vk.shape[0]),
        "output_dim": int(ok.shape[2]), "use_bias": use_bias, "dropout": float(k.get("dropout", 0.0)),
        "causal": bool(k.kwargs.get("use_causal_mask", False)), "inputs": order, "attention_dims": sorted(axes),
    }, state)
    return [ctx.add(k.name, op, tensors, rank, CHANNELS_LAST)]


@converter("Attention", "AdditiveAttention")
def _attention(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    if k.kwargs.get("return_attention_scores"):
        raise SourceError(f"keras layer {k.name!r} ({k.cls}): return_attention_scores=True is not supported")
    tensors, order = _attention_inputs(ctx, k, ins, ("query_mask", "value_mask"))
    use_scale = bool(k.get("use_scale", k.cls == "AdditiveAttention"))
    kind = "additive" if k.cls == "AdditiveAttention" else str(k.get("score_mode", "dot"))
    w = list(k.expect(int(use_scale) + int(kind == "concat")))
    state = {}
    if use_scale:
        state["scale"] = w.pop(0)
    if kind == "concat":
        state["concat_weight"] = w.pop(0)
    dim = int(ctx.shape(tensors[0])[-1])
    op = Op("keras_attention", {"kind": kind, "dim": dim, "use_scale": use_scale, "dropout": float(k.get("dropout", 0.0)),
                                "causal": bool(k.kwargs.get("use_causal_mask", False)), "inputs": order}, state)
    return [ctx.add(k.name, op, tensors, tensors[0].rank, CHANNELS_LAST)]


# ---- activations as layers --------------------------------------------------------------------


@converter("LeakyReLU")
def _leaky(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    slope = k.get("negative_slope", k.get("alpha", 0.3))
    return [ctx.add(k.name, Op("activation", {"name": "leaky_relu", "alpha": float(slope)}), [x], x.rank, x.layout)]


@converter("ELU")
def _elu(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    return [ctx.add(k.name, Op("activation", {"name": "elu", "alpha": float(k.get("alpha", 1.0))}), [x], x.rank, x.layout)]


@converter("ReLU")
def _relu(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    mx = k.get("max_value")
    slope = float(k.get("negative_slope", 0.0) or 0.0)
    thr = float(k.get("threshold", 0.0) or 0.0)
    if slope == 0 and thr == 0 and mx is None:
        op = Op("activation", {"name": "relu"})
    elif slope == 0 and thr == 0 and mx is not None and float(mx) == 6.0:
        op = Op("activation", {"name": "relu6"})
    else:
        op = Op("keras_relu", {"max_value": None if mx is None else float(mx), "negative_slope": slope, "threshold": thr})
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


@converter("Softmax")
def _softmax(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    axis = k.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise SourceError(f"keras layer {k.name!r} (Softmax): a softmax over several axes is not supported")
        axis = axis[0]
    dim = _keras_dim(x, int(axis))
    return [ctx.add(k.name, Op("activation", {"name": "softmax", "dim": dim}), [x], x.rank, x.layout)]


@converter("ThresholdedReLU")
def _thresholded(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    return [ctx.add(k.name, Op("thresholded_relu", {"theta": float(k.get("theta", 1.0))}), [x], x.rank, x.layout)]


@converter("PReLU")
def _prelu(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    (alpha,) = k.expect(1)
    x = ins[0]
    if x.layout == CHANNELS_FIRST and alpha.ndim >= 2:
        alpha = np.moveaxis(alpha, -1, 0)  # Keras's per-sample order -> the tensor's
    op = Op("prelu", {"shape": [int(d) for d in alpha.shape]}, {"alpha": alpha})
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


# ---- convolutions -----------------------------------------------------------------------------


def _spatial(ctx: BuildTarget, k: KerasLayer, t: KerasTensor) -> tuple[KerasTensor, str]:
    """``t`` laid out as a spatial layer computes (channels right after the batch axis), and the
    layout tag of the layer's output.

    A channels_last layer needs Keras's tensor with its last axis moved to the front (``CHANNELS_FIRST``); a
    channels_first layer's Keras tensor already has the channels first, so it computes on
    Keras's own order (``CHANNELS_LAST``).
    """
    if str(k.get("data_format") or "channels_last") == "channels_first":
        return ctx.layout(t, CHANNELS_LAST), CHANNELS_LAST
    return ctx.layout(t, CHANNELS_FIRST), CHANNELS_FIRST


_KERNEL_PERM = {1: (2, 1, 0), 2: (3, 2, 0, 1), 3: (4, 3, 0, 1, 2)}  # (*k, in, out) -> (out, in, *k)


def _dims_of(cls: str) -> int:
    return int(cls.rstrip("D")[-1]) if cls[-2:] in ("1D", "2D", "3D") else 2


@converter("Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D")
def _conv(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    dims = _dims_of(k.cls)
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(2 if use_bias else 1)
    x, lay = _spatial(ctx, k, ins[0])
    kernel = w[0]
    groups = int(k.get("groups", 1) or 1)
    ks = list(kernel.shape[:dims])
    dilation = _tuple(k.get("dilation_rate", 1), dims)
    pad_mode = str(k.get("padding", "valid")).lower()
    if pad_mode == "causal":
        if dims != 1:
            raise SourceError(f"keras layer {k.name!r}: causal padding is for Conv1D only")
        left = (ks[0] - 1) * dilation[0]
        x = ctx.add(f"{k.name}/causal_pad", Op("zero_padding1d", {"padding": [left, 0]}), [x], x.rank, lay)
        padding: str | int = 0
    else:
        padding = _padding(k)
    state = {"conv.weight": kernel.transpose(_KERNEL_PERM[dims])}
    if use_bias:
        state["conv.bias"] = w[1]
    fused, extra = _split_activation(k)
    op = Op(f"conv{dims}d", {
        "in_channels": int(kernel.shape[-2]) * groups, "out_channels": int(k.get("filters", kernel.shape[-1])),
        "kernel_size": ks,
        "stride": _tuple(k.get("strides", 1), dims), "padding": padding, "dilation": dilation, "groups": groups,
        "bias": use_bias, "activation": fused,
    }, state)
    out = ctx.add(k.name, op, [x], x.rank, lay)
    return _with_activation(ctx, k, out, extra)


def _transpose_window(k: KerasLayer, ks: list[int], strides: list[int], dilation: list[int], out_pad: Any) -> list[list[int]]:
    """Per spatial axis, the positions Keras drops (negative: adds) at each end of torch's full
    transposed-conv output, given ``output_padding``.

    Keras computes a transposed conv as a conv of the stride-dilated input padded by
    ``(left, right)``: 'valid' pads ``k - 1`` and ``k - 1 + output_padding``; 'same' pads
    ``k + k % 2 - 2 + output_padding`` in all, ``min(ceil(half), k - 1)`` of it on the left. torch's
    full output is that conv padded by ``k - 1`` on both sides.
    """
    same = str(k.get("padding", "valid")).lower() == "same"
    ops = _tuple(out_pad, len(ks))
    crops = []
    for kk, d, op in zip(ks, dilation, ops):
        eff = (kk - 1) * d + 1
        if same:
            total = eff + eff % 2 - 2 + op
            left = min(total // 2 + total % 2, eff - 1)
            right = total - left
        else:
            left, right = eff - 1, eff - 1 + op
        crops.append([eff - 1 - left, eff - 1 - right])
    return crops


@converter("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Convolution2DTranspose", "Convolution3DTranspose",
           "Deconvolution2D", "Deconvolution3D")
def _conv_transpose(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    dims = int(k.cls.replace("Transpose", "").rstrip("D")[-1])
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(2 if use_bias else 1)
    x, lay = _spatial(ctx, k, ins[0])
    kernel = w[0]  # (*k, out, in)
    ks = list(kernel.shape[:dims])
    strides = _tuple(k.get("strides", 1), dims)
    dilation = _tuple(k.get("dilation_rate", 1), dims)
    out_pad = k.get("output_padding")
    groups = int(k.get("groups", 1) or 1)
    fused, extra = _split_activation(k)
    common = {"in_channels": int(kernel.shape[-1]), "out_channels": int(kernel.shape[-2]) * groups,
              "kernel_size": ks, "stride": strides, "dilation": dilation, "groups": groups, "bias": use_bias,
              "activation": fused}
    weight = kernel.transpose(_KERNEL_PERM[dims])  # -> (in, out, *k)
    if out_pad is not None:
        state = {"conv.weight": weight, **({"bias": w[1]} if use_bias else {})}
        crops = _transpose_window(k, ks, strides, dilation, out_pad)
        op = Op("window_conv_transpose", {"dims": dims, "crops": crops, **common}, state)
    else:
        state = {"conv.weight": weight, **({"conv.bias": w[1]} if use_bias else {})}
        op = Op(f"conv_transpose{dims}d", {"padding": _padding(k), **common}, state)
    out = ctx.add(k.name, op, [x], x.rank, lay)
    return _with_activation(ctx, k, out, extra)


def _depthwise_weight(kernel: np.ndarray) -> np.ndarray:
    # (*k, in, mult) -> (in * mult, 1, *k); output channel c * mult + m, as torch groups it
    *ks, cin, mult = kernel.shape
    return np.moveaxis(kernel.reshape(*ks, cin * mult), -1, 0)[:, None]


@converter("DepthwiseConv2D", "DepthwiseConv1D")
def _depthwise(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    dims = _dims_of(k.cls)
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(2 if use_bias else 1)
    x, lay = _spatial(ctx, k, ins[0])
    kernel = w[0]
    cin, mult = int(kernel.shape[-2]), int(kernel.shape[-1])
    state = {"conv.weight": _depthwise_weight(kernel)}
    if use_bias:
        state["conv.bias"] = w[1]
    fused, extra = _split_activation(k)
    args = {"kernel_size": list(kernel.shape[:dims]), "stride": _tuple(k.get("strides", 1), dims),
            "padding": _padding(k), "dilation": _tuple(k.get("dilation_rate", 1), dims), "bias": use_bias,
            "activation": fused}
    if dims == 2:
        op = Op("depthwise_conv2d", {"in_channels": cin, "depth_multiplier": mult, **args}, state)
    else:
        op = Op("conv1d", {"in_channels": cin, "out_channels": cin * mult, "groups": cin, **args}, state)
    out = ctx.add(k.name, op, [x], x.rank, lay)
    return _with_activation(ctx, k, out, extra)


@converter("SeparableConv2D", "SeparableConvolution2D")
def _separable(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(3 if use_bias else 2)
    x, lay = _spatial(ctx, k, ins[0])
    dk, pk = w[0], w[1]  # (kh, kw, in, mult), (1, 1, in * mult, out)
    state = {"depthwise.conv.weight": _depthwise_weight(dk), "pointwise.conv.weight": pk.transpose(3, 2, 0, 1)}
    if use_bias:
        state["pointwise.conv.bias"] = w[2]
    fused, extra = _split_activation(k)
    op = Op("separable_conv2d", {
        "in_channels": int(dk.shape[2]), "out_channels": int(pk.shape[3]), "kernel_size": list(dk.shape[:2]),
        "depth_multiplier": int(dk.shape[3]), "stride": _tuple(k.get("strides", 1), 2), "padding": _padding(k),
        "dilation": _tuple(k.get("dilation_rate", 1), 2), "bias": use_bias, "activation": fused,
    }, state)
    out = ctx.add(k.name, op, [x], x.rank, lay)
    return _with_activation(ctx, k, out, extra)


# ---- padding, cropping, upsampling, pooling -----------------------------------------------------


def _pairs(v: Any, n: int) -> list[int]:
    """Keras padding/cropping (int, (a, b) or ((a, b), (c, d))) as a flat before/after list."""
    if isinstance(v, int):
        return [v] * (2 * n)
    v = list(v)
    if n == 1:
        return [int(v[0]), int(v[1])] if len(v) == 2 else [int(v[0])] * 2
    out: list[int] = []
    for item in v:
        out += [int(item)] * 2 if isinstance(item, int) else [int(item[0]), int(item[1])]
    return out


@converter("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
def _zero_pad(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    n = _dims_of(k.cls)
    x, lay = _spatial(ctx, k, ins[0])
    return [ctx.add(k.name, Op(f"zero_padding{n}d", {"padding": _pairs(k.get("padding", 1), n)}), [x], x.rank, lay)]


@converter("Cropping1D", "Cropping2D", "Cropping3D")
def _crop(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    n = _dims_of(k.cls)
    x, lay = _spatial(ctx, k, ins[0])
    return [ctx.add(k.name, Op(f"cropping{n}d", {"cropping": _pairs(k.get("cropping", 0), n)}), [x], x.rank, lay)]


@converter("UpSampling1D")
def _up1(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x, lay = _spatial(ctx, k, ins[0])
    return [ctx.add(k.name, Op("upsample1d", {"size": _tuple(k.get("size", 2), 1)[0]}), [x], x.rank, lay)]


@converter("UpSampling2D")
def _up2(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x, lay = _spatial(ctx, k, ins[0])
    mode = str(k.get("interpolation", "nearest"))
    if mode not in ("nearest", "bilinear"):
        raise SourceError(f"keras layer {k.name!r} (UpSampling2D): interpolation {mode!r} is not supported; valid: nearest, bilinear")
    op = Op("upsample2d", {"scale_factor": _tuple(k.get("size", 2), 2), "mode": mode})
    return [ctx.add(k.name, op, [x], x.rank, lay)]


@converter("UpSampling3D")
def _up3(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x, lay = _spatial(ctx, k, ins[0])
    return [ctx.add(k.name, Op("upsample3d", {"size": _tuple(k.get("size", 2), 3)}), [x], x.rank, lay)]


@converter("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
           "MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D")
def _pool(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    n = _dims_of(k.cls)
    kind = "max" if k.cls.startswith("Max") else "avg"
    x, lay = _spatial(ctx, k, ins[0])
    size = _tuple(k.get("pool_size", 2), n)
    strides = k.get("strides")
    op = Op(f"{kind}_pool{n}d", {"kernel_size": size, "stride": size if strides is None else _tuple(strides, n),
                                 "padding": _padding(k)})
    return [ctx.add(k.name, op, [x], x.rank, lay)]


@converter("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
           "GlobalMaxPooling2D", "GlobalMaxPooling3D", "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalAvgPool3D",
           "GlobalMaxPool1D", "GlobalMaxPool2D", "GlobalMaxPool3D")
def _global_pool(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    kind = "max" if "Max" in k.cls else "avg"
    mask = ins[0].mask
    if mask is not None and kind == "avg" and k.cls.endswith("1D") and not k.get("keepdims"):
        # the mean over the unmasked steps only
        if k.get("data_format") == "channels_first":
            raise SourceError(f"keras layer {k.name!r}: a masked channels_first GlobalAveragePooling1D is not supported")
        x = ctx.layout(ins[0], CHANNELS_LAST)
        return [ctx.add(k.name, Op("masked_mean", {}), [x, mask], 1, CHANNELS_LAST)]
    x, lay = _spatial(ctx, k, ins[0])
    keep = bool(k.get("keepdims", False))
    return [ctx.add(k.name, Op(f"global_{kind}_pool", {"keepdims": keep}), [x], x.rank if keep else 1, lay)]


@converter("CenterCrop")
def _center_crop(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x, lay = _spatial(ctx, k, ins[0])
    if x.rank != 3:
        raise SourceError(f"keras layer {k.name!r} (CenterCrop): only single images (rank 3 per sample) are supported")
    h, w = int(k.get("height")), int(k.get("width"))
    shape = ctx.value(x).shape
    if shape[-2] < h or shape[-1] < w:
        raise SourceError(f"keras layer {k.name!r} (CenterCrop): the input ({shape[-2]}x{shape[-1]}) is smaller than the "
                          f"crop ({h}x{w}); Keras resizes then, which is not supported")
    return [ctx.add(k.name, Op("center_crop", {"height": h, "width": w}), [x], x.rank, lay)]


@converter("Resizing")
def _resizing(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x, lay = _spatial(ctx, k, ins[0])
    mode = str(k.get("interpolation", "bilinear"))
    if mode not in ("nearest", "bilinear", "bicubic"):
        raise SourceError(f"keras layer {k.name!r} (Resizing): interpolation {mode!r} is not supported; "
                          "valid: nearest, bilinear, bicubic")
    if k.get("crop_to_aspect_ratio") or k.get("pad_to_aspect_ratio"):
        raise SourceError(f"keras layer {k.name!r} (Resizing): crop_to_aspect_ratio / pad_to_aspect_ratio are not supported")
    if x.rank != 3:
        raise SourceError(f"keras layer {k.name!r} (Resizing): only single images (rank 3 per sample) are supported")
    op = Op("resize", {"height": int(k.get("height")), "width": int(k.get("width")), "interpolation": mode,
                       "antialias": bool(k.get("antialias", False))})
    return [ctx.add(k.name, op, [x], x.rank, lay)]


# ---- normalization ------------------------------------------------------------------------------


def _axes(k: KerasLayer, rank: int) -> list[int]:
    axis = k.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return sorted(int(a) if int(a) >= 0 else rank + 1 + int(a) for a in axes)


@converter("BatchNormalization")
def _batchnorm(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    axes = _axes(k, x.rank)
    if len(axes) != 1 or not 1 <= axes[0] <= x.rank:
        raise SourceError(f"keras layer {k.name!r} (BatchNormalization): axis {k.get('axis')} is not supported; "
                          "one axis other than the batch axis")
    if k.get("renorm"):
        raise SourceError(f"keras layer {k.name!r} (BatchNormalization): renorm=True is not supported")
    center, scale = bool(k.get("center", True)), bool(k.get("scale", True))
    w = list(k.expect(2 + center + scale))
    gamma = w.pop(0) if scale else None
    beta = w.pop(0) if center else None
    mean, var = w
    affine = center or scale
    state = {"running_mean": mean, "running_var": var}
    if affine:
        state["weight"] = gamma if gamma is not None else np.ones_like(mean)
        state["bias"] = beta if beta is not None else np.zeros_like(mean)
    args = {"num_features": int(mean.shape[0]), "eps": float(k.get("epsilon", 1e-3)),
            "momentum": 1.0 - float(k.get("momentum", 0.99)), "affine": affine}
    if axes[0] == x.rank and x.rank <= 3:
        # the channels (last) axis: torch's own BatchNorm on the channels-first tensor
        x = ctx.layout(x, CHANNELS_FIRST)
        op = Op("batchnorm2d" if x.rank == 3 else "batchnorm1d", args, state)
    else:
        dim = _keras_dim(x, axes[0])
        if dim == 1 and x.rank <= 3:
            op = Op("batchnorm2d" if x.rank == 3 else "batchnorm1d", args, state)
        else:
            op = Op("axis_batchnorm", {**args, "dim": dim}, {f"bn.{key}": v for key, v in state.items()})
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


@converter("LayerNormalization")
def _layernorm(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ctx.layout(ins[0], CHANNELS_LAST)
    rms = bool(k.get("rms_scaling", False))
    axes = _axes(k, x.rank)
    if not all(1 <= a <= x.rank for a in axes):
        raise SourceError(f"keras layer {k.name!r} (LayerNormalization): axis {k.get('axis')} is out of range")
    full = list(ctx.shape(x))
    shape = [full[a - 1] for a in axes]
    center, scale = bool(k.get("center", True)) and not rms, bool(k.get("scale", True))
    w = list(k.expect(int(center) + int(scale), int(bool(k.get("center", True))) + int(scale)))
    gamma = w.pop(0).reshape(shape) if scale else None
    beta = w.pop(0).reshape(shape) if center and w else None
    eps = float(k.get("epsilon", 1e-3))
    trailing = axes == list(range(x.rank - len(axes) + 1, x.rank + 1))
    if trailing and not rms:
        affine = center or scale
        state: dict[str, np.ndarray] = {}
        if affine:
            state["weight"] = gamma if gamma is not None else np.ones(shape, np.float32)
            if center:
                state["bias"] = beta  # type: ignore[assignment]
        op = Op("layernorm", {"normalized_shape": shape, "eps": eps, "elementwise_affine": affine, "bias": center}, state)
        return [ctx.add(k.name, op, [x], x.rank, CHANNELS_LAST)]
    bshape = [full[i - 1] if i in axes else 1 for i in range(1, x.rank + 1)]
    state = {}
    if gamma is not None:
        state["weight"] = gamma.reshape(bshape)
    if beta is not None:
        state["bias"] = beta.reshape(bshape)
    op = Op("axis_layernorm", {"dims": axes, "shape": bshape, "eps": eps, "center": center, "scale": scale,
                               "rms_scaling": rms}, state)
    return [ctx.add(k.name, op, [x], x.rank, CHANNELS_LAST)]


@converter("GroupNormalization")
def _groupnorm(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ins[0]
    axes = _axes(k, x.rank)
    if len(axes) != 1:
        raise SourceError(f"keras layer {k.name!r} (GroupNormalization): one channel axis is supported")
    if axes[0] == x.rank and x.rank >= 2:
        x = ctx.layout(x, CHANNELS_FIRST)
    dim = _keras_dim(x, axes[0])
    center, scale = bool(k.get("center", True)), bool(k.get("scale", True))
    w = list(k.expect(int(center) + int(scale)))
    channels = int(ctx.value(x).shape[dim])
    state = {}
    if scale:
        state["weight"] = w.pop(0)
    if center:
        state["bias"] = w.pop(0)
    op = Op("axis_groupnorm", {"groups": int(k.get("groups", 32)), "num_channels": channels, "dim": dim,
                               "eps": float(k.get("epsilon", 1e-3)), "center": center, "scale": scale}, state)
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


@converter("Normalization")
def _normalization(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    x = ctx.layout(ins[0], CHANNELS_LAST)
    full = list(ctx.shape(x))
    axis = k.get("axis", -1)
    axes = [] if axis is None else _axes(k, x.rank)
    bshape = [full[i - 1] if i in axes else 1 for i in range(1, x.rank + 1)]
    keep = [full[a - 1] for a in axes]
    if len(k.weights) >= 2:
        mean, var = np.asarray(k.weights[0], np.float32), np.asarray(k.weights[1], np.float32)
    elif k.get("mean") is not None and k.get("variance") is not None:
        mean = np.asarray(k.get("mean"), np.float32)
        var = np.asarray(k.get("variance"), np.float32)
    else:
        raise SourceError(f"keras layer {k.name!r} (Normalization): neither stored statistics nor mean/variance in its config")
    size = int(np.prod(keep)) if keep else 1
    mean = mean.reshape(keep) if mean.size == size else np.broadcast_to(mean, keep)
    var = var.reshape(keep) if var.size == size else np.broadcast_to(var, keep)
    op = Op("keras_normalization", {"shape": bshape, "invert": bool(k.get("invert", False))},
            {"mean": mean.reshape(bshape), "variance": var.reshape(bshape)})
    return [ctx.add(k.name, op, [x], x.rank, CHANNELS_LAST)]


# ---- merging ------------------------------------------------------------------------------------


@converter("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def _merge(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    xs, layout = _same_layout(ctx, ins)
    op = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
          "Maximum": "maximum", "Minimum": "minimum"}[k.cls]
    return [ctx.add(k.name, Op(op, {}), xs, xs[0].rank, layout)]


@converter("Concatenate")
def _concat(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    xs, layout = _same_layout(ctx, ins)
    dim = _keras_dim(xs[0], int(k.get("axis", -1)))
    return [ctx.add(k.name, Op("concat", {"dim": dim}), xs, xs[0].rank, layout)]


# ---- recurrent layers ---------------------------------------------------------------------------

_RNN_CELLS = {"SimpleRNN": "simple", "LSTM": "lstm", "GRU": "gru"}


def _gru_to_torch(a: np.ndarray, units: int) -> np.ndarray:
    """Keras GRU gate blocks z, r, h (last axis) -> torch's r, z, n."""
    z, r, h = a[..., :units], a[..., units:2 * units], a[..., 2 * units:]
    return np.concatenate([r, z, h], axis=-1)


def _rnn_settings(k: KerasLayer, cfg: dict[str, Any]) -> dict[str, Any]:
    sub = KerasLayer(k.name, k.cls, cfg, [], k.version)
    if cfg.get("time_major"):
        raise SourceError(f"keras layer {k.name!r}: time_major=True is not supported; inputs are (batch, time, features)")
    if cfg.get("stateful"):
        warn(f"keras layer {k.name!r}: stateful=True is imported as stateless")
    return {
        "units": int(cfg["units"]),
        "activation": activation_name(sub, "activation", "tanh"),
        "recurrent_activation": activation_name(sub, "recurrent_activation", "sigmoid"),
        "use_bias": bool(cfg.get("use_bias", True)),
        "return_sequences": bool(cfg.get("return_sequences", False)),
        "go_backwards": bool(cfg.get("go_backwards", False)),
        "reset_after": bool(cfg.get("reset_after", True)),
        "return_state": bool(cfg.get("return_state", False)),
        "zero_output_for_mask": bool(cfg.get("zero_output_for_mask", False)),
    }


def _torch_native(cell: str, s: dict[str, Any]) -> bool:
    """Can torch's fused LSTM/GRU compute this exactly?"""
    return (
        cell in ("lstm", "gru")
        and s["activation"] == "tanh"
        and s["recurrent_activation"] == "sigmoid"
        and not s["go_backwards"]
        and (cell == "lstm" or s["reset_after"])
    )


def _torch_rnn_state(cell: str, w: list[np.ndarray], units: int, use_bias: bool, suffix: str) -> dict[str, np.ndarray]:
    kernel, rec = w[0], w[1]
    if cell == "gru":
        kernel, rec = _gru_to_torch(kernel, units), _gru_to_torch(rec, units)
    state = {f"rnn.weight_ih_l0{suffix}": kernel.T, f"rnn.weight_hh_l0{suffix}": rec.T}
    if use_bias:
        bias = w[2]
        if cell == "gru":
            b_in, b_rec = _gru_to_torch(bias[0], units), _gru_to_torch(bias[1], units)
        else:
            b_in, b_rec = bias, np.zeros_like(bias)
        state[f"rnn.bias_ih_l0{suffix}"] = b_in
        state[f"rnn.bias_hh_l0{suffix}"] = b_rec
    return state


def _rnn_op(cell: str, s: dict[str, Any], input_size: int, fwd: list[np.ndarray], bwd: list[np.ndarray] | None,
            merge_mode: str, masked: bool = False, initial_states: int = 0) -> Op:
    bidirectional = bwd is not None
    extended = masked or initial_states or s["return_state"]
    if not extended and _torch_native(cell, s) and (not bidirectional or merge_mode == "concat"):
        state = _torch_rnn_state(cell, fwd, s["units"], s["use_bias"], "")
        if bwd is not None:
            state.update(_torch_rnn_state(cell, bwd, s["units"], s["use_bias"], "_reverse"))
        return Op(cell, {"input_size": input_size, "hidden_size": s["units"], "bidirectional": bidirectional,
                         "return_sequences": s["return_sequences"], "bias": s["use_bias"]}, state)
    state = {"kernel": fwd[0], "recurrent_kernel": fwd[1]}
    if s["use_bias"]:
        state["bias"] = fwd[2]
    if bwd is not None:
        state.update({"backward_kernel": bwd[0], "backward_recurrent_kernel": bwd[1]})
        if s["use_bias"]:
            state["backward_bias"] = bwd[2]
    return Op("keras_rnn", {"cell": cell, "input_size": input_size, **s, "bidirectional": bidirectional,
                            "merge_mode": merge_mode, "masked": masked, "initial_states": initial_states}, state)


def _rnn_outputs(ctx: BuildTarget, k: KerasLayer, cell: str, s: dict[str, Any], x: KerasTensor, inits: list[KerasTensor], op: Op,
                 n_seq: int) -> list[KerasTensor]:
    """Add the recurrent node (sequence, mask, initial states in) and list its output tensors."""
    ins = [x] + ([x.mask] if x.mask is not None else []) + [ctx.layout(t, CHANNELS_LAST) for t in inits]
    rank = 2 if s["return_sequences"] else 1
    n_states = (2 if cell == "lstm" else 1) * (2 if n_seq == 2 or op.args.get("bidirectional") else 1)
    out = ctx.add(k.name, op, ins, rank, CHANNELS_LAST)
    if not s["return_state"] and n_seq == 1:
        outs = [out]
    else:
        outs = [KerasTensor(out.ref, rank, CHANNELS_LAST, i) for i in range(n_seq)]
        outs += [KerasTensor(out.ref, 1, CHANNELS_LAST, n_seq + i) for i in range(n_states if s["return_state"] else 0)]
    if x.mask is not None and s["return_sequences"]:
        outs = [KerasTensor(o.ref, o.rank, o.layout, o.index, x.mask) if o.rank == 2 else o for o in outs]
    return outs


@converter("SimpleRNN", "LSTM", "GRU")
def _rnn(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    cell = _RNN_CELLS[k.cls]
    s = _rnn_settings(k, k.cfg)
    w = k.expect(3 if s["use_bias"] else 2)
    x = ctx.layout(ins[0], CHANNELS_LAST)
    x = KerasTensor(x.ref, x.rank, x.layout, x.index, ins[0].mask)
    op = _rnn_op(cell, s, int(w[0].shape[0]), list(w), None, "concat", ins[0].mask is not None, len(ins) - 1)
    return _rnn_outputs(ctx, k, cell, s, x, ins[1:], op, 1)


@converter("Bidirectional")
def _bidirectional(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    inner = k.get("layer") or {}
    cls = inner.get("class_name")
    if cls not in _RNN_CELLS:
        raise SourceError(f"keras layer {k.name!r} (Bidirectional): wraps {cls!r}; supported: {', '.join(_RNN_CELLS)}")
    s = _rnn_settings(k, inner["config"])
    back = k.get("backward_layer")
    if back and int(back["config"]["units"]) != s["units"]:
        raise SourceError(f"keras layer {k.name!r} (Bidirectional): a backward layer of another size is not supported")
    # Keras outputs zeros at masked steps of both directions' sequences before merging them
    s["zero_output_for_mask"] = s["return_sequences"]
    per = 3 if s["use_bias"] else 2
    w = k.expect(2 * per)
    merge = k.get("merge_mode", "concat")
    merge = "none" if merge is None else str(merge)
    x = ctx.layout(ins[0], CHANNELS_LAST)
    x = KerasTensor(x.ref, x.rank, x.layout, x.index, ins[0].mask)
    op = _rnn_op(_RNN_CELLS[cls], s, int(w[0].shape[0]), list(w[:per]), list(w[per:]), merge,
                 ins[0].mask is not None, len(ins) - 1)
    return _rnn_outputs(ctx, k, _RNN_CELLS[cls], s, x, ins[1:], op, 2 if merge == "none" else 1)


@converter("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")
def _conv_lstm(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    dims = int(k.cls[-2])
    if len(ins) != 1:
        raise SourceError(f"keras layer {k.name!r} ({k.cls}): initial states are not supported")
    if ins[0].mask is not None:
        raise SourceError(f"keras layer {k.name!r} ({k.cls}): a step mask (Masking) into it is not supported")
    if k.get("stateful"):
        warn(f"keras layer {k.name!r}: stateful=True is imported as stateless")
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(3 if use_bias else 2)
    perm = (dims + 1, dims, *range(dims))  # Keras (*kernel, in, out) -> torch (out, in, *kernel)
    state = {"kernel": w[0].transpose(perm), "recurrent_kernel": w[1].transpose(perm)}
    if use_bias:
        state["bias"] = w[2]
    seq, ret_state = bool(k.get("return_sequences", False)), bool(k.get("return_state", False))
    args = {
        "dims": dims, "in_channels": int(w[0].shape[dims]), "filters": int(k.get("filters")),
        "kernel_size": _tuple(k.get("kernel_size"), dims), "strides": _tuple(k.get("strides", 1), dims),
        "padding": str(k.get("padding", "valid")).lower(), "dilation": _tuple(k.get("dilation_rate", 1), dims),
        "activation": activation_name(k, "activation", "tanh"),
        "recurrent_activation": activation_name(k, "recurrent_activation", "sigmoid"),
        "use_bias": use_bias, "return_sequences": seq, "go_backwards": bool(k.get("go_backwards", False)),
        "return_state": ret_state, "channels_last": k.get("data_format", "channels_last") != "channels_first",
    }
    if args["padding"] not in ("valid", "same"):
        raise SourceError(f"keras layer {k.name!r} ({k.cls}): padding {args['padding']!r}; supported: valid, same")
    x = ctx.layout(ins[0], CHANNELS_LAST)
    rank = dims + 2 if seq else dims + 1
    out = ctx.add(k.name, Op("keras_conv_lstm", args, state), [x], rank, CHANNELS_LAST)
    if not ret_state:
        return [out]
    return [KerasTensor(out.ref, rank, CHANNELS_LAST, 0), KerasTensor(out.ref, dims + 1, CHANNELS_LAST, 1),
            KerasTensor(out.ref, dims + 1, CHANNELS_LAST, 2)]


@converter("TimeDistributed")
def _time_distributed(ctx: BuildTarget, k: KerasLayer, ins: list[KerasTensor]) -> list[KerasTensor]:
    inner = k.get("layer") or {}
    cls = inner.get("class_name")
    if cls not in CONVERTERS or cls in ("TimeDistributed", "Bidirectional"):
        raise SourceError(f"keras layer {k.name!r} (TimeDistributed): wrapping {cls!r} is not supported")
    x = ctx.layout(ins[0], CHANNELS_LAST)
    example = ctx.value(ctx.plain(x))
    chain = Chain(example.reshape(-1, *example.shape[2:]), meta=getattr(ctx, "meta", False))
    sub = KerasLayer(str(inner["config"].get("name", cls)), cls, inner["config"], k.weights, k.version)
    out = convert_layer(chain, sub, [KerasTensor("step", x.rank - 1, CHANNELS_LAST)])
    if len(out) != 1:
        raise SourceError(f"keras layer {k.name!r} (TimeDistributed): the wrapped layer must have one output")
    last = chain.layout(out[0], CHANNELS_LAST)
    layers, state = [], {}
    for i, op in enumerate(chain.ops):
        layers.append({"type": op.type, "args": op.args})
        state.update({f"body.{i}.{key}": v for key, v in op.state.items()})
    return [ctx.add(k.name, Op("time_distributed", {"layers": layers}, state), [x], last.rank + 1, CHANNELS_LAST)]
