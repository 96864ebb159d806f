"""Layer types that imported Keras models need and the built-ins lack (the Keras provider).

Each one computes exactly what the Keras layer computes (the formulas are Keras's documented
ones, written here in torch), on the layout the Keras importer gives it: spatial layers take
channels-first tensors (N, C, L) / (N, C, H, W), sequence layers take (N, T, F) as Keras does.
They are ordinary registry layers, so an imported model saves, reloads and rebuilds like any
other.
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.graph import KERAS_LEAKY_SLOPE, Role, build_layer, make_activation, register_layer

__all__ = ["KERAS_ACTIVATIONS", "keras_activation", "KerasRNN"]


# ---- activations ----------------------------------------------------------------------------

KerasActivationName = Literal[
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "gelu_tanh", "silu",
    "swish", "hard_silu", "hard_swish", "mish", "sigmoid", "hard_sigmoid", "hard_sigmoid_keras2",
    "log_sigmoid", "sparse_sigmoid", "tanh", "hard_tanh", "tanh_shrink", "soft_shrink",
    "hard_shrink", "softplus", "softsign", "sparse_plus", "squareplus", "exponential", "softmax",
    "log_softmax", "sparsemax", "glu",
]


#: every activation name a Keras 2 or Keras 3 file can store (all in tlexp.graph's one table)
KERAS_ACTIVATIONS: tuple[str, ...] = typing.get_args(KerasActivationName)


def keras_activation(name: str, dim: int = -1) -> nn.Module:
    """A Keras activation as a module, with Keras's defaults (leaky_relu's slope is 0.2)."""
    return make_activation(name, dim=dim, alpha=KERAS_LEAKY_SLOPE if name == "leaky_relu" else None)


class KerasActivation(nn.Module):
    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        self.name, self.dim = name, dim
        self.fn = keras_activation(name, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return f"{self.name}, dim={self.dim}"


@register_layer("keras_activation", role=Role.PASS, example={"name": "hard_sigmoid_keras2"})
def keras_activation_layer(name: KerasActivationName, dim: int = -1) -> nn.Module:
    """Any Keras activation by its Keras name (dim: the axis of softmax-like ones)."""
    return KerasActivation(name, dim)


class KerasReLU(nn.Module):
    """Keras ReLU: max_value above it, x from threshold up, negative_slope * (x - threshold) below."""

    def __init__(self, max_value: float | None, negative_slope: float, threshold: float) -> None:
        super().__init__()
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        below = self.negative_slope * (x - self.threshold) if self.negative_slope else torch.zeros_like(x)
        y = torch.where(x >= self.threshold, x, below)
        if self.max_value is not None:
            y = torch.where(x >= self.max_value, torch.full_like(x, self.max_value), y)
        return y


@register_layer("keras_relu", role=Role.PASS, example={"max_value": 2.0, "negative_slope": 0.1, "threshold": 0.5})
def keras_relu(max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0) -> nn.Module:
    """Keras's ReLU layer with max_value, negative_slope and threshold."""
    return KerasReLU(max_value, negative_slope, threshold)


class ThresholdedReLU(nn.Module):
    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.theta, x, torch.zeros_like(x))


@register_layer("thresholded_relu", role=Role.PASS)
def thresholded_relu(theta: float = 1.0) -> nn.Module:
    """x where x > theta, else 0."""
    return ThresholdedReLU(theta)


class PReLU(nn.Module):
    """max(0, x) + alpha * min(0, x); alpha has the per-sample shape, 1 on shared axes."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) - self.alpha * F.relu(-x)


@register_layer("prelu", role=Role.FIXED, example={"shape": [1, 4]}, example_inputs=((3, 4),))
def prelu(shape: list[int]) -> nn.Module:
    """Parametric ReLU with a learned slope per position (shape: per sample, 1 = shared)."""
    return PReLU(shape)


# ---- noise and dropout (inference no-ops) ---------------------------------------------------


class GaussianNoise(nn.Module):
    def __init__(self, stddev: float) -> None:
        super().__init__()
        self.stddev = stddev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.stddev > 0:
            return x + torch.randn_like(x) * self.stddev
        return x


@register_layer("gaussian_noise", role=Role.PASS)
def gaussian_noise(stddev: float = 0.1) -> nn.Module:
    """Adds N(0, stddev²) noise while training; identity in inference."""
    return GaussianNoise(stddev)


class GaussianDropout(nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and 0 < self.rate < 1:
            std = math.sqrt(self.rate / (1.0 - self.rate))
            return x * (1 + torch.randn_like(x) * std)
        return x


@register_layer("gaussian_dropout", role=Role.PASS)
def gaussian_dropout(rate: float = 0.1) -> nn.Module:
    """Multiplies by N(1, rate/(1-rate)) noise while training; identity in inference."""
    return GaussianDropout(rate)


@register_layer("alpha_dropout", role=Role.PASS)
def alpha_dropout(rate: float = 0.1) -> nn.Module:
    """Dropout that keeps SELU's self-normalization while training; identity in inference."""
    return nn.AlphaDropout(rate)


