"""Keras regularizers and constraints as training terms of the imported graph.

Kernel/bias ``L1``, ``L2`` and ``L1L2`` regularizers become penalties on the matching torch
parameters (Keras sums ``l1 * |w|`` and ``l2 * w**2``), an ``activity_regularizer`` the same
penalty on the layer's output divided by the batch size (as Keras 3 does), and ``MaxNorm``,
``NonNeg``, ``UnitNorm`` and ``MinMaxNorm`` constraints projections applied to the parameter
after each optimizer step, with the norm axes mapped from Keras's kernel layout to torch's.

They are recorded per node in ``graph.meta["training_terms"]`` (JSON data: node, parameter, kind,
numbers), so they survive surgery and splitting by node name; :func:`penalty` and
:func:`apply_constraints` find the nodes present in whichever graph is being trained.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["parse_regularizer", "parse_constraint", "penalty", "apply_constraints", "Recorder", "KerasTerms", "EPSILON"]

EPSILON = 1e-7  # Keras's backend epsilon in its norm constraints

REGULARIZERS = ("L1", "L2", "L1L2")
CONSTRAINTS = ("MaxNorm", "NonNeg", "UnitNorm", "MinMaxNorm")
_ALIASES = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2", "max_norm": "MaxNorm", "non_neg": "NonNeg",
            "unit_norm": "UnitNorm", "min_max_norm": "MinMaxNorm"}


def _class(v: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(v, str):
        return _ALIASES.get(v, v), {}
    name = str(v.get("class_name", ""))
    return _ALIASES.get(name, name), dict(v.get("config") or {})


def parse_regularizer(v: Any) -> dict[str, float] | None:
    """{"l1": a, "l2": b} for a Keras L1/L2/L1L2 regularizer config, None for another kind."""
    name, cfg = _class(v)
    if name not in REGULARIZERS:
        return None
    default = 0.01 if name != "L1L2" else 0.0
    l1 = float(cfg.get("l1", default)) if name in ("L1", "L1L2") else 0.0
    l2 = float(cfg.get("l2", default)) if name in ("L2", "L1L2") else 0.0
    return {"l1": l1, "l2": l2}


def parse_constraint(v: Any) -> dict[str, Any] | None:
    """The constraint's kind and numbers (axis still in Keras's kernel layout), or None."""
    name, cfg = _class(v)
    if name not in CONSTRAINTS:
        return None
    out: dict[str, Any] = {"kind": name}
    if name in ("MaxNorm", "UnitNorm", "MinMaxNorm"):
        axis = cfg.get("axis", 0)
        out["axis"] = list(axis) if isinstance(axis, (list, tuple)) else [int(axis)]
    if name == "MaxNorm":
        out["max_value"] = float(cfg.get("max_value", 2.0))
    if name == "MinMaxNorm":
        out.update(min_value=float(cfg.get("min_value", 0.0)), max_value=float(cfg.get("max_value", 1.0)),
                   rate=float(cfg.get("rate", 1.0)))
    return out


def _modules(graph: Any, terms: Iterable[dict[str, Any]]) -> Iterable[tuple[dict[str, Any], nn.Module]]:
    names = set(graph.node_names) if hasattr(graph, "node_names") else {n.name for n in graph.nodes}
    seen: set[tuple[Any, ...]] = set()
    for t in terms:
        if t["node"] in names:
            module = graph.node(t["node"]).module
            # a shared layer's calls use one module: its weights count once, and its output hook
            # (one per module) already sees every call, as Keras adds an activity loss per call
            key = (id(module), t.get("param"), bool(t.get("output")), t.get("kind"))
            if key not in seen:
                seen.add(key)
                yield t, module


def _param(module: nn.Module, name: str) -> torch.Tensor:
    obj: Any = module
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


class Recorder:
    """Forward hooks that keep the outputs of nodes with an activity regularizer for one step."""

    def __init__(self, graph: Any, terms: Sequence[dict[str, Any]]) -> None:
        self.outputs: list[tuple[dict[str, Any], torch.Tensor]] = []
        self.handles = []
        for t, module in _modules(graph, [t for t in terms if t.get("output")]):
            self.handles.append(module.register_forward_hook(self._hook(t)))

    def _hook(self, t: dict[str, Any]):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if torch.is_grad_enabled():
                self.outputs.append((t, output[0] if isinstance(output, tuple) else output))

        return hook

    def take(self) -> list[tuple[dict[str, Any], torch.Tensor]]:
        out, self.outputs = self.outputs, []
        return out


def _amount(t: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    total = x.new_zeros(())
    if t["l1"]:
        total = total + t["l1"] * x.abs().sum()
    if t["l2"]:
        total = total + t["l2"] * x.square().sum()
    return total


def penalty(graph: Any, terms: Sequence[dict[str, Any]], recorder: Recorder | None = None) -> torch.Tensor:
    """The sum of the weight penalties (and of the recorded activity penalties) -- Keras's model.losses."""
    total = torch.zeros(())
    for t, module in _modules(graph, [t for t in terms if t.get("param") and "l1" in t]):
        total = total + _amount(t, _param(module, t["param"]))
    if recorder is not None:
        for t, out in recorder.take():
            total = total + _amount(t, out) / out.shape[0]
    return total


@torch.no_grad()
def apply_constraints(graph: Any, terms: Sequence[dict[str, Any]]) -> None:
    """Project each constrained parameter as Keras does after an optimizer step."""
    for t, module in _modules(graph, [t for t in terms if t.get("kind")]):
        w = _param(module, t["param"])
        kind = t["kind"]
        if kind == "NonNeg":
            w.clamp_(min=0)
            continue
        dims = t["dims"]
        norms = w.square().sum(dim=dims, keepdim=True).sqrt()
        if kind == "MaxNorm":
            w.mul_(norms.clamp(0, t["max_value"]) / (EPSILON + norms))
        elif kind == "UnitNorm":
            w.div_(EPSILON + norms)
        else:
            desired = t["rate"] * norms.clamp(t["min_value"], t["max_value"]) + (1 - t["rate"]) * norms
            w.mul_(desired / (EPSILON + norms))


class KerasTerms:
    """The training terms of an imported model, applied by the training loop when enforced:
    ``attach(model)`` before training, ``penalty(model)`` added to each step's loss,
    ``after_step(model)`` after each optimizer step."""

    def __init__(self, terms: Sequence[dict[str, Any]]) -> None:
        self.terms = list(terms)
        self._recorder: Recorder | None = None

    def attach(self, model: Any) -> None:
        """Hook the model's regularized outputs (again for each fit phase: the hooks of an earlier
        attach come off, so no recorder keeps outputs nobody takes)."""
        if self._recorder is not None:
            for handle in self._recorder.handles:
                handle.remove()
            self._recorder = None
        if any(t.get("output") for t in self.terms):
            self._recorder = Recorder(model, self.terms)

    def penalty(self, model: Any) -> torch.Tensor:
        return penalty(model, self.terms, self._recorder)

    def after_step(self, model: Any) -> None:
        apply_constraints(model, self.terms)
