"""Layer types for Keras models beyond the common ones: 3-D pooling and padding, normalization on
any axis, image preprocessing layers (3-D and transposed convolutions are the core's:
tlexp/graph/_layers.py).

Each computes what the Keras layer computes, on the tensor layout the importer gives it (a
``dim`` argument is a torch dimension, batch included). They are ordinary registry layers, so an
imported model saves, reloads and rebuilds like any other.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.graph import Role, register_layer
from tlexp.graph._layers import _activation_layer, _Pool
from tlexp.sources.keras._layers import Crop, KerasActivationName, ZeroPad, keras_activation

IntOrTuple = int | tuple[int, ...]
Padding = str | int | tuple[int, ...]


def _chan(shapes):
    return {"in_channels": shapes[0][0]}


# ---- transposed convolution cut to a window, 3-D pooling, padding ----------------------------


class WindowConvTranspose(nn.Module):
    """Transposed convolution cut to an explicit output window (Keras's ``output_padding``).

    torch's transposed conv (no padding) gives every position a kernel touches; Keras keeps a
    window of it -- ``crops[i] = (before, after)`` positions dropped per spatial axis, a negative
    number adding zeros there instead -- and adds the bias afterwards.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, kernel_size: list[int], stride: list[int],
                 crops: list[list[int]], dilation: list[int], groups: int, bias: bool, activation: str) -> None:
        super().__init__()
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
        self.dims, self.crops = dims, [tuple(c) for c in crops]
        self.conv = cls(in_channels, out_channels, tuple(kernel_size), tuple(stride), 0, 0, groups, False,
                        tuple(dilation))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.act = _activation_layer(activation, None, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        for i, (before, after) in enumerate(self.crops):
            d = y.dim() - self.dims + i
            if before < 0 or after < 0:
                pads = [0, 0] * (y.dim() - d - 1) + [max(-before, 0), max(-after, 0)]
                y = F.pad(y, pads)
            before, after = max(before, 0), max(after, 0)
            y = y.narrow(d, before, y.shape[d] - before - after)
        if self.bias is not None:
            y = y + self.bias.view(-1, *([1] * self.dims))
        return self.act(y)

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight


@register_layer("window_conv_transpose", role=Role.WEIGHTS, n_in="in_channels", n_out="out_channels",
                takes_activation=True, infer=_chan,
                example={"dims": 2, "out_channels": 2, "kernel_size": [3, 3], "stride": [2, 2], "crops": [[1, 0], [1, -1]]},
                example_inputs=((3, 4, 4),))
def window_conv_transpose(dims: int, in_channels: int, out_channels: int, kernel_size: list[int], stride: list[int],
                          crops: list[list[int]], dilation: list[int] | None = None, groups: int = 1,
                          bias: bool = True, activation: str = "identity") -> nn.Module:
    """Transposed 1/2/3-D convolution with an explicit output window (crops per axis; negative pads)."""
    if len(kernel_size) != dims or len(stride) != dims or len(crops) != dims:
        raise ValueError(f"kernel_size, stride and crops need {dims} entries")
    return WindowConvTranspose(dims, in_channels, out_channels, kernel_size, stride, crops,
                               dilation or [1] * dims, groups, bias, activation)


def _pool3d(kind: str) -> None:
    def pool(kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: Padding = 0) -> nn.Module:
        return _Pool(kind, 3, kernel_size, stride, padding)

    pool.__doc__ = f"{kind} pooling over 3 spatial dimensions; padding 'same' is TF-style."
    register_layer(f"{kind}_pool3d", role=Role.PASS, example={"kernel_size": 2}, example_inputs=((2, 4, 4, 4),))(pool)


_pool3d("max")
_pool3d("avg")


@register_layer("zero_padding3d", role=Role.PASS, example={"padding": [1, 0, 0, 1, 1, 1]}, example_inputs=((2, 3, 3, 3),))
def zero_padding3d(padding: tuple[int, int, int, int, int, int]) -> nn.Module:
    """Zeros around (C, D, H, W): before/after depth, height, width."""
    d0, d1, h0, h1, w0, w1 = padding
    return ZeroPad([w0, w1, h0, h1, d0, d1])


@register_layer("cropping3d", role=Role.PASS, example={"cropping": [1, 0, 0, 1, 1, 1]}, example_inputs=((2, 4, 4, 4),))
def cropping3d(cropping: tuple[int, int, int, int, int, int]) -> nn.Module:
    """Drop values of (C, D, H, W) before/after depth, height, width."""
    d0, d1, h0, h1, w0, w1 = cropping
    return Crop([(d0, d1), (h0, h1), (w0, w1)])


class Repeat(nn.Module):
    """Repeat every element ``sizes[i]`` times along the trailing spatial axes (nearest upsampling)."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.sizes)
        for i, s in enumerate(self.sizes):
            if s != 1:
                x = x.repeat_interleave(s, dim=x.dim() - n + i)
        return x


@register_layer("upsample3d", role=Role.PASS, example={"size": [2, 1, 2]}, example_inputs=((2, 2, 3, 3),))
def upsample3d(size: tuple[int, int, int] = (2, 2, 2)) -> nn.Module:
    """Repeat the depth, row and column steps of (C, D, H, W)."""
    return Repeat(list(size))


# ---- normalization on any axis ------------------------------------------------------------------


class AxisBatchNorm(nn.Module):
    """BatchNorm over dimension ``dim`` of a tensor of any rank (torch's own BatchNorm inside)."""

    def __init__(self, num_features: int, dim: int, eps: float, momentum: float, affine: bool) -> None:
        super().__init__()
        self.dim = dim
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.movedim(self.dim, 1)
        shape = y.shape
        y = self.bn(y.reshape(shape[0], shape[1], -1)).reshape(shape)
        return y.movedim(1, self.dim)


@register_layer("axis_batchnorm", role=Role.FIXED, infer=lambda s: {"num_features": s[0][0]}, example_inputs=((3, 4, 2, 2),))
def axis_batchnorm(num_features: int, dim: int = 1, eps: float = 1e-3, momentum: float = 0.01,
                   affine: bool = True) -> nn.Module:
    """Batch normalization of dimension ``dim`` (batch is dimension 0), any rank."""
    if dim < 1:
        raise ValueError("dim must be a non-batch dimension (>= 1)")
    return AxisBatchNorm(num_features, dim, eps, momentum, affine)


class AxisLayerNorm(nn.Module):
    """Keras's LayerNormalization over any set of dimensions (and its rms_scaling variant)."""

    def __init__(self, dims: list[int], shape: list[int], eps: float, center: bool, scale: bool, rms: bool) -> None:
        super().__init__()
        self.dims, self.eps, self.rms = list(dims), eps, rms
        self.weight = nn.Parameter(torch.ones(shape)) if scale else None
        self.bias = nn.Parameter(torch.zeros(shape)) if center and not rms else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=self.dims, keepdim=True, correction=0)
        inv = torch.rsqrt(var + self.eps)
        if self.rms:
            y = x * inv
            return y * self.weight if self.weight is not None else y
        if self.weight is not None:
            inv = inv * self.weight
        res = -mean * inv
        if self.bias is not None:
            res = res + self.bias
        return x * inv + res


@register_layer("axis_layernorm", role=Role.FIXED, example={"dims": [1], "shape": [3, 1]}, example_inputs=((3, 4),))
def axis_layernorm(dims: list[int], shape: list[int], eps: float = 1e-3, center: bool = True, scale: bool = True,
                   rms_scaling: bool = False) -> nn.Module:
    """Layer normalization over ``dims`` (batch is dimension 0); ``shape``: the per-sample
    broadcast shape of the scale and offset."""
    return AxisLayerNorm(dims, shape, eps, center, scale, rms_scaling)


class AxisGroupNorm(nn.Module):
    def __init__(self, groups: int, num_channels: int, dim: int, eps: float, center: bool, scale: bool) -> None:
        super().__init__()
        self.groups, self.dim, self.eps = groups, dim, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if scale else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if center else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.movedim(self.dim, 1)
        y = F.group_norm(y, self.groups, self.weight, self.bias, self.eps)
        return y.movedim(1, self.dim)


@register_layer("axis_groupnorm", role=Role.FIXED, example={"groups": 2, "num_channels": 4}, example_inputs=((4, 3),))
def axis_groupnorm(groups: int, num_channels: int, dim: int = 1, eps: float = 1e-3, center: bool = True,
                   scale: bool = True) -> nn.Module:
    """Group normalization with the channels on dimension ``dim`` (batch is dimension 0)."""
    if num_channels % groups:
        raise ValueError(f"{num_channels} channels do not split into {groups} groups")
    return AxisGroupNorm(groups, num_channels, dim, eps, center, scale)


# ---- preprocessing layers -----------------------------------------------------------------------


class Standardize(nn.Module):
    """Keras's Normalization layer: (x - mean) / max(sqrt(variance), 1e-7) (or its inverse)."""

    def __init__(self, shape: list[int], invert: bool) -> None:
        super().__init__()
        self.invert = invert
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("variance", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = torch.clamp(torch.sqrt(self.variance), min=1e-7)
        return self.mean + x * std if self.invert else (x - self.mean) / std


@register_layer("keras_normalization", role=Role.FIXED, example={"shape": [3]}, example_inputs=((3,),))
def keras_normalization(shape: list[int], invert: bool = False) -> nn.Module:
    """Feature standardization with stored mean and variance (per-sample broadcast ``shape``)."""
    return Standardize(shape, invert)


class CenterCrop(nn.Module):
    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if h < self.height or w < self.width:
            raise ValueError(f"center_crop: a {h}x{w} image is smaller than the crop {self.height}x{self.width}")
        top, left = (h - self.height) // 2, (w - self.width) // 2
        return x[..., top:top + self.height, left:left + self.width]


@register_layer("center_crop", role=Role.PASS, example={"height": 2, "width": 3}, example_inputs=((2, 4, 4),))
def center_crop(height: int, width: int) -> nn.Module:
    """The central height x width window of (C, H, W)."""
    return CenterCrop(height, width)


class Resize(nn.Module):
    def __init__(self, height: int, width: int, mode: str, antialias: bool) -> None:
        super().__init__()
        self.size, self.mode, self.antialias = (height, width), mode, antialias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, size=self.size, mode="nearest-exact")
        return F.interpolate(x, size=self.size, mode=self.mode, align_corners=False, antialias=self.antialias)


@register_layer("resize", role=Role.PASS, example={"height": 3, "width": 5}, example_inputs=((2, 4, 4),))
def resize(height: int, width: int, interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear",
           antialias: bool = False) -> nn.Module:
    """Resize (C, H, W) to height x width (half-pixel centres, as TF and Keras resize)."""
    return Resize(height, width, interpolation, antialias)


# ---- masks --------------------------------------------------------------------------------------


class StepMask(nn.Module):
    """The (N, T) step mask Keras derives: ids != 0 (mask_zero) or any feature != mask_value."""

    def __init__(self, kind: str, value: float) -> None:
        super().__init__()
        self.kind, self.value = kind, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "ids":
            return x != 0
        return (x != self.value).any(dim=-1)


@register_layer("step_mask", role=Role.FIXED, example={"kind": "features"}, example_inputs=((5, 4),))
def step_mask(kind: Literal["ids", "features"] = "features", value: float = 0.0) -> nn.Module:
    """A boolean (T,) mask per sample: ids != 0, or any feature of a step != value."""
    return StepMask(kind, value)


class ApplyMask(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x * mask.unsqueeze(-1).to(x.dtype)


@register_layer("apply_mask", role=Role.FIXED, example_inputs=((5, 4), (5,)))
def apply_mask() -> nn.Module:
    """Zeros the masked steps of (T, F) (Keras's Masking layer output)."""
    return ApplyMask()


class MaskAnd(nn.Module):
    def forward(self, *masks: torch.Tensor) -> torch.Tensor:
        out = masks[0].bool()
        for m in masks[1:]:
            out = out & m.bool()
        return out


@register_layer("mask_and", role=Role.FIXED, example_inputs=((5,), (5,)))
def mask_and() -> nn.Module:
    """Steps unmasked in every input mask."""
    return MaskAnd()


class MaskedMean(nn.Module):
    """GlobalAveragePooling1D with a mask: the mean over the unmasked steps of (T, F)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(dim=1) / m.sum(dim=1)


@register_layer("masked_mean", role=Role.FIXED, example_inputs=((5, 4), (5,)))
def masked_mean() -> nn.Module:
    """The mean over the unmasked steps of (T, F)."""
    return MaskedMean()


class KerasOp(nn.Module):
    """One of the few Keras 3 operations its files write as layers when computing masks."""

    def __init__(self, name: str, value: float | None, dim: int, keepdims: bool, dtype: str = "bool") -> None:
        super().__init__()
        self.name, self.value, self.dim, self.keepdims, self.dtype = name, value, dim, keepdims, dtype

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        x = xs[0]
        if self.name == "expand_dims":
            return x.unsqueeze(self.dim)
        if self.name in ("zeros_like", "ones_like"):
            dtype = torch.bool if self.dtype == "bool" else torch.float32
            return torch.zeros_like(x, dtype=dtype) if self.name == "zeros_like" else torch.ones_like(x, dtype=dtype)
        if self.name in ("not_equal", "equal"):
            other = xs[1] if len(xs) > 1 else torch.tensor(self.value if self.value is not None else 0.0, dtype=x.dtype)
            return x != other if self.name == "not_equal" else x == other
        if self.name == "any":
            return x.bool().any(dim=self.dim, keepdim=self.keepdims)
        if self.name == "all":
            return x.bool().all(dim=self.dim, keepdim=self.keepdims)
        if self.name == "logical_not":
            return ~x.bool()
        out = x.bool()
        for y in xs[1:]:
            out = out | y.bool() if self.name == "logical_or" else out & y.bool()
        return out


@register_layer("keras_op", role=Role.FIXED, example={"name": "not_equal", "value": 0.0}, example_inputs=((5, 4),))
def keras_op(name: Literal["not_equal", "equal", "any", "all", "logical_or", "logical_and", "logical_not",
                           "expand_dims", "zeros_like", "ones_like"],
             value: float | None = None, dim: int = -1, keepdims: bool = False,
             dtype: Literal["bool", "float32"] = "bool") -> nn.Module:
    """A comparison, logical reduction or shape op from Keras 3's mask computations (x != value, any
    over dim, expand_dims, ones_like, ...)."""
    return KerasOp(name, value, dim, keepdims, dtype)


# ---- Keras applications' own layers -------------------------------------------------------------


class ChannelScale(nn.Module):
    """x * gamma, gamma on dimension ``dim`` (ConvNeXt's LayerScale)."""

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.gamma = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return x * self.gamma.view(shape)


@register_layer("channel_scale", role=Role.FIXED, example={"channels": 4}, example_inputs=((4, 3),))
def channel_scale(channels: int, dim: int = 1) -> nn.Module:
    """Multiply each channel (dimension ``dim``, batch is 0) by a learned factor."""
    return ChannelScale(channels, dim)


class StochasticDepth(nn.Module):
    """Drops the whole residual branch per sample with probability ``rate`` while training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate <= 0:
            return x
        keep = 1 - self.rate
        mask = torch.floor(keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype))
        return x / keep * mask


@register_layer("stochastic_depth", role=Role.PASS)
def stochastic_depth(rate: float = 0.0) -> nn.Module:
    """Per-sample branch dropout while training (ConvNeXt's StochasticDepth); identity in inference."""
    return StochasticDepth(rate)


# ---- attention ----------------------------------------------------------------------------------


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Keras's Softmax with a mask: masked scores at -1e9, masked probabilities then zeroed."""
    if mask is None:
        return torch.softmax(scores, dim=-1)
    scores = torch.where(mask, scores, torch.full_like(scores, -1e9))
    return torch.where(mask, torch.softmax(scores, dim=-1), torch.zeros_like(scores))


class KerasMultiHeadAttention(nn.Module):
    """Keras's MultiHeadAttention: per-head projections (Keras's EinsumDense kernels kept as
    (in, heads, dim)), scaled dot products over the attention axes, masks combined as Keras does
    (query/value/key masks, ``attention_mask``, causal), and the output projection.

    Inputs: query, value, then the optional key, attention_mask, query_mask, value_mask,
    key_mask in that order, as ``inputs`` lists them.
    """

    def __init__(self, num_heads: int, key_dim: int, value_dim: int, query_in: int, key_in: int, value_in: int,
                 output_dim: int, use_bias: bool, dropout: float, causal: bool, inputs: list[str],
                 attention_dims: list[int]) -> None:
        super().__init__()
        self.heads, self.key_dim, self.causal, self.inputs = num_heads, key_dim, causal, list(inputs)
        self.attention_dims = list(attention_dims)
        self.query_kernel = nn.Parameter(torch.empty(query_in, num_heads, key_dim))
        self.key_kernel = nn.Parameter(torch.empty(key_in, num_heads, key_dim))
        self.value_kernel = nn.Parameter(torch.empty(value_in, num_heads, value_dim))
        self.output_kernel = nn.Parameter(torch.empty(num_heads, value_dim, output_dim))
        for p in (self.query_kernel, self.key_kernel, self.value_kernel, self.output_kernel):
            nn.init.xavier_uniform_(p.view(p.shape[0], -1))
        if use_bias:
            self.query_bias = nn.Parameter(torch.zeros(num_heads, key_dim))
            self.key_bias = nn.Parameter(torch.zeros(num_heads, key_dim))
            self.value_bias = nn.Parameter(torch.zeros(num_heads, value_dim))
            self.output_bias = nn.Parameter(torch.zeros(output_dim))
        else:
            self.query_bias = self.key_bias = self.value_bias = self.output_bias = None
        self.drop = nn.Dropout(dropout)

    def _flat(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
        """(N, ..., C) -> (N * batch-like, positions, C), and how to undo it."""
        r = x.dim() - 1
        att = self.attention_dims
        other = [d for d in range(1, r) if d not in att]
        perm = [0, *other, *att, r]
        y = x.permute(perm)
        lead = list(y.shape[:1 + len(other)])
        return y.reshape(-1, math.prod(y.shape[1 + len(other):r]), x.shape[-1]), perm, lead

    def forward(self, query: torch.Tensor, value: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        got = dict(zip(self.inputs, extra))
        key = got.get("key", value)
        q, perm, lead = self._flat(query)
        k, _, _ = self._flat(key)
        v, _, _ = self._flat(value)
        qp = torch.einsum("btc,chd->bthd", q, self.query_kernel)
        kp = torch.einsum("bsc,chd->bshd", k, self.key_kernel)
        vp = torch.einsum("bsc,chd->bshd", v, self.value_kernel)
        if self.query_bias is not None:
            qp, kp, vp = qp + self.query_bias, kp + self.key_bias, vp + self.value_bias
        qp = qp * (1.0 / math.sqrt(self.key_dim))
        scores = torch.einsum("bshd,bthd->bhts", kp, qp)
        mask = None
        if "query_mask" in got:
            mask = got["query_mask"].bool()[:, :, None]
        for name in ("value_mask", "key_mask"):
            if name in got:
                m = got[name].bool()[:, None, :]
                mask = m if mask is None else mask & m
        if self.causal:
            t, s = scores.shape[-2], scores.shape[-1]
            c = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril()[None]
            mask = c if mask is None else mask & c
        if "attention_mask" in got:
            a = got["attention_mask"].bool()
            mask = a if mask is None else mask & a
        m = mask[:, None] if mask is not None else None
        if self.drop.p == 0 and query.dim() == 3 and m is not None:
            # Keras's fused path (no dropout, sequences): a fully masked row attends uniformly
            probs = torch.softmax(torch.where(m, scores, torch.full_like(scores, -1e9)), dim=-1)
        else:
            probs = self.drop(_masked_softmax(scores, m))
        out = torch.einsum("bhts,bshd->bthd", probs, vp)
        out = torch.einsum("bthd,hdo->bto", out, self.output_kernel)
        if self.output_bias is not None:
            out = out + self.output_bias
        # back to the query's own shape (positions and batch-like axes restored)
        sizes = [query.shape[p] for p in perm[1:-1]]
        out = out.reshape(*lead[:1], *sizes, out.shape[-1])
        inv = [perm.index(i) for i in range(len(perm))]
        return out.permute(inv)


_MHA_INPUTS = ("key", "attention_mask", "query_mask", "value_mask", "key_mask")


@register_layer("keras_multi_head_attention", role=Role.FIXED,
                example={"num_heads": 2, "key_dim": 3, "value_dim": 3, "query_in": 4, "key_in": 4, "value_in": 4,
                         "output_dim": 4},
                example_inputs=((5, 4), (6, 4)))
def keras_multi_head_attention(num_heads: int, key_dim: int, value_dim: int, query_in: int, key_in: int,
                               value_in: int, output_dim: int, use_bias: bool = True, dropout: float = 0.0,
                               causal: bool = False, inputs: list[str] | None = None,
                               attention_dims: list[int] | None = None) -> nn.Module:
    """Keras MultiHeadAttention (inputs: query, value, then any of key, attention_mask,
    query_mask, value_mask, key_mask as ``inputs`` names them; attention over ``attention_dims``)."""
    names = list(inputs or [])
    bad = [n for n in names if n not in _MHA_INPUTS]
    if bad:
        raise ValueError(f"unknown inputs {bad}; valid: {', '.join(_MHA_INPUTS)}")
    return KerasMultiHeadAttention(num_heads, key_dim, value_dim, query_in, key_in, value_in, output_dim, use_bias,
                                   dropout, causal, names, list(attention_dims or [1]))


class KerasDotAttention(nn.Module):
    """Keras's Attention (dot or concat scores) and AdditiveAttention layers."""

    def __init__(self, kind: str, dim: int, use_scale: bool, dropout: float, causal: bool, inputs: list[str]) -> None:
        super().__init__()
        self.kind, self.causal, self.inputs = kind, causal, list(inputs)
        self.scale = nn.Parameter(torch.ones(dim if kind == "additive" else ())) if use_scale else None
        self.concat_weight = nn.Parameter(torch.ones(())) if kind == "concat" else None
        self.drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, value: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        got = dict(zip(self.inputs, extra))
        key = got.get("key", value)
        if self.kind == "dot":
            scores = query @ key.transpose(1, 2)
            if self.scale is not None:
                scores = scores * self.scale
        elif self.kind == "concat":
            s = query[:, :, None] + key[:, None]
            scores = self.concat_weight * torch.tanh(s * self.scale if self.scale is not None else s).sum(-1)
        else:
            t = torch.tanh(query[:, :, None] + key[:, None])
            scores = (t * self.scale).sum(-1) if self.scale is not None else t.sum(-1)
        if "value_mask" in got:
            scores = scores - 1e9 * (~got["value_mask"].bool())[:, None].to(scores.dtype)
        if self.causal:
            t, s = scores.shape[-2], scores.shape[-1]
            c = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril()
            scores = scores - 1e9 * (~c)[None].to(scores.dtype)
        out = self.drop(torch.softmax(scores, dim=-1)) @ value
        if "query_mask" in got:
            out = out * got["query_mask"][..., None].to(out.dtype)
        return out


@register_layer("keras_attention", role=Role.FIXED, example={"dim": 4}, example_inputs=((5, 4), (6, 4)))
def keras_attention(kind: Literal["dot", "concat", "additive"] = "dot", dim: int = 1, use_scale: bool = False,
                    dropout: float = 0.0, causal: bool = False, inputs: list[str] | None = None) -> nn.Module:
    """Keras Attention / AdditiveAttention over (T, dim) queries and (S, dim) values (then any of
    key, query_mask, value_mask as ``inputs`` names them)."""
    return KerasDotAttention(kind, dim, use_scale, dropout, causal, list(inputs or []))


# ---- ConvLSTM1D / 2D / 3D -------------------------------------------------------------------


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (before, after) on one axis."""
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class KerasConvLSTM(nn.Module):
    """Keras ConvLSTM1D/2D/3D over (N, T, *spatial, C) (``channels_last``) or (N, T, C, *spatial):
    LSTM gates i, f, c, o from a convolution of the input (the layer's strides, padding and
    dilation) plus a "same" convolution of the previous state. Weights in torch's conv layout."""

    def __init__(self, dims: int, in_channels: int, filters: int, kernel_size: list[int], strides: list[int],
                 padding: str, dilation: list[int], activation: str, recurrent_activation: str, use_bias: bool,
                 return_sequences: bool, go_backwards: bool, return_state: bool, channels_last: bool) -> None:
        super().__init__()
        self.dims, self.filters = dims, filters
        self.kernel_size, self.strides, self.dilation = list(kernel_size), list(strides), list(dilation)
        self.padding, self.use_bias = padding, use_bias
        self.return_sequences, self.go_backwards, self.return_state = return_sequences, go_backwards, return_state
        self.channels_last = channels_last
        self.act = keras_activation(activation)
        self.rec_act = keras_activation(recurrent_activation)
        self.kernel = nn.Parameter(torch.empty(4 * filters, in_channels, *kernel_size))
        self.recurrent_kernel = nn.Parameter(torch.empty(4 * filters, filters, *kernel_size))
        self.bias = nn.Parameter(torch.zeros(4 * filters)) if use_bias else None
        nn.init.xavier_uniform_(self.kernel)
        nn.init.orthogonal_(self.recurrent_kernel.view(4 * filters, -1))
        self._conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]

    def _pad(self, x: torch.Tensor, strides: list[int], dilation: list[int]) -> torch.Tensor:
        pads: list[int] = []
        for i in reversed(range(self.dims)):  # F.pad lists the last axis first
            pads.extend(_same_pads(x.shape[2 + i], self.kernel_size[i], strides[i], dilation[i]))
        return F.pad(x, pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.channels_last:  # (N, T, *S, C) -> (N, T, C, *S)
            x = x.permute(0, 1, x.dim() - 1, *range(2, x.dim() - 1))
        n, steps = x.shape[0], x.shape[1]
        xs = x.reshape(n * steps, *x.shape[2:])
        if self.padding == "same":
            xs = self._pad(xs, self.strides, self.dilation)
        xw = self._conv(xs, self.kernel, self.bias, stride=self.strides, dilation=self.dilation)
        xw = xw.reshape(n, steps, *xw.shape[1:])
        if self.go_backwards:
            xw = xw.flip(1)
        ones = [1] * self.dims
        h = xw.new_zeros(n, self.filters, *xw.shape[3:])
        c = torch.zeros_like(h)
        outs = []
        for t in range(steps):
            z = xw[:, t] + self._conv(self._pad(h, ones, ones), self.recurrent_kernel, None)
            i, f, g, o = z.split(self.filters, dim=1)
            c = self.rec_act(f) * c + self.rec_act(i) * self.act(g)
            h = self.rec_act(o) * self.act(c)
            outs.append(h)
        y = torch.stack(outs, dim=1) if self.return_sequences else h
        if self.channels_last:
            y = y.movedim(2 if self.return_sequences else 1, -1)
            h, c = h.movedim(1, -1), c.movedim(1, -1)
        return (y, h, c) if self.return_state else y


@register_layer(
    "keras_conv_lstm",
    role=Role.WEIGHTS,
    n_in="in_channels",
    n_out="filters",
    size_axis=-1,
    infer=lambda s: {"in_channels": s[0][-1]},
    example={"dims": 2, "filters": 3, "kernel_size": [3, 3], "padding": "same", "return_sequences": True},
    example_inputs=((3, 5, 5, 2),),
)
def keras_conv_lstm(
    dims: Literal[1, 2, 3],
    in_channels: int,
    filters: int,
    kernel_size: list[int],
    strides: list[int] | None = None,
    padding: Literal["valid", "same"] = "valid",
    dilation: list[int] | None = None,
    activation: KerasActivationName = "tanh",
    recurrent_activation: KerasActivationName = "sigmoid",
    use_bias: bool = True,
    return_sequences: bool = False,
    go_backwards: bool = False,
    return_state: bool = False,
    channels_last: bool = True,
) -> nn.Module:
    """Keras ConvLSTM1D/2D/3D (inputs (T, *spatial, C), or (T, C, *spatial) with channels_last=false)."""
    if len(kernel_size) != dims:
        raise ValueError(f"kernel_size needs {dims} values")
    return KerasConvLSTM(dims, in_channels, filters, kernel_size, strides or [1] * dims, padding,
                         dilation or [1] * dims, activation, recurrent_activation, use_bias, return_sequences,
                         go_backwards, return_state, channels_last)


# ---- constants ------------------------------------------------------------------------------


class KerasConstant(nn.Module):
    """A constant operand of a Keras layer (a tensor Keras stored in the model config), repeated
    along the batch of the input it is given (whose values it ignores)."""

    def __init__(self, shape: list[int], integer: bool) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(1, *shape, dtype=torch.int64 if integer else torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], *self.value.shape[1:])


@register_layer("keras_constant", role=Role.FIXED, example={"shape": [3, 2]})
def keras_constant(shape: list[int], integer: bool = False) -> nn.Module:
    """A stored constant (per-sample ``shape``) repeated along the batch of its input."""
    return KerasConstant(shape, integer)