class SpatialDropout(nn.Module):
    """Drops whole channels (the same ones at every position) while training."""

    def __init__(self, rate: float, channels_last: bool) -> None:
        super().__init__()
        self.rate, self.channels_last = rate, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate <= 0:
            return x
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        cdim = x.dim() - 1 if self.channels_last else 1
        shape[cdim] = x.shape[cdim]
        keep = (torch.rand(shape, device=x.device) >= self.rate).to(x.dtype)
        return x * keep / (1 - self.rate)


@register_layer("spatial_dropout", role=Role.PASS, example_inputs=((3, 4),))
def spatial_dropout(rate: float = 0.1, channels_last: bool = False) -> nn.Module:
    """Channel dropout; channels on axis 1, or on the last axis with channels_last."""
    return SpatialDropout(rate, channels_last)


# ---- padding, cropping, upsampling, repeat (channels-first) ----------------------------------


class ZeroPad(nn.Module):
    def __init__(self, pads: list[int]) -> None:
        super().__init__()
        self.pads = list(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads)


@register_layer("zero_padding1d", role=Role.PASS, example={"padding": [1, 2]}, example_inputs=((2, 5),))
def zero_padding1d(padding: tuple[int, int]) -> nn.Module:
    """Zeros before and after the length axis of (C, L)."""
    return ZeroPad([padding[0], padding[1]])


@register_layer("zero_padding2d", role=Role.PASS, example={"padding": [1, 0, 2, 1]}, example_inputs=((2, 4, 4),))
def zero_padding2d(padding: tuple[int, int, int, int]) -> nn.Module:
    """Zeros around (C, H, W): top, bottom, left, right."""
    top, bottom, left, right = padding
    return ZeroPad([left, right, top, bottom])


class Crop(nn.Module):
    def __init__(self, crops: list[tuple[int, int]]) -> None:
        super().__init__()
        self.crops = [tuple(c) for c in crops]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.crops)
        for i, (a, b) in enumerate(self.crops):
            d = x.dim() - n + i
            x = x.narrow(d, a, x.shape[d] - a - b)
        return x


@register_layer("cropping1d", role=Role.PASS, example={"cropping": [1, 1]}, example_inputs=((2, 5),))
def cropping1d(cropping: tuple[int, int]) -> nn.Module:
    """Drop values at the start and end of the length axis of (C, L)."""
    return Crop([(cropping[0], cropping[1])])


@register_layer("cropping2d", role=Role.PASS, example={"cropping": [1, 0, 0, 1]}, example_inputs=((2, 4, 4),))
def cropping2d(cropping: tuple[int, int, int, int]) -> nn.Module:
    """Drop rows/columns of (C, H, W): top, bottom, left, right."""
    top, bottom, left, right = cropping
    return Crop([(top, bottom), (left, right)])


class Upsample1d(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.size, dim=-1)


@register_layer("upsample1d", role=Role.PASS, example_inputs=((2, 3),))
def upsample1d(size: int = 2) -> nn.Module:
    """Repeat each step of (C, L) ``size`` times."""
    return Upsample1d(size)


class RepeatVector(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).expand(-1, self.n, -1).contiguous()


@register_layer("repeat_vector", role=Role.PASS, example={"n": 3})
def repeat_vector(n: int) -> nn.Module:
    """(F,) -> (n, F): the vector repeated n times."""
    return RepeatVector(n)


class Rescale(nn.Module):
    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset


@register_layer("rescaling", role=Role.PASS)
def rescaling(scale: float = 1.0, offset: float = 0.0) -> nn.Module:
    """x * scale + offset."""
    return Rescale(scale, offset)


# ---- wrappers ---------------------------------------------------------------------------------


