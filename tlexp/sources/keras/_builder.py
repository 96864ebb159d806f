"""Assembling graph nodes for an imported Keras model, tracking each tensor's layout.

Inside the imported graph an image tensor lives channels-first, as torch's convolutions take it;
a tensor that Dense, Flatten, Reshape or a recurrent layer reads lives in Keras's own order
(channels last). Each tensor carries its layout, and a ``permute`` node is inserted where a layer
needs the other one -- which is what keeps Flatten after a convolution in Keras's NHWC order, so
the following Dense's weights still line up.

Every node is run once on an example batch while it is added, so a weight of the wrong shape or
an input that does not fit is reported at the Keras layer that causes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tlexp.errors import SourceError, TlexpError
from tlexp.graph import GraphInput, Node, build_layer, built_spec

__all__ = ["KerasTensor", "Op", "Builder", "Chain", "CHANNELS_LAST", "CHANNELS_FIRST", "MetaUnsupported", "run_example"]

CHANNELS_LAST = "cl"  # Keras's order: channels (features) last
CHANNELS_FIRST = "cf"  # torch's order: channels right after the batch axis


@dataclass(frozen=True)
class KerasTensor:
    """A tensor of the Keras graph: which node makes it, its per-sample rank, its layout."""

    ref: str
    rank: int
    layout: str = CHANNELS_LAST
    #: position in a node that returns a tuple (Bidirectional with merge_mode=None)
    index: int | None = None
    #: the (N, T) step mask Keras carries with this tensor (Embedding mask_zero, Masking)
    mask: KerasTensor | None = None


@dataclass
class Op:
    """A registry layer to add: type, arguments, and its state dict (numpy, torch names)."""

    type: str
    args: dict[str, Any]
    state: dict[str, np.ndarray] = field(default_factory=dict)


def to_cf_dims(rank: int) -> list[int]:
    return [rank - 1, *range(rank - 1)]


def to_cl_dims(rank: int) -> list[int]:
    return [*range(1, rank), 0]


def load_state(module: nn.Module, state: dict[str, np.ndarray], where: str) -> None:
    """Give a freshly built module the converted weights; a shape mismatch is a SourceError.

    The module takes the arrays themselves (``assign``): one copy from the file's layout into
    torch's, none into tensors the module allocated for nothing."""
    current = module.state_dict()
    new = dict(current)
    for key, value in state.items():
        if key not in current:
            raise RuntimeError(f"{where}: converter produced unknown state key {key!r}")
        # a C-ordered copy of its own (never memory another module or the file's arrays share)
        tensor = torch.from_numpy(np.array(value, dtype=np.float32, order="C", copy=True))
        if tuple(tensor.shape) != tuple(current[key].shape):
            raise SourceError(
                f"weights: {where}: the file's array for {key} has shape {list(value.shape)} (torch layout), the "
                f"architecture needs {list(current[key].shape)}; the weights do not fit the architecture"
            )
        new[key] = tensor.to(current[key].dtype)
    module.load_state_dict(new, assign=True)


class MetaUnsupported(Exception):
    """A layer that cannot run on meta tensors: the build starts again with real example values."""


#: elementwise layer types: on meta tensors their output is their input's shape, no need to run
_SAME_SHAPE = ("activation", "keras_activation")
_BATCH_NORMS = {"batchnorm1d": (2, 3), "batchnorm2d": (4,), "batchnorm3d": (5,)}


def _same_shape(module: nn.Module, args: list[Any]) -> bool:
    """Does ``module`` give its (meta) input's shape back? Only types whose answer is known
    without running them (torch's meta kernels for batch norm run a slow Python decomposition)."""
    spec = built_spec(module)
    if spec is None or len(args) != 1 or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
        return False
    if spec.type in _SAME_SHAPE:
        return True
    ranks = _BATCH_NORMS.get(spec.type)
    return ranks is not None and args[0].dim() in ranks and args[0].shape[1] == getattr(module, "num_features", None)


def run_example(module: nn.Module, args: list[Any], meta: bool) -> Any:
    """``module(*args)`` in inference mode; with ``meta``, on shapes only (weights as meta tensors),
    which costs nothing however large the images are."""
    if meta and _same_shape(module, args):
        return torch.empty_like(args[0], device="meta")
    module.eval()
    try:
        with torch.no_grad():
            if not meta:
                return module(*args)
            state = {k: v.to("meta") for k, v in module.named_parameters(remove_duplicate=False)}
            state.update({k: v.to("meta") for k, v in module.named_buffers(remove_duplicate=False)})
            try:
                return torch.func.functional_call(module, state, tuple(args), strict=False)
            except NotImplementedError as e:
                raise MetaUnsupported(str(e)) from None
    finally:
        module.train()


