"""Layer types only Deeplearning4j imports need, registered under ``dl4j_*`` names.

Where a DL4J layer computes what a built-in type computes (dense, conv2d, pooling, padding,
concat, ...) the importer uses the built-in type; these are the rest: DL4J's own activation
functions, its LSTM (any activation, optional peepholes: GravesLSTM), SimpleRnn,
Bidirectional, per-time-step output layers on ``[batch, features, time]``, and a few vertices.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.graph import Role, register_layer
from tlexp.graph._layers import Dense

__all__ = ["DL4J_ACTIVATIONS", "apply_dl4j_activation"]

DL4JActivationName = Literal[
    "identity", "relu", "relu6", "leakyrelu", "elu", "selu", "swish", "sigmoid", "hardsigmoid", "tanh",
    "hardtanh", "rationaltanh", "rectifiedtanh", "cube", "softsign", "softplus", "softmax", "thresholdedrelu",
    "rrelu", "gelu", "mish", "logsoftmax",
]
DL4J_ACTIVATIONS: tuple[str, ...] = DL4JActivationName.__args__  # type: ignore[attr-defined]


def apply_dl4j_activation(x: torch.Tensor, name: str, alpha: float = 0.0, beta: float = 0.0, dim: int = 1) -> torch.Tensor:
    """DL4J's activation ``name`` (``alpha``/``beta``: leakyrelu/elu alpha, thresholdedrelu theta,
    rrelu bounds, relu max (beta) and threshold (alpha)). Softmax over ``dim`` (features)."""
    if name == "identity":
        return x
    if name == "relu":
        y = torch.where(x > alpha, x, torch.zeros_like(x)) if alpha else torch.relu(x)
        return torch.clamp(y, max=beta) if beta else y
    if name == "relu6":
        return torch.clamp(x, 0.0, 6.0)
    if name == "leakyrelu":
        return F.leaky_relu(x, alpha)
    if name == "elu":
        return F.elu(x, alpha)
    if name == "selu":
        return F.selu(x)
    if name == "swish":
        return x * torch.sigmoid(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "hardsigmoid":
        return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)
    if name == "tanh":
        return torch.tanh(x)
    if name == "hardtanh":
        return torch.clamp(x, -1.0, 1.0)
    if name == "rationaltanh":
        y = x * (2.0 / 3.0)
        a = y.abs()
        approx = torch.sign(y) * (1.0 - 1.0 / (1.0 + a + y * y + 1.41645 * y**4))
        return 1.7159 * approx
    if name == "rectifiedtanh":
        return torch.clamp(torch.tanh(x), min=0.0)
    if name == "cube":
        return x**3
    if name == "softsign":
        return F.softsign(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "softmax":
        return torch.softmax(x, dim=dim if x.dim() > 1 else -1)
    if name == "logsoftmax":
        return torch.log_softmax(x, dim=dim if x.dim() > 1 else -1)
    if name == "thresholdedrelu":
        return torch.where(x > alpha, x, torch.zeros_like(x))
    if name == "rrelu":
        # inference: the mean of the random slope's range
        return torch.where(x >= 0, x, x * ((alpha + beta) / 2.0))
    if name == "gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "mish":
        return x * torch.tanh(F.softplus(x))
    raise ValueError(f"unknown DL4J activation {name!r}")


class DL4JActivation(nn.Module):
    def __init__(self, name: str, alpha: float, beta: float, dim: int) -> None:
        super().__init__()
        self.name, self.alpha, self.beta, self.dim = name, alpha, beta, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_dl4j_activation(x, self.name, self.alpha, self.beta, self.dim)

    def extra_repr(self) -> str:
        return f"{self.name}, alpha={self.alpha}, beta={self.beta}"


@register_layer("dl4j_activation", role=Role.PASS, example={"name": "rationaltanh"})
def dl4j_activation(name: DL4JActivationName, alpha: float = 0.0, beta: float = 0.0, dim: int = 1) -> nn.Module:
    """One of Deeplearning4j's activation functions, as DL4J computes it (softmax over ``dim``)."""
    return DL4JActivation(name, alpha, beta, dim)


# ---- recurrent layers on [batch, features, time] ----------------------------------------------