class TimeDistributed(nn.Module):
    """Applies a chain of layers to every step of (T, ...) independently."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        y = self.body(x.reshape(n * t, *x.shape[2:]))
        return y.reshape(n, t, *y.shape[1:])


@register_layer(
    "time_distributed",
    role=Role.FIXED,
    example={"layers": [{"type": "dense", "args": {"in_features": 4, "out_features": 3}}]},
    example_inputs=((5, 4),),
)
def time_distributed(layers: list) -> nn.Module:
    """Runs ``layers`` (registry specs: type, args) on each step of a (T, ...) input."""
    if not layers:
        raise ValueError("time_distributed needs at least one layer")
    mods = []
    for i, spec in enumerate(layers):
        if not isinstance(spec, dict) or "type" not in spec:
            raise ValueError(f"layers[{i}] needs a 'type'")
        mods.append(build_layer(spec["type"], dict(spec.get("args") or {}), where=f"time_distributed.layers[{i}]"))
    return TimeDistributed(nn.Sequential(*mods))


# ---- recurrent layers with Keras's exact gate math -------------------------------------------

_GATES = {"simple": 1, "lstm": 4, "gru": 3}


class KerasRNN(nn.Module):
    """SimpleRNN / LSTM / GRU over (N, T, F), optionally bidirectional, weights in Keras layout.

    torch's GRU computes Keras's ``reset_after=True`` variant only, and torch's fused cells fix
    the activations; this loop follows Keras's cell equations for every setting: gate order
    (LSTM i, f, c, o; GRU z, r, h), both GRU variants, any activation, ``go_backwards``, and
    the Bidirectional merge modes (the backward sequence re-reversed as Keras does).

    Inputs: the sequence, then the (N, T) step mask when ``masked``, then ``initial_states``
    state tensors (forward direction first); with ``return_state`` the final states follow the
    output. Keras's rules for a masked step: the states keep their previous values, the output
    repeats the previous output (zeros with ``zero_output_for_mask``), so the last output is the
    last unmasked step's.
    """

    def __init__(self, cell: str, input_size: int, units: int, activation: str, recurrent_activation: str,
                 use_bias: bool, return_sequences: bool, go_backwards: bool, reset_after: bool,
                 bidirectional: bool, merge_mode: str, masked: bool = False, initial_states: int = 0,
                 return_state: bool = False, zero_output_for_mask: bool = False) -> None:
        super().__init__()
        self.cell, self.units = cell, units
        self.act = keras_activation(activation)
        self.rec_act = keras_activation(recurrent_activation)
        self.use_bias, self.return_sequences = use_bias, return_sequences
        self.go_backwards, self.reset_after = go_backwards, reset_after and cell == "gru"
        self.bidirectional, self.merge_mode = bidirectional, merge_mode
        self.masked, self.initial_states = masked, initial_states
        self.return_state, self.zero_output_for_mask = return_state, zero_output_for_mask
        k = _GATES[cell] * units
        bias_shape = (2, k) if self.reset_after else (k,)
        for prefix in ("", "backward_") if bidirectional else ("",):
            self.register_parameter(prefix + "kernel", nn.Parameter(torch.empty(input_size, k)))
            self.register_parameter(prefix + "recurrent_kernel", nn.Parameter(torch.empty(units, k)))
            if use_bias:
                self.register_parameter(prefix + "bias", nn.Parameter(torch.zeros(bias_shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            elif "recurrent" in name:
                nn.init.orthogonal_(p)
            else:
                nn.init.xavier_uniform_(p)

    def _loop(self, x: torch.Tensor, prefix: str, backwards: bool, mask: torch.Tensor | None,
              init: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        kernel = getattr(self, prefix + "kernel")
        rec = getattr(self, prefix + "recurrent_kernel")
        bias = getattr(self, prefix + "bias") if self.use_bias else None
        if backwards:
            x = x.flip(1)
            mask = mask.flip(1) if mask is not None else None
        n, steps, u = x.shape[0], x.shape[1], self.units
        rec_bias: torch.Tensor | None = None
        if bias is not None and self.reset_after:
            xw, rec_bias = x @ kernel + bias[0], bias[1]
        else:
            xw = x @ kernel + (bias if bias is not None else 0)
        h = init[0] if init else x.new_zeros(n, u)
        c = init[1] if len(init) > 1 else x.new_zeros(n, u)
        prev = x.new_zeros(n, u)
        outs = []
        for t in range(steps):
            xt = xw[:, t]
            c_new = c
            if self.cell == "simple":
                h_new = self.act(xt + h @ rec)
            elif self.cell == "lstm":
                i, f, g, o = (xt + h @ rec).split(u, dim=-1)
                c_new = self.rec_act(f) * c + self.rec_act(i) * self.act(g)
                h_new = self.rec_act(o) * self.act(c_new)
            else:
                xz, xr, xh = xt.split(u, dim=-1)
                if self.reset_after:
                    hr = h @ rec
                    if rec_bias is not None:
                        hr = hr + rec_bias
                    rz, rr, rh = hr.split(u, dim=-1)
                    zg, r = self.rec_act(xz + rz), self.rec_act(xr + rr)
                    hh = self.act(xh + r * rh)
                else:
                    zg = self.rec_act(xz + h @ rec[:, :u])
                    r = self.rec_act(xr + h @ rec[:, u:2 * u])
                    hh = self.act(xh + (r * h) @ rec[:, 2 * u:])
                h_new = zg * h + (1 - zg) * hh
            out = h_new
            if mask is not None:
                m = mask[:, t, None]
                h_new, c_new = torch.where(m, h_new, h), torch.where(m, c_new, c)
                out = torch.where(m, out, torch.zeros_like(out) if self.zero_output_for_mask else prev)
            h, c, prev = h_new, c_new, out
            outs.append(out)
        y = torch.stack(outs, dim=1) if self.return_sequences else prev
        return y, ([h, c] if self.cell == "lstm" else [h])

    def forward(self, x: torch.Tensor, *extra: torch.Tensor):  # type: ignore[override]
        mask = extra[0].bool() if self.masked else None
        init = list(extra[1:] if self.masked else extra)
        per = len(init) // 2 if self.bidirectional else len(init)
        y, states = self._loop(x, "", self.go_backwards, mask, init[:per])
        if not self.bidirectional:
            return (y, *states) if self.return_state else y
        y_rev, states_rev = self._loop(x, "backward_", not self.go_backwards, mask, init[per:])
        if self.return_sequences:
            y_rev = y_rev.flip(1)
        merged: tuple[torch.Tensor, ...]
        if self.merge_mode == "concat":
            merged = (torch.cat([y, y_rev], dim=-1),)
        elif self.merge_mode == "sum":
            merged = (y + y_rev,)
        elif self.merge_mode == "mul":
            merged = (y * y_rev,)
        elif self.merge_mode == "ave":
            merged = ((y + y_rev) / 2,)
        else:
            merged = (y, y_rev)
        if self.return_state:
            return (*merged, *states, *states_rev)
        return merged if len(merged) > 1 else merged[0]


def _rnn_out(args: dict, n_out: int) -> int:
    return 2 * n_out if args.get("bidirectional") and args.get("merge_mode") == "concat" else n_out


@register_layer(
    "keras_rnn",
    role=Role.WEIGHTS,
    n_in="input_size",
    n_out="units",
    size_axis=-1,
    out_size=_rnn_out,
    infer=lambda s: {"input_size": s[0][-1]},
    example={"cell": "lstm", "units": 3, "masked": True, "go_backwards": True},
    example_inputs=((5, 4), (5,)),
    # the masked/stateful variant was a type of its own (models saved naming it still load)
    aliases=("keras_recurrent",),
)
def keras_rnn(
    cell: Literal["simple", "lstm", "gru"],
    input_size: int,
    units: int,
    activation: KerasActivationName = "tanh",
    recurrent_activation: KerasActivationName = "sigmoid",
    use_bias: bool = True,
    return_sequences: bool = False,
    go_backwards: bool = False,
    reset_after: bool = True,
    bidirectional: bool = False,
    merge_mode: Literal["concat", "sum", "mul", "ave", "none"] = "concat",
    masked: bool = False,
    initial_states: int = 0,
    return_state: bool = False,
    zero_output_for_mask: bool = False,
) -> nn.Module:
    """Keras SimpleRNN/LSTM/GRU (and Bidirectional) with Keras's gate math and weight layout;
    optionally a step mask and initial states in, final states out."""
    return KerasRNN(cell, input_size, units, activation, recurrent_activation, use_bias, return_sequences,
                    go_backwards, reset_after, bidirectional, merge_mode, masked=masked,
                    initial_states=initial_states, return_state=return_state,
                    zero_output_for_mask=zero_output_for_mask)
