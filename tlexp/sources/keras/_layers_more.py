"""Layer types for Keras models beyond the common ones: 3-D layers, normalization on any axis,
image preprocessing layers.

Each computes what the Keras layer computes, on the tensor layout the importer gives it (a
``dim`` argument is a torch dimension, batch included). They are ordinary registry layers, so an
imported model saves, reloads and rebuilds like any other.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.graph._layers import Conv, _act, _Pool
from tlexp.graph import Role, register_layer
from tlexp.sources.keras._layers import Crop, ZeroPad

IntOrTuple = int | tuple[int, ...]
Padding = str | int | tuple[int, ...]


def _chan(shapes):
    return {"in_channels": shapes[0][0]}


# ---- 3-D (and transposed 1-D / 3-D) convolutions, pooling, padding --------------------------


@register_layer("conv3d", role=Role.WEIGHTS, n_in="in_channels", n_out="out_channels", takes_activation=True,
                takes_dropout=True, infer=_chan, example={"out_channels": 2, "kernel_size": 3}, example_inputs=((2, 5, 5, 5),))
def conv3d(
    in_channels: int,
    out_channels: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    bias: bool = True,
    activation: str = "identity",
    dropout: float = 0.0,
) -> nn.Module:
    """3-D convolution over (C, D, H, W); padding 'same' is TF-style for any stride."""
    return Conv(3, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, activation, dropout)


def _transposed(dims: int):
    def builder(
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: Padding = 0,
        output_padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        activation: str = "identity",
    ) -> nn.Module:
        return Conv(dims, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, activation,
                    transposed=True, output_padding=output_padding)

    builder.__doc__ = f"Transposed {dims}-D convolution."
    shape = (3, 6) if dims == 1 else (2, 4, 4, 4)
    register_layer(f"conv_transpose{dims}d", role=Role.WEIGHTS, n_in="in_channels", n_out="out_channels",
                   takes_activation=True, infer=_chan, example={"out_channels": 2, "kernel_size": 3},
                   example_inputs=(shape,))(builder)


_transposed(1)
_transposed(3)


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
        self.act = _act(activation, None, dim=1)

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
