"""Built-in layer types.

Shapes in ``infer`` functions are per sample (no batch dimension), channels first as torch
takes them. Layers with weights take an ``activation`` and a ``dropout`` (applied to the
layer's input, as Deeplearning4j does), so a network listed in YAML reads like the DL4J or Keras
code it replaces, and fine-tune overrides can change them per layer.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.graph._activations import ACTIVATIONS, TORCH_LEAKY_SLOPE, make_activation
from tlexp.graph._registry import Role, register_layer

__all__ = ["ACTIVATIONS", "make_activation", "Dense", "Conv"]


def _activation_layer(activation: str, alpha: float | None, dim: int = -1) -> nn.Module:
    if activation == "leaky_relu" and alpha is None:
        alpha = TORCH_LEAKY_SLOPE  # tlexp's own layers take torch's slope
    return make_activation(activation, dim=dim, alpha=alpha)


class Dense(nn.Linear):
    """Dropout on the input, then x W^T + b, then an activation (on the last axis)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "identity",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.act = _activation_layer(activation, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(self.drop(x)))


class Conv(nn.Module):
    """Convolution (1-D, 2-D or 3-D) with TF-style ``same`` padding for any stride.

    torch's own ``padding="same"`` allows stride 1 only; TF pads asymmetrically (the extra
    pixel at the end) for any stride, and imported Keras models depend on that exact placement.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        activation: str = "identity",
        dropout: float = 0.0,
        transposed: bool = False,
        output_padding: int | tuple[int, ...] = 0,
    ) -> None:
        super().__init__()
        self.dims = dims
        tup = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,) * dims  # noqa: E731
        self.kernel_size, self.stride, self.dilation = tup(kernel_size), tup(stride), tup(dilation)
        self.same = padding == "same"
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid' or integers, not {padding!r}")
        pad = 0 if isinstance(padding, str) else tup(padding)
        cls = {
            (1, False): nn.Conv1d,
            (2, False): nn.Conv2d,
            (3, False): nn.Conv3d,
            (1, True): nn.ConvTranspose1d,
            (2, True): nn.ConvTranspose2d,
            (3, True): nn.ConvTranspose3d,
        }[(dims, transposed)]
        kw = dict(stride=self.stride, padding=pad, dilation=self.dilation, groups=groups, bias=bias)
        if transposed:
            kw["output_padding"] = tup(output_padding)
        self.conv = cls(in_channels, out_channels, self.kernel_size, **kw)
        self.transposed = transposed
        self.drop = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)[dims - 1](dropout) if dropout > 0 else nn.Identity()
        self.act = _activation_layer(activation, None, dim=1)

    def _same_pad(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for i in reversed(range(self.dims)):
            size = x.shape[-self.dims + i]
            k = (self.kernel_size[i] - 1) * self.dilation[i] + 1
            out = math.ceil(size / self.stride[i])
            total = max((out - 1) * self.stride[i] + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads) if any(pads) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        if self.same and not self.transposed:
            x = self._same_pad(x)
        y = self.conv(x)
        if self.same and self.transposed:
            # TF 'same' for transposed conv: output = input * stride, crop the excess
            for i in range(self.dims):
                want = x.shape[-self.dims + i] * self.stride[i]
                extra = y.shape[-self.dims + i] - want
                if extra > 0:
                    start = extra // 2
                    y = y.narrow(y.dim() - self.dims + i, start, want)
        return self.act(y)

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias


Padding = str | int | tuple[int, ...]
IntOrTuple = int | tuple[int, ...]


#: what every convolution declares besides its sizes
_CONV: dict = {"takes_activation": True, "takes_dropout": True}


def _rnn_out(args: dict, n_out: int) -> int:
    return 2 * n_out if args.get("bidirectional") else n_out


def _last(shapes):  # in_features for dense
    return {"in_features": shapes[0][-1]}


def _in_channels(shapes):
    return {"in_channels": shapes[0][0]}


def _num_features(shapes):
    return {"num_features": shapes[0][0]}


@register_layer("dense", role=Role.WEIGHTS, n_in="in_features", n_out="out_features", size_axis=-1,
                takes_activation=True, takes_dropout=True, infer=_last, example={"out_features": 3}, aliases=("linear",))
def dense(
    in_features: int,
    out_features: int,
    bias: bool = True,
    activation: str = "identity",
    dropout: float = 0.0,
) -> nn.Module:
    """Fully connected layer (works on the last axis of any input)."""
    return Dense(in_features, out_features, bias=bias, activation=activation, dropout=dropout)


_CONV_AXES = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, D, H, W)"}


def _register_convs(dims: int) -> None:
    """``conv{dims}d`` and ``conv_transpose{dims}d``: one builder per kind, for 1, 2 and 3 dims."""

    def conv(
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
        return Conv(dims, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, activation,
                    dropout)

    def conv_transpose(
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

    conv.__doc__ = f"{dims}-D convolution over {_CONV_AXES[dims]}; padding 'same' is TF-style for any stride."
    conv_transpose.__doc__ = f"Transposed {dims}-D convolution."
    shape = {1: (3, 8), 2: (3, 8, 8), 3: (2, 5, 5, 5)}[dims]
    sizes: dict[str, Any] = {"role": Role.WEIGHTS, "n_in": "in_channels", "n_out": "out_channels", "infer": _in_channels,
             "example": {"out_channels": 2, "kernel_size": 3}, "example_inputs": (shape,)}
    register_layer(f"conv{dims}d", **_CONV, **sizes)(conv)
    register_layer(f"conv_transpose{dims}d", takes_activation=True, **sizes)(conv_transpose)


for _dims in (1, 2, 3):
    _register_convs(_dims)


@register_layer(
    "depthwise_conv2d", role=Role.FOLLOW, follow="in_channels", n_out="depth_multiplier", **_CONV, infer=_in_channels,
    example={"kernel_size": 3}, example_inputs=((3, 8, 8),)
)
def depthwise_conv2d(
    in_channels: int,
    kernel_size: IntOrTuple,
    depth_multiplier: int = 1,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    bias: bool = True,
    activation: str = "identity",
    dropout: float = 0.0,
) -> nn.Module:
    """Depthwise 2-D convolution: one filter set per input channel (groups = channels)."""
    return Conv(
        2, in_channels, in_channels * depth_multiplier, kernel_size, stride, padding, dilation,
        in_channels, bias, activation, dropout,
    )


class SeparableConv(nn.Module):
    def __init__(self, depthwise: Conv, pointwise: Conv) -> None:
        super().__init__()
        self.depthwise = depthwise
        self.pointwise = pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


@register_layer(
    "separable_conv2d", role=Role.WEIGHTS, n_in="in_channels", n_out="out_channels", **_CONV, infer=_in_channels,
    example={"out_channels": 4, "kernel_size": 3}, example_inputs=((3, 8, 8),)
)
def separable_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: IntOrTuple,
    depth_multiplier: int = 1,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    bias: bool = True,
    activation: str = "identity",
    dropout: float = 0.0,
) -> nn.Module:
    """Depthwise conv (no bias) followed by a 1×1 pointwise conv (with bias and activation)."""
    mid = in_channels * depth_multiplier
    dw = Conv(2, in_channels, mid, kernel_size, stride, padding, dilation, in_channels, False, "identity", dropout)
    pw = Conv(2, mid, out_channels, 1, bias=bias, activation=activation)
    return SeparableConv(dw, pw)


class _Pool(nn.Module):
    def __init__(self, kind: str, dims: int, kernel_size, stride, padding) -> None:
        super().__init__()
        self.dims = dims
        tup = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,) * dims  # noqa: E731
        self.kernel_size = tup(kernel_size)
        self.stride = tup(stride if stride is not None else kernel_size)
        self.same = padding == "same"
        pad = 0 if isinstance(padding, str) else tup(padding)
        self.kind = kind
        cls = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d, ("max", 3): nn.MaxPool3d,
               ("avg", 1): nn.AvgPool1d, ("avg", 2): nn.AvgPool2d, ("avg", 3): nn.AvgPool3d}
        kw = {} if kind == "max" else {"count_include_pad": False}
        self.pool = cls[(kind, dims)](self.kernel_size, self.stride, pad, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            pads: list[int] = []
            for i in reversed(range(self.dims)):
                size = x.shape[-self.dims + i]
                out = math.ceil(size / self.stride[i])
                total = max((out - 1) * self.stride[i] + self.kernel_size[i] - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                if self.kind == "max":
                    x = F.pad(x, pads, value=float("-inf"))
                else:
                    # TF averages over the valid pixels only: divide by the count of real ones
                    ones = torch.ones_like(x[:1, :1])
                    num = self.pool(F.pad(x, pads))
                    den = self.pool(F.pad(ones, pads))
                    return num / den
        return self.pool(x)


def _register_pool(kind: str, dims: int) -> None:
    shape = (2, 8) if dims == 1 else (2, 8, 8)

    def pool(kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: Padding = 0) -> nn.Module:
        return _Pool(kind, dims, kernel_size, stride, padding)

    pool.__doc__ = f"{kind} pooling over {dims} spatial dimension(s); padding 'same' is TF-style."
    register_layer(f"{kind}_pool{dims}d", role=Role.PASS, example={"kernel_size": 2}, example_inputs=(shape,))(pool)


for _k in ("max", "avg"):
    for _d in (1, 2):
        _register_pool(_k, _d)


class GlobalPool(nn.Module):
    def __init__(self, kind: str, keepdims: bool) -> None:
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        if self.kind == "avg":
            return x.mean(dim=dims, keepdim=self.keepdims)
        return x.amax(dim=dims, keepdim=self.keepdims)


@register_layer("global_avg_pool", role=Role.PASS, example_inputs=((3, 4, 4),))
def global_avg_pool(keepdims: bool = False) -> nn.Module:
    """Mean over every axis after the channel axis."""
    return GlobalPool("avg", keepdims)


@register_layer("global_max_pool", role=Role.PASS, example_inputs=((3, 4, 4),))
def global_max_pool(keepdims: bool = False) -> nn.Module:
    """Max over every axis after the channel axis."""
    return GlobalPool("max", keepdims)


@register_layer("batchnorm1d", role=Role.FOLLOW, follow="num_features", infer=_num_features, example_inputs=((3,),))
def batchnorm1d(num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> nn.Module:
    """Batch normalization over (C) or (C, L) inputs."""
    return nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=affine)


@register_layer("batchnorm2d", role=Role.FOLLOW, follow="num_features", infer=_num_features, example_inputs=((3, 4, 4),))
def batchnorm2d(num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> nn.Module:
    """Batch normalization over (C, H, W) inputs."""
    return nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=affine)


@register_layer("layernorm", role=Role.FOLLOW, follow="normalized_shape", size_axis=-1,
                infer=lambda s: {"normalized_shape": [s[0][-1]]}, example_inputs=((5,),))
def layernorm(normalized_shape: list[int], eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True) -> nn.Module:
    """Layer normalization over the trailing ``normalized_shape`` axes."""
    return nn.LayerNorm(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias)


@register_layer("dropout", role=Role.PASS, is_dropout=True)
def dropout(p: float = 0.5) -> nn.Module:
    """Element-wise dropout (off in inference mode)."""
    if not 0.0 <= p < 1.0:
        raise ValueError("p must be in [0, 1)")
    return nn.Dropout(p)


class Activation(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@register_layer("activation", role=Role.PASS, is_activation=True, example={"name": "relu"})
def activation(name: str, alpha: float | None = None, dim: int = -1) -> nn.Module:
    """An activation function by name (alpha for leaky_relu/elu, dim for softmax)."""
    return Activation(_activation_layer(name, alpha, dim))


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_layer("flatten", role=Role.PASS, keeps_size=False, example_inputs=((2, 3, 3),))
def flatten() -> nn.Module:
    """Flatten every axis after the batch axis."""
    return Flatten()


class Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


@register_layer("reshape", role=Role.FIXED, example={"shape": [2, 2]}, example_inputs=((4,),))
def reshape(shape: tuple[int, ...]) -> nn.Module:
    """Reshape each sample to ``shape`` (-1 allowed once)."""
    return Reshape(shape)


class Permute(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, *(d + 1 for d in self.dims))


@register_layer("permute", role=Role.PASS, keeps_size=False, example={"dims": [1, 0]}, example_inputs=((2, 3),))
def permute(dims: tuple[int, ...]) -> nn.Module:
    """Permute the per-sample axes (0-based, batch axis excluded)."""
    if sorted(dims) != list(range(len(dims))):
        raise ValueError(f"dims must be a permutation of 0..{len(dims) - 1}")
    return Permute(dims)


class Embedding(nn.Embedding):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.long())


@register_layer(
    "embedding", role=Role.WEIGHTS, n_out="embedding_dim", size_axis=-1, example={"num_embeddings": 10, "embedding_dim": 3}, example_inputs=((5,),)
)
def embedding(num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> nn.Module:
    """Lookup table from integer ids to vectors."""
    return Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)


class Recurrent(nn.Module):
    """LSTM/GRU over (T, F) sequences, batch first; the whole sequence or the last step."""

    def __init__(self, kind: str, input_size: int, hidden_size: int, num_layers: int,
                 bidirectional: bool, return_sequences: bool, bias: bool, dropout: float) -> None:
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(input_size, hidden_size, num_layers=num_layers, bias=bias, batch_first=True,
                       bidirectional=bidirectional, dropout=dropout)
        self.return_sequences = return_sequences
        self.bidirectional = bidirectional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        if self.return_sequences:
            return y
        if self.bidirectional:
            h = self.rnn.hidden_size
            # forward direction ends at the last step, backward direction at the first
            return torch.cat([y[:, -1, :h], y[:, 0, h:]], dim=-1)
        return y[:, -1]


def _register_rnn(kind: str) -> None:
    def rnn(
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        return_sequences: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> nn.Module:
        return Recurrent(kind, input_size, hidden_size, num_layers, bidirectional, return_sequences, bias, dropout)

    rnn.__doc__ = f"{kind.upper()} over (T, F) sequences; the last step unless return_sequences."
    register_layer(kind, role=Role.WEIGHTS, n_in="input_size", n_out="hidden_size", size_axis=-1, out_size=_rnn_out,
                   infer=lambda s: {"input_size": s[0][-1]}, example={"hidden_size": 3},
                   example_inputs=((5, 4),))(rnn)


_register_rnn("lstm")
_register_rnn("gru")


# ---- merge and function nodes (several inputs, no weights) ----------------------------------


class Merge(nn.Module):
    def __init__(self, op: str, dim: int = 1) -> None:
        super().__init__()
        self.op, self.dim = op, dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.op == "concat":
            return torch.cat(xs, dim=self.dim)
        out = xs[0]
        for x in xs[1:]:
            if self.op == "add":
                out = out + x
            elif self.op == "multiply":
                out = out * x
            elif self.op == "subtract":
                out = out - x
            elif self.op == "maximum":
                out = torch.maximum(out, x)
            elif self.op == "minimum":
                out = torch.minimum(out, x)
            elif self.op == "average":
                out = out + x
        if self.op == "average":
            out = out / len(xs)
        return out


def _register_merge(op: str, doc: str) -> None:
    def merge() -> nn.Module:
        return Merge(op)

    merge.__doc__ = doc
    register_layer(op, role=Role.ELEMENTWISE, variadic=op != "subtract", example_inputs=((4,), (4,)))(merge)


_register_merge("add", "Element-wise sum of the inputs.")
_register_merge("multiply", "Element-wise product of the inputs.")
_register_merge("subtract", "First input minus the second.")
_register_merge("average", "Element-wise mean of the inputs.")
_register_merge("maximum", "Element-wise maximum of the inputs.")
_register_merge("minimum", "Element-wise minimum of the inputs.")


@register_layer("concat", role=Role.CONCAT, example_inputs=((4,), (2,)))
def concat(dim: int = 1) -> nn.Module:
    """Concatenate the inputs along ``dim`` (1 = channels / features)."""
    return Merge("concat", dim)


class GetItem(nn.Module):
    def __init__(self, index: list) -> None:
        super().__init__()
        self.index = index
        self._key = tuple(slice(*i) if isinstance(i, list) else (None if i == "None" else i) for i in index)

    def forward(self, x):
        return x[self._key if len(self._key) != 1 else self._key[0]]


@register_layer("getitem", role=Role.FIXED, example={"index": [[None, None, None], 0]}, example_inputs=((3, 4),))
def getitem(index: list) -> nn.Module:
    """Index a tensor: each entry an int, [start, stop, step] for a slice, or 'None' for a new axis."""
    return GetItem(index)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register_layer("identity", role=Role.PASS)
def identity() -> nn.Module:
    """Passes its input through unchanged."""
    return Identity()


class Normalize(nn.Module):
    def __init__(self, mean: list[float], std: list[float], dim: int) -> None:
        super().__init__()
        shape = [1, -1] + [1] * max(dim - 1, 0) if dim >= 1 else [1, -1]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@register_layer("normalize", role=Role.FIXED, example={"mean": [0.5], "std": [2.0]}, example_inputs=((3,),))
def normalize(mean: list[float], std: list[float], spatial_dims: int = 0) -> nn.Module:
    """(x - mean) / std per channel (or per feature); ``spatial_dims`` axes follow the channels."""
    if len(mean) != len(std):
        raise ValueError("mean and std need the same length")
    return Normalize(mean, std, spatial_dims + 1)


Mode = Literal["nearest", "bilinear"]


@register_layer("upsample2d", role=Role.PASS, example_inputs=((2, 3, 3),))
def upsample2d(scale_factor: int | tuple[int, int] = 2, mode: Mode = "nearest") -> nn.Module:
    """Repeat rows and columns (nearest) or interpolate (bilinear)."""
    return nn.Upsample(scale_factor=scale_factor, mode=mode)
