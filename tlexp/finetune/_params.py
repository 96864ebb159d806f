"""Which trainable parameters exist, which layer (node) holds them, and which group rule applies.

"Weights" are parameters with two or more dimensions (dense matrices, conv kernels, RNN and
embedding matrices); biases and the scales/shifts of normalization layers are one-dimensional.
This is the split Deeplearning4j makes between ``l2`` and ``l2Bias`` and the one timm uses for
weight decay, and it needs no list of layer types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from tlexp.errors import ConfigError, choices
from tlexp.finetune._settings import GroupRule, Settings
from tlexp.graph import LayerGraph

__all__ = ["NodeParam", "trainable_params", "rule_for", "is_weight", "check_group_patterns"]


@dataclass(frozen=True)
class NodeParam:
    node: str
    name: str
    param: torch.nn.Parameter


def is_weight(p: torch.Tensor) -> bool:
    return p.dim() >= 2


def trainable_params(graph: LayerGraph) -> Iterator[NodeParam]:
    """Trainable parameters in ``graph.parameters()`` order, each with the node that holds it."""
    seen: set[int] = set()
    for node in graph.nodes:
        for name, p in node.module.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.requires_grad:
                yield NodeParam(node.name, name, p)


def rule_for(node: str, rules: tuple[GroupRule, ...]) -> GroupRule | None:
    """The first group rule whose pattern matches the node name (case-sensitive fnmatch)."""
    for rule in rules:
        if any(fnmatchcase(node, pat) for pat in rule.patterns):
            return rule
    return None


def check_group_patterns(graph: LayerGraph, s: Settings) -> None:
    """Every ``finetune.groups`` pattern must match a node of ``graph`` (a typo fails early)."""
    names = graph.node_names
    for rule in s.groups:
        for pat in rule.patterns:
            if not any(fnmatchcase(n, pat) for n in names):
                raise ConfigError(
                    f"finetune.groups[{rule.index}].pattern: {pat!r} matches no layer; "
                    f"layers: {choices(names, 20)}"
                )