class DL4JLSTM(nn.Module):
    """DL4J's LSTM cell: gate blocks [block input | forget | output | input-modulation] in that
    order, any block activation, optional peepholes (GravesLSTM). Input/output [B, F, T].

    ``W`` is [nIn, 4n], ``RW`` is [n, 4n] (+3 peephole columns: forget, output, input gate), ``b``
    is [4n]: DL4J's own layouts, so its parameters load unchanged.
    """

    def __init__(self, n_in: int, n_out: int, activation: str, gate_activation: str, peepholes: bool) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.activation, self.gate_activation, self.peepholes = activation, gate_activation, peepholes
        self.W = nn.Parameter(torch.empty(n_in, 4 * n_out))
        self.RW = nn.Parameter(torch.empty(n_out, 4 * n_out + (3 if peepholes else 0)))
        self.b = nn.Parameter(torch.zeros(4 * n_out))
        bound = 1.0 / math.sqrt(max(n_out, 1))
        nn.init.uniform_(self.W, -bound, bound)
        nn.init.uniform_(self.RW, -bound, bound)
        with torch.no_grad():
            self.b[n_out : 2 * n_out] = 1.0  # DL4J's forgetGateBiasInit

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        B, _, T = x.shape
        n = self.n_out
        xw = torch.einsum("bft,fg->btg", x, self.W) + self.b
        rw = self.RW[:, : 4 * n]
        h = x.new_zeros(B, n)
        c = x.new_zeros(B, n)
        outs: list[torch.Tensor] = [x.new_zeros(0)] * T
        steps = range(T - 1, -1, -1) if reverse else range(T)
        act, gate = self.activation, self.gate_activation
        for t in steps:
            z = xw[:, t] + h @ rw
            a = apply_dl4j_activation(z[:, :n], act)
            zf, zo, zg = z[:, n : 2 * n], z[:, 2 * n : 3 * n], z[:, 3 * n :]
            if self.peepholes:
                zf = zf + c * self.RW[:, 4 * n]
                zg = zg + c * self.RW[:, 4 * n + 2]
            f = apply_dl4j_activation(zf, gate)
            g = apply_dl4j_activation(zg, gate)
            c = f * c + g * a
            if self.peepholes:
                zo = zo + c * self.RW[:, 4 * n + 1]
            o = apply_dl4j_activation(zo, gate)
            h = o * apply_dl4j_activation(c, act)
            outs[t] = h
        return torch.stack(outs, dim=2)


class DL4JSimpleRnn(nn.Module):
    """h_t = act(x_t W + h_{t-1} RW + b); input/output [B, F, T]."""

    def __init__(self, n_in: int, n_out: int, activation: str) -> None:
        super().__init__()
        self.n_in, self.n_out, self.activation = n_in, n_out, activation
        self.W = nn.Parameter(torch.empty(n_in, n_out))
        self.RW = nn.Parameter(torch.empty(n_out, n_out))
        self.b = nn.Parameter(torch.zeros(n_out))
        bound = 1.0 / math.sqrt(max(n_out, 1))
        nn.init.uniform_(self.W, -bound, bound)
        nn.init.uniform_(self.RW, -bound, bound)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        B, _, T = x.shape
        xw = torch.einsum("bft,fg->btg", x, self.W) + self.b
        h = x.new_zeros(B, self.n_out)
        outs: list[torch.Tensor] = [x.new_zeros(0)] * T
        for t in range(T - 1, -1, -1) if reverse else range(T):
            h = apply_dl4j_activation(xw[:, t] + h @ self.RW, self.activation)
            outs[t] = h
        return torch.stack(outs, dim=2)


RnnKind = Literal["lstm", "graves_lstm", "simple_rnn"]


def _cell(kind: str, n_in: int, n_out: int, activation: str, gate_activation: str) -> nn.Module:
    if kind == "simple_rnn":
        return DL4JSimpleRnn(n_in, n_out, activation)
    return DL4JLSTM(n_in, n_out, activation, gate_activation, peepholes=kind == "graves_lstm")


class DL4JRecurrent(nn.Module):
    def __init__(self, cell: nn.Module, dropout: float) -> None:
        super().__init__()
        self.cell = cell
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cell(self.drop(x))


@register_layer("dl4j_rnn", role=Role.WEIGHTS, n_in="n_in", n_out="n_out",
                infer=lambda s: {"n_in": s[0][0]}, example={"n_out": 3}, example_inputs=((4, 5),))
