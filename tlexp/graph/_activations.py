"""The one activation table: every activation name any layer type or source uses.

Each entry builds a module from ``(dim, alpha)``: ``dim`` is the axis of softmax-like
functions, ``alpha`` the parameter of those that have one. Where sources disagree on a default
the table has none and each caller passes its own explicitly: ``leaky_relu``'s negative slope is
torch's 0.01 for tlexp's own layers (:data:`TORCH_LEAKY_SLOPE`) and Keras's 0.2 for imported
Keras layers (the Keras layer types pass ``KERAS_LEAKY_SLOPE``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.errors import ConfigError, choices

__all__ = ["ACTIVATIONS", "TORCH_LEAKY_SLOPE", "KERAS_LEAKY_SLOPE", "ActivationFunction", "make_activation"]

TORCH_LEAKY_SLOPE = 0.01
KERAS_LEAKY_SLOPE = 0.2

Factory = Callable[[int, "float | None"], nn.Module]


class ActivationFunction(nn.Module):
    """A parameter-free activation given as a function of (x, dim)."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor, int], torch.Tensor], dim: int = -1) -> None:
        super().__init__()
        self.name, self.fn, self.dim = name, fn, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.dim)

    def extra_repr(self) -> str:
        return f"{self.name}, dim={self.dim}"


def _sparsemax(x: torch.Tensor, dim: int) -> torch.Tensor:
    # Keras's sparsemax, as every Keras 3 backend computes it: tau = (sum over the support of the
    # sorted cumulative sums - 1) / support size. (This equals Martins & Astudillo's threshold only
    # when the support has one element; imported models must match Keras, so Keras's formula it is.)
    z = x.movedim(dim, -1)
    zs, _ = torch.sort(z, dim=-1, descending=True)
    cumsum = zs.cumsum(-1)
    r = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    support = zs - (cumsum - 1) / r > 0
    k = support.sum(-1, keepdim=True).to(z.dtype)
    tau = (torch.where(support, cumsum, torch.zeros_like(cumsum)).sum(-1, keepdim=True) - 1) / k
    return torch.clamp(z - tau, min=0).movedim(-1, dim)


def _sparse_plus(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= -1, torch.zeros_like(x), torch.where(x >= 1, x, (x + 1) ** 2 / 4))


def _module(cls: Callable[[], nn.Module]) -> Factory:
    return lambda dim, alpha: cls()


def _function(name: str, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> Factory:
    return lambda dim, alpha: ActivationFunction(name, fn, dim)


def _leaky(dim: int, alpha: float | None) -> nn.Module:
    if alpha is None:
        raise ValueError("leaky_relu needs its negative slope (alpha): torch's is 0.01, Keras's 0.2")
    return nn.LeakyReLU(alpha)


def _hard_sigmoid_keras2(x: torch.Tensor, dim: int) -> torch.Tensor:
    # Keras 2's piecewise hard sigmoid; Keras 3's (relu6(x + 3) / 6) is torch's hardsigmoid
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


ACTIVATIONS: dict[str, Factory] = {
    "identity": _module(nn.Identity),
    "linear": _module(nn.Identity),
    "relu": _module(nn.ReLU),
    "relu6": _module(nn.ReLU6),
    "leaky_relu": _leaky,
    "elu": lambda dim, alpha: nn.ELU(1.0 if alpha is None else alpha),
    "selu": _module(nn.SELU),
    "celu": _function("celu", lambda x, d: F.celu(x)),
    "gelu": _module(nn.GELU),
    "gelu_tanh": _function("gelu_tanh", lambda x, d: F.gelu(x, approximate="tanh")),
    "silu": _module(nn.SiLU),
    "swish": _module(nn.SiLU),
    "hard_silu": _module(nn.Hardswish),
    "hard_swish": _module(nn.Hardswish),
    "mish": _module(nn.Mish),
    "sigmoid": _module(nn.Sigmoid),
    "hard_sigmoid": _module(nn.Hardsigmoid),
    "hard_sigmoid_keras2": _function("hard_sigmoid_keras2", _hard_sigmoid_keras2),
    "log_sigmoid": _function("log_sigmoid", lambda x, d: F.logsigmoid(x)),
    "sparse_sigmoid": _function("sparse_sigmoid", lambda x, d: torch.clamp(0.5 * (x + 1), 0.0, 1.0)),
    "tanh": _module(nn.Tanh),
    "hard_tanh": _function("hard_tanh", lambda x, d: torch.clamp(x, -1.0, 1.0)),
    "tanh_shrink": _function("tanh_shrink", lambda x, d: x - torch.tanh(x)),
    "soft_shrink": _function("soft_shrink", lambda x, d: F.softshrink(x, 0.5)),
    "hard_shrink": _function("hard_shrink", lambda x, d: F.hardshrink(x, 0.5)),
    "softplus": _module(nn.Softplus),
    "softsign": _module(nn.Softsign),
    "sparse_plus": _function("sparse_plus", lambda x, d: _sparse_plus(x)),
    "squareplus": _function("squareplus", lambda x, d: (x + torch.sqrt(x * x + 4.0)) / 2),
    "exponential": _function("exponential", lambda x, d: torch.exp(x)),
    "softmax": lambda dim, alpha: nn.Softmax(dim=dim),
    "log_softmax": lambda dim, alpha: nn.LogSoftmax(dim=dim),
    "sparsemax": _function("sparsemax", _sparsemax),
    "glu": _function("glu", lambda x, d: F.glu(x, dim=d)),
}


def make_activation(name: str, where: str = "activation", *, dim: int = -1, alpha: float | None = None) -> nn.Module:
    """The activation ``name`` as a module (``dim``: softmax axis; ``alpha``: slope of leaky_relu/elu)."""
    try:
        factory = ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown activation {name!r}; valid: {choices(ACTIVATIONS)}") from None
    return factory(dim, alpha)
