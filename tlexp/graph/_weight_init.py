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
from typing import TypeVar

import torch
from torch import nn

__all__ = ["WEIGHT_INITS", "init_weights", "reinit"]


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


M = TypeVar("M", bound=nn.Module)


@torch.no_grad()
def reinit(graph: M, seed: int) -> M:
    """Re-initialize every weight in place with its layer's default init, from ``seed``.

    Every module with ``reset_parameters`` (linear, conv, norm layers, …) resets itself (norm
    layers their running statistics too); a parameter held by a module without one is drawn
    from N(0, 0.02) (a matrix or more) or set to zero (a vector), as transformer inits do.
    The global RNG is left as it was.
    """
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in graph.modules():
            if module is graph:
                continue
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters())
                for b in module.buffers():
                    covered.add(id(b))
        for module in graph.modules():
            for p in module.parameters(recurse=False):
                if id(p) in covered:
                    continue
                if p.dim() >= 2:
                    nn.init.normal_(p, std=0.02)
                else:
                    nn.init.zeros_(p)
                covered.add(id(p))
    return graph
