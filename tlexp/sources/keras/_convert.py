"""One converter per Keras layer class: Keras config + weights -> registry layers.

A converter receives the layer (its node name, config, weight arrays in Keras's order, the file's
Keras major version) and its input tensors, asks the builder for the layout it needs, adds its
node(s) and returns its output tensor(s). Kernels are converted to torch's layouts here (HWIO ->
OIHW, (in, out) -> (out, in), GRU gates z, r, h -> r, z, n, ...).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlexp.errors import SourceError, choices
from tlexp.graph._layers_keras import KERAS_ACTIVATIONS
from tlexp.sources.keras._builder import CF, CL, Builder, Chain, Op, T

__all__ = ["KLayer", "CONVERTERS", "supported_classes", "convert_layer"]

Ctx = Builder | Chain


@dataclass
class KLayer:
    name: str
    cls: str
    cfg: dict[str, Any]
    weights: list[np.ndarray]
    version: int

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


Converter = Callable[[Ctx, KLayer, list[T]], list[T]]
CONVERTERS: dict[str, Converter] = {}


def converter(*names: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for n in names:
            CONVERTERS[n] = fn
        return fn

    return deco


def supported_classes() -> list[str]:
    return sorted(CONVERTERS)


def convert_layer(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    if k.cfg.get("data_format") == "channels_first":
        raise SourceError(
            f"keras layer {k.name!r} ({k.cls}): data_format='channels_first' is not supported; "
            "tlexp imports channels_last Keras models (the Keras default)"
        )
    return CONVERTERS[k.cls](ctx, k, ins)


# ---- helpers ----------------------------------------------------------------------------------


def _tuple(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        v = list(v)
        return [int(x) for x in (v * n if len(v) == 1 else v)]
    return [int(v)] * n


def _padding(k: KLayer) -> str | int:
    pad = str(k.get("padding", "valid")).lower()
    if pad not in ("valid", "same"):
        raise SourceError(f"keras layer {k.name!r} ({k.cls}): padding {pad!r} is not supported; valid: valid, same")
    return "same" if pad == "same" else 0


def activation_name(k: KLayer, key: str = "activation", default: str = "linear") -> str:
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


def _split_activation(k: KLayer) -> tuple[str, str | None]:
    """(fused built-in activation, separate Keras activation or None)."""
    name = activation_name(k)
    if name in _FUSABLE:
        return _FUSABLE[name], None
    return "identity", name


def _keras_dim(t: T, axis: int) -> int:
    """torch dim (batch included) of a Keras axis (batch included, negative allowed) of ``t``."""
    r = t.rank
    a = axis if axis >= 0 else r + 1 + axis
    if not 1 <= a <= r:
        raise SourceError(f"axis {axis} is out of range for a rank-{r} tensor")
    if t.layout == CF and r >= 2:
        return 1 if a == r else a + 1
    return a


def _activation_op(name: str, t: T) -> Op:
    dim = _keras_dim(t, -1) if name in ("softmax", "log_softmax", "sparsemax", "glu") else -1
    if name in ("softmax", "log_softmax"):
        return Op("activation", {"name": name, "dim": dim})
    return Op("keras_activation", {"name": name, "dim": dim})


def _with_activation(ctx: Ctx, k: KLayer, out: T, extra: str | None) -> list[T]:
    if extra is None:
        return [out]
    return [ctx.add(f"{k.name}/activation", _activation_op(extra, out), [out], out.rank, out.layout)]


def _same_layout(ctx: Ctx, ins: list[T]) -> tuple[list[T], str]:
    want = ins[0].layout if ins[0].rank >= 2 else CL
    return [ctx.layout(t, want) for t in ins], want


# ---- core layers ------------------------------------------------------------------------------


@converter("Dense")
def _dense(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(2 if use_bias else 1)
    x = ctx.layout(ins[0], CL)
    fused, extra = _split_activation(k)
    state = {"weight": w[0].T}
    if use_bias:
        state["bias"] = w[1]
    op = Op("dense", {"in_features": int(w[0].shape[0]), "out_features": int(k.get("units", w[0].shape[1])),
                      "bias": use_bias, "activation": fused}, state)
    out = ctx.add(k.name, op, [x], x.rank, CL)
    return _with_activation(ctx, k, out, extra)


@converter("Activation")
def _activation(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    k.expect(0)
    x = ins[0]
    return [ctx.add(k.name, _activation_op(activation_name(k), x), [x], x.rank, x.layout)]


@converter("Dropout")
def _dropout(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    return [ctx.add(k.name, Op("dropout", {"p": float(k.get("rate", 0.0))}), [x], x.rank, x.layout)]


@converter("SpatialDropout1D", "SpatialDropout2D")
def _spatial_dropout(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    op = Op("spatial_dropout", {"rate": float(k.get("rate", 0.0)), "channels_last": x.layout == CL})
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


@converter("GaussianNoise")
def _gaussian_noise(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    return [ctx.add(k.name, Op("gaussian_noise", {"stddev": float(k.get("stddev", 0.0))}), [x], x.rank, x.layout)]


@converter("GaussianDropout")
def _gaussian_dropout(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    return [ctx.add(k.name, Op("gaussian_dropout", {"rate": float(k.get("rate", 0.0))}), [x], x.rank, x.layout)]


@converter("AlphaDropout")
def _alpha_dropout(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    return [ctx.add(k.name, Op("alpha_dropout", {"rate": float(k.get("rate", 0.0))}), [x], x.rank, x.layout)]


@converter("ActivityRegularization")
def _identity(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    return [ctx.add(k.name, Op("identity", {}), [x], x.rank, x.layout)]


@converter("Flatten")
def _flatten(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    # Keras flattens in its own (channels-last) order; the next Dense's kernel rows follow it
    x = ctx.layout(ins[0], CL)
    return [ctx.add(k.name, Op("flatten", {}), [x], 1, CL)]


@converter("Reshape")
def _reshape(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ctx.layout(ins[0], CL)
    target = [int(d) for d in k.get("target_shape")]
    return [ctx.add(k.name, Op("reshape", {"shape": target}), [x], len(target), CL)]


@converter("Permute")
def _permute(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ctx.layout(ins[0], CL)
    dims = [int(d) - 1 for d in k.get("dims")]
    return [ctx.add(k.name, Op("permute", {"dims": dims}), [x], x.rank, CL)]


@converter("RepeatVector")
def _repeat(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    return [ctx.add(k.name, Op("repeat_vector", {"n": int(k.get("n"))}), [x], 2, CL)]


@converter("Rescaling")
def _rescaling(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    scale, offset = k.get("scale", 1.0), k.get("offset", 0.0)
    if not isinstance(scale, (int, float)) or not isinstance(offset, (int, float)):
        raise SourceError(f"keras layer {k.name!r} (Rescaling): only scalar scale and offset are supported")
    return [ctx.add(k.name, Op("rescaling", {"scale": float(scale), "offset": float(offset)}), [x], x.rank, x.layout)]


@converter("Embedding")
def _embedding(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    (w,) = k.expect(1)
    if k.get("mask_zero"):
        warnings.warn(
            f"keras layer {k.name!r}: mask_zero=True is not imported; later layers do not skip id 0, so outputs "
            "differ from Keras's where the input holds padding ids",
            stacklevel=2,
        )
    x = ins[0]
    op = Op("embedding", {"num_embeddings": int(w.shape[0]), "embedding_dim": int(w.shape[1])}, {"weight": w})
    return [ctx.add(k.name, op, [x], x.rank + 1, CL)]


# ---- activations as layers --------------------------------------------------------------------


@converter("LeakyReLU")
def _leaky(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    slope = k.get("negative_slope", k.get("alpha", 0.3))
    return [ctx.add(k.name, Op("activation", {"name": "leaky_relu", "alpha": float(slope)}), [x], x.rank, x.layout)]


@converter("ELU")
def _elu(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    return [ctx.add(k.name, Op("activation", {"name": "elu", "alpha": float(k.get("alpha", 1.0))}), [x], x.rank, x.layout)]


@converter("ReLU")
def _relu(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
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
def _softmax(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    axis = k.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise SourceError(f"keras layer {k.name!r} (Softmax): a softmax over several axes is not supported")
        axis = axis[0]
    dim = _keras_dim(x, int(axis))
    return [ctx.add(k.name, Op("activation", {"name": "softmax", "dim": dim}), [x], x.rank, x.layout)]


@converter("ThresholdedReLU")
def _thresholded(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    return [ctx.add(k.name, Op("thresholded_relu", {"theta": float(k.get("theta", 1.0))}), [x], x.rank, x.layout)]


@converter("PReLU")
def _prelu(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    (alpha,) = k.expect(1)
    x = ins[0]
    if x.layout == CF and alpha.ndim >= 2:
        alpha = np.moveaxis(alpha, -1, 0)  # Keras's per-sample order -> the tensor's
    op = Op("prelu", {"shape": [int(d) for d in alpha.shape]}, {"alpha": alpha})
    return [ctx.add(k.name, op, [x], x.rank, x.layout)]


# ---- convolutions -----------------------------------------------------------------------------


@converter("Conv1D", "Conv2D")
def _conv(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    dims = 1 if k.cls == "Conv1D" else 2
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(2 if use_bias else 1)
    x = ctx.layout(ins[0], CF)
    kernel = w[0]
    groups = int(k.get("groups", 1) or 1)
    ks = list(kernel.shape[:dims])
    dilation = _tuple(k.get("dilation_rate", 1), dims)
    pad_mode = str(k.get("padding", "valid")).lower()
    if pad_mode == "causal":
        if dims != 1:
            raise SourceError(f"keras layer {k.name!r}: causal padding is for Conv1D only")
        left = (ks[0] - 1) * dilation[0]
        x = ctx.add(f"{k.name}/causal_pad", Op("zero_padding1d", {"padding": [left, 0]}), [x], x.rank, CF)
        padding: str | int = 0
    else:
        padding = _padding(k)
    perm = (2, 1, 0) if dims == 1 else (3, 2, 0, 1)
    state = {"conv.weight": kernel.transpose(perm)}
    if use_bias:
        state["conv.bias"] = w[1]
    fused, extra = _split_activation(k)
    op = Op(f"conv{dims}d", {
        "in_channels": int(kernel.shape[-2]) * groups, "out_channels": int(k.get("filters", kernel.shape[-1])),
        "kernel_size": ks,
        "stride": _tuple(k.get("strides", 1), dims), "padding": padding, "dilation": dilation, "groups": groups,
        "bias": use_bias, "activation": fused,
    }, state)
    out = ctx.add(k.name, op, [x], x.rank, CF)
    return _with_activation(ctx, k, out, extra)


@converter("Conv2DTranspose")
def _conv_transpose(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(2 if use_bias else 1)
    x = ctx.layout(ins[0], CF)
    kernel = w[0]  # (kh, kw, out, in)
    padding = _padding(k)
    out_pad = k.get("output_padding")
    if out_pad is not None and padding == "same":
        raise SourceError(f"keras layer {k.name!r} (Conv2DTranspose): output_padding with padding='same' is not supported")
    groups = int(k.get("groups", 1) or 1)
    state = {"conv.weight": kernel.transpose(3, 2, 0, 1)}
    if use_bias:
        state["conv.bias"] = w[1]
    fused, extra = _split_activation(k)
    op = Op("conv_transpose2d", {
        "in_channels": int(kernel.shape[3]), "out_channels": int(kernel.shape[2]) * groups,
        "kernel_size": list(kernel.shape[:2]), "stride": _tuple(k.get("strides", 1), 2), "padding": padding,
        "output_padding": _tuple(out_pad, 2) if out_pad is not None else 0,
        "dilation": _tuple(k.get("dilation_rate", 1), 2), "groups": groups, "bias": use_bias, "activation": fused,
    }, state)
    out = ctx.add(k.name, op, [x], x.rank, CF)
    return _with_activation(ctx, k, out, extra)


def _depthwise_weight(kernel: np.ndarray) -> np.ndarray:
    # (kh, kw, in, mult) -> (in * mult, 1, kh, kw); output channel c * mult + m, as torch groups it
    kh, kw, cin, mult = kernel.shape
    return kernel.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]


@converter("DepthwiseConv2D")
def _depthwise(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(2 if use_bias else 1)
    x = ctx.layout(ins[0], CF)
    kernel = w[0]
    state = {"conv.weight": _depthwise_weight(kernel)}
    if use_bias:
        state["conv.bias"] = w[1]
    fused, extra = _split_activation(k)
    op = Op("depthwise_conv2d", {
        "in_channels": int(kernel.shape[2]), "kernel_size": list(kernel.shape[:2]),
        "depth_multiplier": int(kernel.shape[3]), "stride": _tuple(k.get("strides", 1), 2), "padding": _padding(k),
        "dilation": _tuple(k.get("dilation_rate", 1), 2), "bias": use_bias, "activation": fused,
    }, state)
    out = ctx.add(k.name, op, [x], x.rank, CF)
    return _with_activation(ctx, k, out, extra)


@converter("SeparableConv2D")
def _separable(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    use_bias = bool(k.get("use_bias", True))
    w = k.expect(3 if use_bias else 2)
    x = ctx.layout(ins[0], CF)
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
    out = ctx.add(k.name, op, [x], x.rank, CF)
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


@converter("ZeroPadding1D", "ZeroPadding2D")
def _zero_pad(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    n = 1 if k.cls.endswith("1D") else 2
    x = ctx.layout(ins[0], CF)
    return [ctx.add(k.name, Op(f"zero_padding{n}d", {"padding": _pairs(k.get("padding", 1), n)}), [x], x.rank, CF)]


@converter("Cropping1D", "Cropping2D")
def _crop(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    n = 1 if k.cls.endswith("1D") else 2
    x = ctx.layout(ins[0], CF)
    return [ctx.add(k.name, Op(f"cropping{n}d", {"cropping": _pairs(k.get("cropping", 0), n)}), [x], x.rank, CF)]


@converter("UpSampling1D")
def _up1(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ctx.layout(ins[0], CF)
    return [ctx.add(k.name, Op("upsample1d", {"size": _tuple(k.get("size", 2), 1)[0]}), [x], x.rank, CF)]


@converter("UpSampling2D")
def _up2(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ctx.layout(ins[0], CF)
    mode = str(k.get("interpolation", "nearest"))
    if mode not in ("nearest", "bilinear"):
        raise SourceError(f"keras layer {k.name!r} (UpSampling2D): interpolation {mode!r} is not supported; valid: nearest, bilinear")
    op = Op("upsample2d", {"scale_factor": _tuple(k.get("size", 2), 2), "mode": mode})
    return [ctx.add(k.name, op, [x], x.rank, CF)]


@converter("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "MaxPool1D", "MaxPool2D",
           "AvgPool1D", "AvgPool2D")
def _pool(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    n = 1 if k.cls.endswith("1D") else 2
    kind = "max" if k.cls.startswith("Max") else "avg"
    x = ctx.layout(ins[0], CF)
    size = _tuple(k.get("pool_size", 2), n)
    strides = k.get("strides")
    op = Op(f"{kind}_pool{n}d", {"kernel_size": size, "stride": size if strides is None else _tuple(strides, n),
                                 "padding": _padding(k)})
    return [ctx.add(k.name, op, [x], x.rank, CF)]


@converter("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
           "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalMaxPool1D", "GlobalMaxPool2D")
def _global_pool(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    kind = "max" if "Max" in k.cls else "avg"
    x = ctx.layout(ins[0], CF)
    keep = bool(k.get("keepdims", False))
    return [ctx.add(k.name, Op(f"global_{kind}_pool", {"keepdims": keep}), [x], x.rank if keep else 1, CF)]


# ---- normalization ------------------------------------------------------------------------------


def _axes(k: KLayer, rank: int) -> list[int]:
    axis = k.get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return sorted(int(a) if int(a) >= 0 else rank + 1 + int(a) for a in axes)


@converter("BatchNormalization")
def _batchnorm(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ins[0]
    if _axes(k, x.rank) != [x.rank]:
        raise SourceError(f"keras layer {k.name!r} (BatchNormalization): axis {k.get('axis')} is not supported; only the last (channels) axis")
    if x.rank > 3:
        raise SourceError(f"keras layer {k.name!r} (BatchNormalization): inputs of rank {x.rank + 1} are not supported")
    center, scale = bool(k.get("center", True)), bool(k.get("scale", True))
    w = list(k.expect(2 + center + scale))
    gamma = w.pop(0) if scale else None
    beta = w.pop(0) if center else None
    mean, var = w
    x = ctx.layout(x, CF)
    affine = center or scale
    state = {"running_mean": mean, "running_var": var}
    if affine:
        state["weight"] = gamma if gamma is not None else np.ones_like(mean)
        state["bias"] = beta if beta is not None else np.zeros_like(mean)
    op = Op("batchnorm2d" if x.rank == 3 else "batchnorm1d", {
        "num_features": int(mean.shape[0]), "eps": float(k.get("epsilon", 1e-3)),
        "momentum": 1.0 - float(k.get("momentum", 0.99)), "affine": affine,
    }, state)
    return [ctx.add(k.name, op, [x], x.rank, CF)]


@converter("LayerNormalization")
def _layernorm(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    x = ctx.layout(ins[0], CL)
    if k.get("rms_scaling"):
        raise SourceError(f"keras layer {k.name!r} (LayerNormalization): rms_scaling=True is not supported")
    axes = _axes(k, x.rank)
    if axes != list(range(x.rank - len(axes) + 1, x.rank + 1)):
        raise SourceError(f"keras layer {k.name!r} (LayerNormalization): axis {k.get('axis')} is not supported; only trailing axes")
    shape = list(ctx.shape(x)[x.rank - len(axes):])
    center, scale = bool(k.get("center", True)), bool(k.get("scale", True))
    w = list(k.expect(center + scale))
    gamma = w.pop(0).reshape(shape) if scale else None
    beta = w.pop(0).reshape(shape) if center else None
    affine = center or scale
    state: dict[str, np.ndarray] = {}
    if affine:
        state["weight"] = gamma if gamma is not None else np.ones(shape, np.float32)
        if center:
            state["bias"] = beta  # type: ignore[assignment]
    op = Op("layernorm", {"normalized_shape": shape, "eps": float(k.get("epsilon", 1e-3)),
                          "elementwise_affine": affine, "bias": center}, state)
    return [ctx.add(k.name, op, [x], x.rank, CL)]


# ---- merging ------------------------------------------------------------------------------------


@converter("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def _merge(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    xs, layout = _same_layout(ctx, ins)
    op = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
          "Maximum": "maximum", "Minimum": "minimum"}[k.cls]
    return [ctx.add(k.name, Op(op, {}), xs, xs[0].rank, layout)]


@converter("Concatenate")
def _concat(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    xs, layout = _same_layout(ctx, ins)
    dim = _keras_dim(xs[0], int(k.get("axis", -1)))
    return [ctx.add(k.name, Op("concat", {"dim": dim}), xs, xs[0].rank, layout)]


# ---- recurrent layers ---------------------------------------------------------------------------

_RNN_CELLS = {"SimpleRNN": "simple", "LSTM": "lstm", "GRU": "gru"}


def _gru_to_torch(a: np.ndarray, units: int) -> np.ndarray:
    """Keras GRU gate blocks z, r, h (last axis) -> torch's r, z, n."""
    z, r, h = a[..., :units], a[..., units:2 * units], a[..., 2 * units:]
    return np.concatenate([r, z, h], axis=-1)