def dl4j_rnn(
    n_in: int,
    n_out: int,
    kind: RnnKind = "lstm",
    activation: DL4JActivationName = "tanh",
    gate_activation: DL4JActivationName = "sigmoid",
    dropout: float = 0.0,
) -> nn.Module:
    """DL4J's LSTM / GravesLSTM (peepholes) / SimpleRnn on [features, time]; every step out."""
    return DL4JRecurrent(_cell(kind, n_in, n_out, activation, gate_activation), dropout)


BiMode = Literal["concat", "add", "mul", "average"]


class DL4JBidirectional(nn.Module):
    def __init__(self, fwd: nn.Module, bwd: nn.Module, mode: str, dropout: float) -> None:
        super().__init__()
        self.fwd, self.bwd, self.mode = fwd, bwd, mode
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        a = self.fwd(x)
        b = self.bwd(x, reverse=True)
        if self.mode == "concat":
            return torch.cat([a, b], dim=1)
        if self.mode == "add":
            return a + b
        if self.mode == "mul":
            return a * b
        return (a + b) / 2.0


def _bidirectional_out(args: dict, n_out: int) -> int:
    return 2 * n_out if args.get("mode") == "concat" else n_out


@register_layer(
    "dl4j_bidirectional", role=Role.WEIGHTS, n_in="n_in", n_out="n_out", out_size=_bidirectional_out,
    infer=lambda s: {"n_in": s[0][0]}, example={"n_out": 3}, example_inputs=((4, 5),)
)
def dl4j_bidirectional(
    n_in: int,
    n_out: int,
    kind: RnnKind = "lstm",
    mode: BiMode = "concat",
    activation: DL4JActivationName = "tanh",
    gate_activation: DL4JActivationName = "sigmoid",
    dropout: float = 0.0,
) -> nn.Module:
    """DL4J's Bidirectional wrapper (and GravesBidirectionalLSTM: mode add): one layer forwards,
    one over the reversed sequence, combined by ``mode``."""
    fwd = _cell(kind, n_in, n_out, activation, gate_activation)
    bwd = _cell(kind, n_in, n_out, activation, gate_activation)
    return DL4JBidirectional(fwd, bwd, mode, dropout)


class TimeDense(nn.Module):
    """A dense layer applied at every time step of [B, F, T] (DL4J's RnnOutputLayer)."""

    def __init__(self, dense: Dense, activation: str, alpha: float) -> None:
        super().__init__()
        self.dense = dense
        self.activation, self.alpha = activation, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return apply_dl4j_activation(self.dense(x), self.activation, self.alpha, dim=1)
        y = self.dense(x.transpose(1, 2)).transpose(1, 2)
        return apply_dl4j_activation(y, self.activation, self.alpha, dim=1)

    @property
    def weight(self) -> torch.Tensor:
        return self.dense.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.dense.bias


@register_layer("dl4j_time_dense", role=Role.WEIGHTS, n_in="in_features", n_out="out_features",
                infer=lambda s: {"in_features": s[0][0]}, example={"out_features": 3},
                example_inputs=((4, 5),))
def dl4j_time_dense(
    in_features: int,
    out_features: int,
    bias: bool = True,
    activation: DL4JActivationName = "identity",
    alpha: float = 0.0,
    dropout: float = 0.0,
) -> nn.Module:
    """Dense on the feature axis of [features, time] at every step (DL4J RnnOutputLayer), with
    a DL4J activation over the features."""
    return TimeDense(Dense(in_features, out_features, bias=bias, dropout=dropout), activation, alpha)


class DL4JEmbedding(nn.Module):
    def __init__(self, n_in: int, n_out: int, bias: bool, sequence: bool, activation: str) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_in, n_out) * (1.0 / math.sqrt(n_out)))
        self.b = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.sequence, self.activation = sequence, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x.long()
        if self.sequence:
            if idx.dim() == 3:
                idx = idx[:, 0]
            y = self.W[idx]  # [B, T, nOut]
            if self.b is not None:
                y = y + self.b
            return apply_dl4j_activation(y, self.activation, dim=-1).transpose(1, 2)
        y = self.W[idx.reshape(idx.shape[0])]
        if self.b is not None:
            y = y + self.b
        return apply_dl4j_activation(y, self.activation, dim=1)


