"""The L2 penalty and gradient normalization (Deeplearning4j's GradientNormalization).

A "layer" is a node of the LayerGraph; a "parameter type" is one parameter tensor of it (a
dense layer's weight and bias are two types, an LSTM's input and recurrent matrices two more).

``clip_norm``: all gradients scaled together so their global L2 norm is at most the threshold.
``clip_value`` (alias ``clip_element_wise_absolute_value``): each element clamped to
[-threshold, threshold]. ``renormalize_l2_per_layer``: each layer's gradient divided by its L2
norm (so it is 1). ``clip_l2_per_layer``: each layer's gradient scaled down to the threshold
where its norm exceeds it. ``*_per_param_type``: the same per parameter tensor. Gradients that
are all zero are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from tlexp.finetune._params import is_weight, rule_for, trainable_params
from tlexp.finetune._settings import parse
from tlexp.graph import LayerGraph

__all__ = ["regularization_loss", "normalize_gradients", "apply_constraints"]


def regularization_loss(graph: LayerGraph, cfg: Any) -> torch.Tensor:
    """``sum_g l2_g / 2 * ||w||^2`` over trainable weights (biases and norm parameters excluded).

    ``l2_g`` is the ``l2`` of the first ``finetune.groups`` rule matching the weight's layer,
    else ``finetune.l2``. A zero tensor (on the parameters' device) when every coefficient is 0.
    """
    s = parse(cfg)
    total: torch.Tensor | None = None
    device = None
    for np_ in trainable_params(graph):
        device = device or np_.param.device
        if not is_weight(np_.param):
            # biases and norm parameters: DL4J's l1Bias / l2Bias
            term = None
            if s.l2_bias:
                term = 0.5 * s.l2_bias * np_.param.pow(2).sum()
            if s.l1_bias:
                t1 = s.l1_bias * np_.param.abs().sum()
                term = t1 if term is None else term + t1
            if term is not None:
                total = term if total is None else total + term
            continue
        rule = rule_for(np_.node, s.groups)
        coef = rule.l2 if rule is not None and rule.l2 is not None else s.l2
        if coef:
            term = 0.5 * coef * np_.param.pow(2).sum()
            total = term if total is None else total + term
        if s.l1:
            term = s.l1 * np_.param.abs().sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=device)
    return total


def normalize_gradients(graph: LayerGraph, cfg: Any) -> None:
    """Rescale or clip the ``.grad`` of the trainable parameters in place, as ``finetune`` says."""
    s = parse(cfg)
    mode, t = s.gradient_normalization, s.threshold
    if mode == "none":
        return
    if mode in ("clip_value", "clip_element_wise_absolute_value"):
        torch.nn.utils.clip_grad_value_([p.param for p in trainable_params(graph)], t)
        return
    if mode == "clip_norm":
        torch.nn.utils.clip_grad_norm_([p.param for p in trainable_params(graph)], t)
        return
    per_layer: dict[str, list[torch.Tensor]] = {}
    for np_ in trainable_params(graph):
        if np_.param.grad is not None:
            key = np_.node if mode.endswith("per_layer") else f"{np_.node}\0{np_.name}"
            per_layer.setdefault(key, []).append(np_.param.grad)
    only_down = mode.startswith("clip")
    target = t if only_down else 1.0
    for grads in per_layer.values():
        _scale_to(grads, target, only_down)


@torch.no_grad()
def _scale_to(grads: Iterable[torch.Tensor], target: float, only_down: bool) -> None:
    """Scale ``grads`` together so their joint L2 norm is ``target`` (or at most ``target``)."""
    grads = list(grads)
    if not grads:
        return
    norms = torch.stack([torch.linalg.vector_norm(g.detach(), 2.0).to(grads[0].device) for g in grads])
    norm = torch.linalg.vector_norm(norms, 2.0)
    if norm == 0 or not torch.isfinite(norm):
        return
    if only_down and norm <= target:
        return
    factor = target / norm
    for g in grads:
        g.mul_(factor.to(g.device, g.dtype))


@torch.no_grad()
def apply_constraints(graph: LayerGraph, cfg: Any) -> None:
    """DL4J's constraints, applied to the trainable parameters after each step.

    Norms are taken per unit as DL4J takes them: a dense weight's per input unit (DL4J's
    dimension 1 of its [nIn, nOut] matrix: torch's dim 0 of [out, in]), a convolution kernel's
    per output filter, a bias vector whole.
    """
    s = parse(cfg)
    if not s.constraints:
        return
    for np_ in trainable_params(graph):
        p = np_.param
        weight = is_weight(p)
        for c in s.constraints:
            if (c["apply_to"] == "weights" and not weight) or (c["apply_to"] == "biases" and weight):
                continue
            if c["type"] == "non_negative":
                p.clamp_(min=0.0)
                continue
            if p.dim() == 2:
                norm = p.norm(dim=0, keepdim=True)
            elif p.dim() > 2:
                norm = p.flatten(1).norm(dim=1).reshape(-1, *([1] * (p.dim() - 1)))
            else:
                norm = p.norm()
            eps = 1e-6
            if c["type"] == "unit_norm":
                p.div_(norm + eps)
            elif c["type"] == "max_norm":
                p.mul_(norm.clamp(max=c["max"]) / (norm + eps))
            else:  # min_max_norm
                target = norm.clamp(min=c["min"], max=c["max"])
                p.mul_((c["rate"] * target + (1.0 - c["rate"]) * norm) / (norm + eps))