def _rnn_settings(k: KLayer, cfg: dict[str, Any]) -> dict[str, Any]:
    sub = KLayer(k.name, k.cls, cfg, [], k.version)
    if cfg.get("return_state"):
        raise SourceError(f"keras layer {k.name!r}: return_state=True is not supported")
    if cfg.get("time_major"):
        raise SourceError(f"keras layer {k.name!r}: time_major=True is not supported; inputs are (batch, time, features)")
    if cfg.get("stateful"):
        warnings.warn(f"keras layer {k.name!r}: stateful=True is imported as stateless", stacklevel=3)
    return {
        "units": int(cfg["units"]),
        "activation": activation_name(sub, "activation", "tanh"),
        "recurrent_activation": activation_name(sub, "recurrent_activation", "sigmoid"),
        "use_bias": bool(cfg.get("use_bias", True)),
        "return_sequences": bool(cfg.get("return_sequences", False)),
        "go_backwards": bool(cfg.get("go_backwards", False)),
        "reset_after": bool(cfg.get("reset_after", True)),
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
            merge_mode: str) -> Op:
    bidirectional = bwd is not None
    if _torch_native(cell, s) and (not bidirectional or merge_mode == "concat"):
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
                            "merge_mode": merge_mode}, state)


@converter("SimpleRNN", "LSTM", "GRU")
def _rnn(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    cell = _RNN_CELLS[k.cls]
    s = _rnn_settings(k, k.cfg)
    w = k.expect(3 if s["use_bias"] else 2)
    x = ctx.layout(ins[0], CL)
    op = _rnn_op(cell, s, int(w[0].shape[0]), list(w), None, "concat")
    return [ctx.add(k.name, op, [x], 2 if s["return_sequences"] else 1, CL)]


@converter("Bidirectional")
def _bidirectional(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    inner = k.get("layer") or {}
    cls = inner.get("class_name")
    if cls not in _RNN_CELLS:
        raise SourceError(f"keras layer {k.name!r} (Bidirectional): wraps {cls!r}; supported: {', '.join(_RNN_CELLS)}")
    s = _rnn_settings(k, inner["config"])
    back = k.get("backward_layer")
    if back and int(back["config"]["units"]) != s["units"]:
        raise SourceError(f"keras layer {k.name!r} (Bidirectional): a backward layer of another size is not supported")
    per = 3 if s["use_bias"] else 2
    w = k.expect(2 * per)
    merge = k.get("merge_mode", "concat")
    merge = "none" if merge is None else str(merge)
    x = ctx.layout(ins[0], CL)
    op = _rnn_op(_RNN_CELLS[cls], s, int(w[0].shape[0]), list(w[:per]), list(w[per:]), merge)
    rank = 2 if s["return_sequences"] else 1
    out = ctx.add(k.name, op, [x], rank, CL)
    if merge == "none":
        return [T(out.ref, rank, CL, 0), T(out.ref, rank, CL, 1)]
    return [out]


@converter("TimeDistributed")
def _time_distributed(ctx: Ctx, k: KLayer, ins: list[T]) -> list[T]:
    inner = k.get("layer") or {}
    cls = inner.get("class_name")
    if cls not in CONVERTERS or cls in ("TimeDistributed", "Bidirectional"):
        raise SourceError(f"keras layer {k.name!r} (TimeDistributed): wrapping {cls!r} is not supported")
    x = ctx.layout(ins[0], CL)
    example = ctx.value(ctx.plain(x))
    chain = Chain(example.reshape(-1, *example.shape[2:]))
    sub = KLayer(str(inner["config"].get("name", cls)), cls, inner["config"], k.weights, k.version)
    out = convert_layer(chain, sub, [T("step", x.rank - 1, CL)])
    if len(out) != 1:
        raise SourceError(f"keras layer {k.name!r} (TimeDistributed): the wrapped layer must have one output")
    last = chain.layout(out[0], CL)
    layers, state = [], {}
    for i, op in enumerate(chain.ops):
        layers.append({"type": op.type, "args": op.args})
        state.update({f"body.{i}.{key}": v for key, v in op.state.items()})
    return [ctx.add(k.name, Op("time_distributed", {"layers": layers}, state), [x], last.rank + 1, CL)]