@register_layer("dl4j_embedding", role=Role.WEIGHTS, n_out="n_out", example={"n_in": 5, "n_out": 3}, example_inputs=((1,),))
def dl4j_embedding(n_in: int, n_out: int, bias: bool = False, sequence: bool = False, activation: DL4JActivationName = "identity") -> nn.Module:
    """DL4J's EmbeddingLayer ([B,1] indices -> [B,nOut]) or EmbeddingSequenceLayer ([B,T] -> [B,nOut,T])."""
    return DL4JEmbedding(n_in, n_out, bias, sequence, activation)


class DL4JBatchNorm(nn.Module):
    """Inference-mode batch norm over axis 1 of any rank; training uses batch statistics."""

    def __init__(self, n: int, eps: float, momentum: float, affine: bool, gamma: float, beta: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(n, eps=eps, momentum=momentum, affine=affine)
        self.gamma, self.beta = gamma, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                         self.training, bn.momentum, bn.eps)
        if not bn.affine and (self.gamma != 1.0 or self.beta != 0.0):
            y = y * self.gamma + self.beta
        return y


@register_layer("dl4j_batchnorm", role=Role.FOLLOW, follow="num_features", infer=lambda s: {"num_features": s[0][0]}, example_inputs=((3, 4, 4),))
def dl4j_batchnorm(num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                   gamma: float = 1.0, beta: float = 0.0) -> nn.Module:
    """DL4J's BatchNormalization on [C], [C, T] or [C, H, W] (lockGammaBeta: affine false, fixed gamma/beta)."""
    return DL4JBatchNorm(num_features, eps, momentum, affine, gamma, beta)


class LRN(nn.Module):
    def __init__(self, k: float, n: float, alpha: float, beta: float) -> None:
        super().__init__()
        self.k, self.n, self.alpha, self.beta = k, int(n), alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.n // 2
        sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, half, half)).squeeze(1)
        s = sum(sq[:, i : i + x.shape[1]] for i in range(2 * half + 1))
        return x / (self.k + self.alpha * s) ** self.beta


@register_layer("dl4j_lrn", role=Role.PASS, example_inputs=((6, 3, 3),))
def dl4j_lrn(k: float = 2.0, n: float = 5.0, alpha: float = 1e-4, beta: float = 0.75) -> nn.Module:
    """DL4J's LocalResponseNormalization: x / (k + alpha * sum of squares over n channels)^beta."""
    return LRN(k, n, alpha, beta)


PoolKind = Literal["max", "avg", "sum", "pnorm"]


