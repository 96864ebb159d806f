"""Model assembly in one place: source → surgery → freeze, with the data's facts when needed.

A run (:mod:`tlexp.train`) and ``tlexp-inspect`` both build their model here, so the layer
table shows exactly the model a run trains. ``data`` is anything with ``input_shape`` and
``num_classes`` (a data module, or :class:`tlexp.data.DataFacts`); this module imports neither
Lightning nor a data module, so inspecting starts fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from omegaconf import DictConfig

from tlexp.config import TlexpConfig, check_required, plain, typed_config
from tlexp.errors import ConfigError, ShapeError
from tlexp.freeze import freeze
from tlexp.graph import GraphInput, LayerGraph
from tlexp.sources import load_source
from tlexp.surgery import apply_ops

__all__ = ["DataLike", "build_model", "check_required", "edit_graph", "load_graph", "needs_data", "plain"]

#: what the public functions take: the composed config, or the TlexpConfig made of it once
Config = DictConfig | TlexpConfig


class DataLike(Protocol):
    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def num_classes(self) -> int: ...


def _spec_without_shape(source: Mapping[str, Any]) -> bool:
    return source.get("type") == "spec" and not source.get("input_shape") and not source.get("inputs")


def _mentions_auto(op: Any) -> bool:
    if isinstance(op, Mapping):
        return any(v == "auto" or _mentions_auto(v) for v in op.values())
    return False


def needs_data(cfg: Config) -> bool:
    """Whether building the model needs the data (an ``auto`` size, a spec without input shape)."""
    cfg = typed_config(cfg)
    ops = cfg.surgery.ops or []
    source = plain(cfg.source)
    layers = source.get("layers") or [] if source.get("type") == "spec" else []
    return any(_mentions_auto(op) for op in [*ops, *layers]) or _spec_without_shape(source)


def _resolve_auto(ops: list[Any], num_classes: int) -> list[Any]:
    """``auto`` sizes in surgery ops mean the data's number of classes."""
    out = []
    for op in ops:
        if isinstance(op, Mapping):
            op = {k: (num_classes if v == "auto" and k in ("out_features", "n_out", "num_classes") else v) for k, v in op.items()}
            if isinstance(op.get("args"), Mapping):
                op["args"] = _resolve_auto([op["args"]], num_classes)[0]
        out.append(op)
    return out


def _with_input_shape(graph: LayerGraph, data: DataLike, check: bool = True) -> LayerGraph:
    """Declare the data's sample shape on a single-input graph saved without one, and (after
    surgery, which may resize the first layer) check it."""
    if len(graph.graph_inputs) != 1 or not data.input_shape:
        return graph
    gi = graph.graph_inputs[0]
    want = tuple(data.input_shape)
    if gi.shape is None:
        return graph.rebuilt(inputs=[GraphInput(gi.name, want, gi.dtype)])
    fits = len(gi.shape) == len(want) and all(a is None or a == b for a, b in zip(gi.shape, want))
    if check and not fits:
        first = graph.consumers(gi.name)
        hint = "choose a data set or model that fit, or add a surgery op set_input_preprocessor"
        if first and len(want) == len(gi.shape) and len(want) == 1:
            hint = (f"resize the first layer to the data's width with the surgery op "
                    f"{{op: n_in_replace, layer: {first[0]}, n_in: {want[0]}}} (added to surgery.ops), or choose another data set")
        raise ShapeError(f"data: samples have shape {list(want)} but the model's input {gi.name!r} takes {list(gi.shape)}; {hint}")
    return graph


def load_graph(cfg: Config, data: DataLike | None = None) -> tuple[LayerGraph, dict[str, Any]]:
    """The source's model and the fine-tune config (with any overrides the source carries)."""
    cfg = typed_config(cfg)
    source = plain(cfg.source)
    if data is not None and _spec_without_shape(source):
        source["input_shape"] = list(data.input_shape)
    if source.get("type") == "spec" and any(_mentions_auto(layer) for layer in source.get("layers") or []):
        if data is None:
            raise ConfigError("source.layers: 'auto' sizes need a data set to count classes (set data=…)")
        source["layers"] = _resolve_auto(list(source["layers"]), data.num_classes)
    # dl4j_zoo reads init itself (DL4J's architecture with fresh weights or its zoo zip)
    init = source.get("init", "pretrained") if source.get("type") == "dl4j_zoo" else source.pop("init", "pretrained")
    graph = load_source(source)
    if init == "random" and source.get("type") != "dl4j_zoo":
        from tlexp.graph._weight_init import reinit

        reinit(graph, int(cfg.seed))  # the same architecture from scratch: the transfer-vs-scratch run
    finetune = plain(cfg.finetune)
    overrides = graph.meta.get("finetune_overrides")
    if overrides:
        from tlexp import finetune as ft

        finetune.update(overrides)
        ft.validate_finetune(finetune)
    schedule = graph.meta.get("schedule_default")
    if schedule and (finetune.get("schedule") or "none") == "none":
        # a continued run keeps the saved run's schedule (and its position) unless told otherwise
        finetune.update(schedule)
    return graph, finetune


def edit_graph(cfg: Config, graph: LayerGraph, data: DataLike | None = None) -> LayerGraph:
    """surgery then freeze, checked against the data's sample shape and class count."""
    cfg = typed_config(cfg)
    if data is not None:
        graph = _with_input_shape(graph, data, check=False)
    ops = plain(cfg.surgery.ops) or []
    if any(_mentions_auto(op) for op in ops):
        if data is None:
            raise ConfigError("surgery.ops: 'auto' sizes need a data set to count classes (set data=…)")
        ops = _resolve_auto(ops, data.num_classes)
    graph = apply_ops(graph, ops)
    if data is not None:
        graph = _with_input_shape(graph, data)
    up_to = plain(cfg.freeze.up_to)
    saved_cut = graph.meta.get("freeze_up_to")
    if up_to is None and plain(cfg.source).get("load_optimizer_state") and saved_cut:
        up_to = saved_cut  # continuing a saved run keeps its frozen set unless freeze.up_to says otherwise
    freeze(graph, up_to, plain(cfg.freeze.mode))
    return graph


def build_model(cfg: Config, data: DataLike | None = None) -> tuple[LayerGraph, dict[str, Any]]:
    """source → surgery → freeze. Returns (graph, fine-tune config)."""
    cfg = typed_config(cfg)
    graph, finetune = load_graph(cfg, data)
    return edit_graph(cfg, graph, data), finetune
