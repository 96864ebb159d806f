"""The one weight-init table (DL4J's WeightInit): the schemes a surgery op may name for the
layers it re-initializes and ``finetune.weight_init`` applies to new layers.

One vocabulary, one definition: surgery and fine-tuning both read :data:`WEIGHT_INITS`.
Only weight matrices and kernels (parameters with two or more axes) are set; biases and norm
scales keep their construction values (``finetune.bias_init`` sets biases). A surgery op that
names a scheme records it on the node (``Node.weight_init``) so the fine-tune init keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["WEIGHT_INITS", "init_weights"]


def _fan_in(w: torch.Tensor) -> int:
    return w.shape[1] * math.prod(w.shape[2:])


def _normal(w: torch.Tensor) -> None:  # DL4J NORMAL: N(0, 1/sqrt(fan_in))
    nn.init.normal_(w, 0.0, 1.0 / math.sqrt(_fan_in(w)))


def _uniform(w: torch.Tensor) -> None:  # DL4J UNIFORM: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    a = 1.0 / math.sqrt(_fan_in(w))
    nn.init.uniform_(w, -a, a)


WEIGHT_INITS: dict[str, Callable[[torch.Tensor], object] | None] = {
    "default": None,  # the layer's own init, as it was just built
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "normal": _normal,
    "uniform": _uniform,
    "zeros": nn.init.zeros_,
    "ones": nn.init.ones_,
}


@torch.no_grad()
def init_weights(module: nn.Module, scheme: str) -> None:
    """Set the weight matrices and kernels (parameters with two or more axes) by ``scheme``."""
    fn = WEIGHT_INITS[scheme]
    if fn is not None:
        for p in module.parameters():
            if p.dim() >= 2:
                fn(p)