class DL4JPool(nn.Module):
    def __init__(self, kind: str, dims: int, kernel, stride, padding, same: bool, pnorm: int,
                 include_pad: bool) -> None:
        super().__init__()
        self.kind, self.dims = kind, dims
        self.kernel, self.stride, self.padding = list(kernel), list(stride), list(padding)
        self.same, self.pnorm, self.include_pad = same, pnorm, include_pad

    def _pads(self, x: torch.Tensor) -> list[int]:
        pads: list[int] = []
        for i in reversed(range(self.dims)):
            if self.same:
                size = x.shape[-self.dims + i]
                out = math.ceil(size / self.stride[i])
                total = max((out - 1) * self.stride[i] + self.kernel[i] - size, 0)
                pads += [total // 2, total - total // 2]
            else:
                pads += [self.padding[i], self.padding[i]]
        return pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = self._pads(x)
        k, s = tuple(self.kernel), tuple(self.stride)
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[self.dims - 1]
        apool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[self.dims - 1]
        if self.kind == "max":
            return pool(F.pad(x, pads, value=float("-inf")) if any(pads) else x, k, s)
        if self.kind == "pnorm":
            p = float(self.pnorm)
            y = apool(F.pad(x.abs() ** p, pads), k, s) * math.prod(k)
            return y ** (1.0 / p)
        xp = F.pad(x, pads)
        total = apool(xp, k, s) * math.prod(k)
        if self.kind == "sum":
            return total
        if self.include_pad or not any(pads):
            return total / math.prod(k)
        count = apool(F.pad(torch.ones_like(x[:1, :1]), pads), k, s) * math.prod(k)
        return total / count


@register_layer("dl4j_pool", role=Role.PASS, example={"kernel": [2, 2], "stride": [2, 2]}, example_inputs=((2, 6, 6),))
def dl4j_pool(kernel: list[int], stride: list[int], padding: list[int] | None = None, kind: PoolKind = "max",
              same: bool = False, pnorm: int = 2, include_pad: bool = False) -> nn.Module:
    """DL4J's Subsampling(1D/3D)Layer: max / avg / sum / pnorm pooling, Truncate or Same mode."""
    return DL4JPool(kind, len(kernel), kernel, stride, padding or [0] * len(kernel), same, pnorm, include_pad)


class GlobalPool(nn.Module):
    def __init__(self, kind: str, dims: list[int] | None, keepdims: bool, pnorm: int) -> None:
        super().__init__()
        self.kind, self.dims, self.keepdims, self.pnorm = kind, dims, keepdims, pnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(self.dims) if self.dims else tuple(range(2, x.dim()))
        if self.kind == "max":
            return x.amax(dim=dims, keepdim=self.keepdims)
        if self.kind == "avg":
            return x.mean(dim=dims, keepdim=self.keepdims)
        if self.kind == "sum":
            return x.sum(dim=dims, keepdim=self.keepdims)
        p = float(self.pnorm)
        return (x.abs() ** p).sum(dim=dims, keepdim=self.keepdims) ** (1.0 / p)


@register_layer("dl4j_global_pool", role=Role.PASS, example_inputs=((3, 4, 4),))
def dl4j_global_pool(kind: PoolKind = "max", dims: list[int] | None = None, keepdims: bool = False,
                     pnorm: int = 2) -> nn.Module:
    """DL4J's GlobalPoolingLayer (max/avg/sum/pnorm over the time or spatial axes)."""
    return GlobalPool(kind, dims, keepdims, pnorm)


# ---- vertices --------------------------------------------------------------------------------


class L2Normalize(nn.Module):
    def __init__(self, dims: list[int] | None, eps: float) -> None:
        super().__init__()
        self.dims, self.eps = dims, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(self.dims) if self.dims else tuple(range(1, x.dim()))
        norm = x.pow(2).sum(dim=dims, keepdim=True).sqrt()
        return x / torch.clamp(norm, min=self.eps)


@register_layer("dl4j_l2_normalize", role=Role.PASS, example_inputs=((4,),))
def dl4j_l2_normalize(dims: list[int] | None = None, eps: float = 1e-8) -> nn.Module:
    """DL4J's L2NormalizeVertex: x / max(||x||, eps) over ``dims`` (all but the batch by default)."""
    return L2Normalize(dims, eps)


class L2Distance(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = (a - b).reshape(a.shape[0], -1)
        return d.pow(2).sum(dim=1, keepdim=True).sqrt()


@register_layer("dl4j_l2", role=Role.FIXED, example_inputs=((4,), (4,)))
def dl4j_l2(eps: float = 1e-8) -> nn.Module:
    """DL4J's L2Vertex: the Euclidean distance of two inputs, [batch, 1]."""
    return L2Distance(eps)


class Unstack(nn.Module):
    def __init__(self, index: int, count: int) -> None:
        super().__init__()
        self.index, self.count = index, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = x.shape[0] // self.count
        return x[self.index * step : (self.index + 1) * step]


@register_layer("dl4j_unstack", role=Role.FIXED, example={"index": 0, "count": 1})
def dl4j_unstack(index: int, count: int) -> nn.Module:
    """DL4J's UnstackVertex: part ``index`` of ``count`` equal parts along the batch axis."""
    return Unstack(index, count)


class StackBatch(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=0)


@register_layer("dl4j_stack", role=Role.FIXED, example_inputs=((4,), (4,)))
def dl4j_stack() -> nn.Module:
    """DL4J's StackVertex: inputs stacked along the batch axis."""
    return StackBatch()


class ReshapeFull(nn.Module):
    def __init__(self, shape: list[int], order: str) -> None:
        super().__init__()
        self.shape, self.order = list(shape), order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [x.shape[0] if i == 0 and s in (-1, x.shape[0]) else s for i, s in enumerate(self.shape)]
        if self.order == "f":
            return x.permute(*reversed(range(x.dim()))).reshape(list(reversed(shape))).permute(
                *reversed(range(len(shape))))
        return x.reshape(shape)


@register_layer("dl4j_reshape", role=Role.FIXED, example={"shape": [-1, 2, 2]})
def dl4j_reshape(shape: list[int], order: Literal["c", "f"] = "c") -> nn.Module:
    """DL4J's ReshapeVertex: reshape the whole array (batch axis included) in 'c' or 'f' order."""
    return ReshapeFull(shape, order)


class ImageScale(nn.Module):
    def __init__(self, min_range: float, max_range: float, max_pixel: float) -> None:
        super().__init__()
        self.min_range, self.max_range, self.max_pixel = min_range, max_range, max_pixel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.max_pixel * (self.max_range - self.min_range) + self.min_range


@register_layer("dl4j_image_scaler", role=Role.PASS, example_inputs=((3, 2, 2),))
def dl4j_image_scaler(min_range: float = 0.0, max_range: float = 1.0, max_pixel: float = 255.0) -> nn.Module:
    """DL4J's ImagePreProcessingScaler: pixels / max_pixel scaled into [min_range, max_range]."""
    return ImageScale(min_range, max_range, max_pixel)


# ---- DL4J's input preprocessors between sequence, feed-forward and image layers -------------
# DL4J flattens a sequence [mb, size, T] into [mb*T, size] rows ordered time-major (row t*mb + b:
# permute(0, 2, 1) then an 'f'-order reshape), and folds such rows back using the network's
# minibatch size; the nodes that fold take the network input as a second input to read it from.


def _seq_rows(x: torch.Tensor) -> torch.Tensor:
    """[mb, size, T] -> [T*mb, size], row t*mb + b (DL4J's RnnToFeedForwardPreProcessor)."""
    return x.permute(2, 0, 1).reshape(x.shape[0] * x.shape[2], x.shape[1])


def _rows_seq(x: torch.Tensor, mb: int) -> torch.Tensor:
    """[T*mb, size] -> [mb, size, T] (DL4J's FeedForwardToRnnPreProcessor)."""
    if x.shape[0] % mb:
        raise ValueError(f"{x.shape[0]} rows are not a whole number of time steps of a minibatch of {mb}")
    return x.reshape(x.shape[0] // mb, mb, -1).permute(1, 2, 0)


class RnnToRows(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _seq_rows(x) if x.dim() == 3 else x


class RowsToRnn(nn.Module):
    def forward(self, x: torch.Tensor, net_input: torch.Tensor) -> torch.Tensor:
        return x if x.dim() == 3 else _rows_seq(x, net_input.shape[0])


class CnnToRnn(nn.Module):
    def forward(self, x: torch.Tensor, net_input: torch.Tensor) -> torch.Tensor:
        return _rows_seq(x.reshape(x.shape[0], -1), net_input.shape[0])


class RnnToCnn(nn.Module):
    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.shape = (channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _seq_rows(x).reshape(-1, *self.shape)


@register_layer("dl4j_rnn_to_ff", role=Role.FIXED, example_inputs=((4, 5),))
def dl4j_rnn_to_ff() -> nn.Module:
    """DL4J's RnnToFeedForwardPreProcessor: [mb, size, T] -> [mb*T, size], time-major rows."""
    return RnnToRows()


@register_layer("dl4j_ff_to_rnn", role=Role.FIXED, example_inputs=((4,), (4, 1)))
def dl4j_ff_to_rnn() -> nn.Module:
    """DL4J's FeedForwardToRnnPreProcessor: [mb*T, size] -> [mb, size, T]; the second input (the
    network input) gives the minibatch size."""
    return RowsToRnn()


@register_layer("dl4j_cnn_to_rnn", role=Role.FIXED, example_inputs=((2, 2, 2), (8, 1)))
def dl4j_cnn_to_rnn() -> nn.Module:
    """DL4J's CnnToRnnPreProcessor: [mb*T, c, h, w] -> [mb, c*h*w, T]; the second input (the network
    input) gives the minibatch size."""
    return CnnToRnn()


@register_layer("dl4j_rnn_to_cnn", role=Role.FIXED, example={"channels": 2, "height": 2, "width": 1},
                example_inputs=((4, 3),))
def dl4j_rnn_to_cnn(channels: int, height: int, width: int) -> nn.Module:
    """DL4J's RnnToCnnPreProcessor: [mb, c*h*w, T] -> [mb*T, c, h, w], time-major rows."""
    return RnnToCnn(channels, height, width)