class Builder:
    """Collects nodes in topological order and keeps one example value per tensor.

    The example values are meta tensors (shapes, no data) unless a layer cannot run on those,
    see :class:`MetaUnsupported`.
    """

    def __init__(self, meta: bool = True) -> None:
        self.meta = meta
        self.inputs: list[GraphInput] = []
        self.nodes: list[Node] = []
        self.values: dict[str, Any] = {}
        self._names: set[str] = set()
        self._cache: dict[tuple[Any, ...], KerasTensor] = {}
        #: regularizers and constraints as training terms (see _terms), their labels, and the
        #: ones tlexp cannot apply
        self.terms: list[dict[str, Any]] = []
        self.term_labels: list[str] = []
        self.unsupported_terms: list[str] = []

    # ---- names and values -------------------------------------------------------------------

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name = f"{base}~{i}"
            i += 1
        self._names.add(name)
        return name

    def add_input(self, gi: GraphInput, example: torch.Tensor) -> None:
        self._names.add(gi.name)
        self.inputs.append(gi)
        self.values[gi.name] = example

    def value(self, t: KerasTensor) -> Any:
        v = self.values[t.ref]
        return v if t.index is None else v[t.index]

    def shape(self, t: KerasTensor) -> tuple[int, ...]:
        """The per-sample shape in Keras's order (what Keras would report, without batch)."""
        s = tuple(self.value(t).shape[1:])
        if t.layout == CHANNELS_FIRST and len(s) >= 2:
            s = (*s[1:], s[0])
        return s

    def plain(self, t: KerasTensor) -> KerasTensor:
        """A tensor that is a whole node's output (a getitem node for a tuple element)."""
        if t.index is None:
            return KerasTensor(t.ref, t.rank, t.layout) if t.mask is not None else t
        key = ("item", t.ref, t.index)
        if key not in self._cache:
            ref = self._add(f"{t.ref}/{t.index}", Op("getitem", {"index": [t.index]}), [KerasTensor(t.ref, t.rank, t.layout)])
            self._cache[key] = KerasTensor(ref, t.rank, t.layout)
        return self._cache[key]

    # ---- adding nodes ------------------------------------------------------------------------

    def layout(self, t: KerasTensor, want: str) -> KerasTensor:
        """``t`` in the layout ``want`` (a permute node, shared by every consumer, if needed)."""
        if t.rank < 2 or t.layout == want:
            return t
        if t.mask is not None:
            t = KerasTensor(t.ref, t.rank, t.layout, t.index)
        key = ("layout", t.ref, t.index, want)
        if key not in self._cache:
            dims = to_cf_dims(t.rank) if want == CHANNELS_FIRST else to_cl_dims(t.rank)
            suffix = "channels_first" if want == CHANNELS_FIRST else "channels_last"
            base = t.ref if t.index is None else f"{t.ref}/{t.index}"
            ref = self._add(f"{base}/{suffix}", Op("permute", {"dims": dims}), [self.plain(t)])
            self._cache[key] = KerasTensor(ref, t.rank, want)
        return self._cache[key]

    def add(self, name: str, op: Op, inputs: list[KerasTensor], rank: int, layout: str = CHANNELS_LAST) -> KerasTensor:
        """Add a node for one Keras layer (or part of one) and return its output tensor."""
        ref = self._add(name, op, [self.plain(t) for t in inputs])
        return KerasTensor(ref, rank, layout if rank >= 2 else CHANNELS_LAST)

    def _add(self, name: str, op: Op, inputs: list[KerasTensor]) -> str:
        name = self.unique(name)
        module = build(op, name)
        args = [self.value(t) for t in inputs]
        try:
            out = run_example(module, args, self.meta)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            shapes = ", ".join(str(list(a.shape[1:])) for a in args)
            msg = str(e).strip().split("\n")[0]
            raise SourceError(
                f"keras layer {name!r}: does not accept its input (shape {shapes}, torch layout): {msg}"
            ) from None
        self.values[name] = out
        self.nodes.append(Node(name, module, [t.ref for t in inputs]))
        return name


_INIT_FUNCTIONS = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                   "trunc_normal_", "orthogonal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def _no_random_init() -> Iterator[None]:
    """Skip torch's weight initialization while a layer is built whose every weight the file gives."""
    saved = {f: getattr(nn.init, f) for f in _INIT_FUNCTIONS}
    try:
        for f in _INIT_FUNCTIONS:
            setattr(nn.init, f, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for f, fn in saved.items():
            setattr(nn.init, f, fn)


def build(op: Op, name: str) -> nn.Module:
    try:
        if op.state:
            # the file's arrays replace the initial weights: initializing them first only costs time
            with _no_random_init():
                module = build_layer(op.type, op.args, where=f"keras layer {name!r}")
            if set(module.state_dict()) - set(op.state):
                module = build_layer(op.type, op.args, where=f"keras layer {name!r}")  # some keep their init
        else:
            module = build_layer(op.type, op.args, where=f"keras layer {name!r}")
    except TlexpError as e:
        raise SourceError(str(e)) from None
    load_state(module, op.state, f"keras layer {name!r}")
    return module


class Chain:
    """Collects the ops of one Keras layer applied per time step (TimeDistributed's body).

    It answers the same calls as :class:`Builder` for single-input layers, recording ops in a
    list instead of adding graph nodes.
    """

    def __init__(self, example: torch.Tensor, meta: bool = False) -> None:
        self.ops: list[Op] = []
        self._value = example
        self.meta = meta

    def value(self, t: KerasTensor) -> Any:
        return self._value

    def shape(self, t: KerasTensor) -> tuple[int, ...]:
        s = tuple(self._value.shape[1:])
        if t.layout == CHANNELS_FIRST and len(s) >= 2:
            s = (*s[1:], s[0])
        return s

    def plain(self, t: KerasTensor) -> KerasTensor:
        return t

    def layout(self, t: KerasTensor, want: str) -> KerasTensor:
        if t.rank < 2 or t.layout == want:
            return t
        dims = to_cf_dims(t.rank) if want == CHANNELS_FIRST else to_cl_dims(t.rank)
        return self.add(t.ref, Op("permute", {"dims": dims}), [t], t.rank, want)

    def add(self, name: str, op: Op, inputs: list[KerasTensor], rank: int, layout: str = CHANNELS_LAST) -> KerasTensor:
        if len(inputs) != 1:
            raise SourceError(f"keras layer {name!r}: TimeDistributed wraps single-input layers only")
        module = build(op, name)
        try:
            self._value = run_example(module, [self._value], self.meta)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            raise SourceError(f"keras layer {name!r}: does not accept its per-step input: {str(e).splitlines()[0]}") from None
        self.ops.append(op)
        return KerasTensor(name, rank, layout if rank >= 2 else CHANNELS_LAST)
