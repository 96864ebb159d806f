"""``source=zoo``: any timm model as a LayerGraph at block granularity.

``source.name`` is any ``timm.list_models()`` name. ``source.pretrained=true`` loads timm's own
weights (its hub download); ``source.weights=FILE`` loads a local ``.safetensors``/``.pth`` file
instead, through timm's ``pretrained_cfg_overlay`` (a ``.pth`` is read with
``torch.load(weights_only=True)``, never unpickling code). ``source.num_classes`` and
``source.in_chans`` are timm's own arguments (a different class count re-initializes the
classifier, as timm does); ``source.input_size`` (C, H, W) is the input the graph is traced and
shaped for (default: timm's pretrained config); ``source.kwargs`` go to ``timm.create_model``.

Every block, stem part and head part is a node, so any of them can be ``freeze.up_to``; the
classifier is a registry ``dense`` node (``graph.meta["classifier"]``), so surgery can remove
it (pooled features) or replace it. ``graph.meta["data_config"]`` is timm's data config for the
model (input size, mean, std, interpolation, crop), which the image data module uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from tlexp.errors import ConfigError, ShapeError
from tlexp.graph import LayerGraph, Node, build_layer_and_spec
from tlexp.sources.zoo._create import WEIGHT_SUFFIXES, check_name, create_model
from tlexp.sources.zoo._trace import LEVELS, BadInput, Unsupported, classifier_path, to_graph

__all__ = ["from_config", "load_zoo", "data_config", "reset_classifier", "WEIGHT_SUFFIXES", "LEVELS"]

_KEYS = ("type", "name", "pretrained", "weights", "num_classes", "in_chans", "input_size", "kwargs")
#: create_model arguments that have their own source setting (or make a model that is not a classifier)
_RESERVED_KWARGS = {
    "pretrained": "source.pretrained",
    "pretrained_cfg_overlay": "source.weights",
    "checkpoint_path": "source.weights",
    "num_classes": "source.num_classes",
    "in_chans": "source.in_chans",
    "features_only": "freeze.up_to (every block is already a cut point)",
}


def from_config(cfg: Mapping[str, Any]) -> LayerGraph:
    """The ``source`` config node (``type: zoo``) as a LayerGraph."""
    cfg = dict(cfg)
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise ConfigError(f"source.{unknown[0]}: not a zoo source setting; valid: {', '.join(_KEYS[1:])}")
    kwargs = cfg.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"source.kwargs: {kwargs!r} is not a mapping of timm.create_model arguments")
    _check_reserved(kwargs)
    return load_zoo(
        cfg.get("name"),  # type: ignore[arg-type]
        pretrained=cfg.get("pretrained", False),
        weights=cfg.get("weights"),
        num_classes=cfg.get("num_classes"),
        in_chans=cfg.get("in_chans", 3),
        input_size=cfg.get("input_size"),
        **dict(kwargs),
    )


def load_zoo(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    input_size: Sequence[int] | None = None,
    **kwargs: Any,
) -> LayerGraph:
    """A timm model as a LayerGraph, each block a node; ``weights`` (a local file) implies pretrained."""
    name = check_name(name)
    _check_args(pretrained, num_classes, in_chans, input_size, kwargs)
    creation = dict(kwargs)
    if num_classes is not None:
        creation["num_classes"] = num_classes
    if in_chans != 3:
        creation["in_chans"] = in_chans
    model = create_model(name, bool(pretrained), weights, creation)
    if input_size is None and isinstance(kwargs.get("img_size"), (int, list, tuple)):
        # a model built for another image size than its pretrained config's
        size = kwargs["img_size"]
        input_size = [in_chans, size, size] if isinstance(size, int) else [in_chans, *size]
    data = _data_config(model, input_size, in_chans)
    try:
        graph, level = to_graph(model, {"model": name, "kwargs": creation}, data["input_size"])
    except Unsupported as e:  # pragma: no cover - the whole-model level always works
        raise ConfigError(f"source.name: {name!r} cannot be brought in as a graph: {e}") from None
    except BadInput as e:
        raise ShapeError(
            f"source.input_size: {data['input_size']} does not fit timm model {name!r} ({e}); "
            f"timm's default is {list(_data_config(model, None, in_chans)['input_size'])}; "
            "models made for one size take it as source.kwargs.img_size"
        ) from None
    return graph.rebuilt(meta={
        "source": "zoo",
        "model": name,
        "pretrained": bool(pretrained or weights),
        "weights": None if weights is None else str(weights),
        "creation_kwargs": creation,
        "granularity": level,
        # a node (dense) unless the whole model is one node
        "classifier": classifier_path(model) if level != "model" else None,
        "num_classes": int(getattr(model, "num_classes", 0) or 0),
        "data_config": data,
    })


def _check_args(pretrained: Any, num_classes: Any, in_chans: Any, input_size: Any, kwargs: Mapping[str, Any]) -> None:
    if not isinstance(pretrained, bool):
        raise ConfigError(f"source.pretrained: {pretrained!r} is not true/false")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0):
        raise ConfigError(f"source.num_classes: {num_classes!r} is not a class count (0 = no classifier, pooled features)")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise ConfigError(f"source.in_chans: {in_chans!r} is not a channel count (>= 1)")
    if input_size is not None:
        size = list(input_size) if isinstance(input_size, Sequence) and not isinstance(input_size, str) else None
        if size is None or len(size) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
            raise ConfigError(f"source.input_size: {input_size!r} is not [channels, height, width]")
        if size[0] != in_chans:
            raise ConfigError(f"source.input_size: {size} has {size[0]} channels, source.in_chans is {in_chans}")
    _check_reserved(kwargs)
    try:
        json.dumps(dict(kwargs), sort_keys=True)
    except (TypeError, ValueError):
        raise ConfigError(f"source.kwargs: {dict(kwargs)!r} must hold plain values (numbers, strings, lists, mappings)") from None


def _check_reserved(kwargs: Mapping[str, Any]) -> None:
    for key, field in _RESERVED_KWARGS.items():
        if key in kwargs:
            raise ConfigError(f"source.kwargs.{key}: set {field} instead")


# ---- data config ----------------------------------------------------------------------------------


def _normalize(cfg: Mapping[str, Any], in_chans: int) -> dict[str, Any]:
    """timm's data config as JSON, with mean/std fitted to ``in_chans`` the way timm adapts the first conv."""
    size = [int(d) for d in cfg["input_size"]]
    size[0] = in_chans

    def fit(v: Sequence[float]) -> list[float]:
        v = [float(x) for x in v]
        if len(v) == in_chans:
            return v
        if in_chans == 1:
            return [sum(v) / len(v)]  # timm sums the RGB filters for one channel
        return [v[i % len(v)] for i in range(in_chans)]  # and repeats them for more

    return {
        "input_size": size,
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "mean": fit(cfg["mean"]),
        "std": fit(cfg["std"]),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "crop_mode": str(cfg.get("crop_mode") or "center"),
    }


def _data_config(model: nn.Module, input_size: Sequence[int] | None, in_chans: int) -> dict[str, Any]:
    from timm.data import resolve_data_config

    args = {"input_size": tuple(input_size)} if input_size is not None else {}
    return _normalize(resolve_data_config(args, model=model), in_chans)


def data_config(graph_or_name: LayerGraph | str) -> dict[str, Any]:
    """timm's data config (input_size, mean, std, interpolation, crop_pct, crop_mode) for a model.

    For a graph: its ``meta["data_config"]`` when it came from :func:`load_zoo`, else it is
    resolved from the timm model its nodes came from and its declared input shape.
    """
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    if isinstance(graph_or_name, str):
        cfg = get_pretrained_cfg(check_name(graph_or_name))
        return _normalize(resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {"input_size": (3, 224, 224)}), 3)
    meta = graph_or_name.meta
    if isinstance(meta.get("data_config"), Mapping):
        return json.loads(json.dumps(meta["data_config"]))
    for node in graph_or_name:
        if node.type == "timm_module":
            kwargs = node.args.get("kwargs") or {}
            in_chans = int(kwargs.get("in_chans", 3))
            cfg = get_pretrained_cfg(node.args["model"])
            args = {}
            shape = graph_or_name.graph_inputs[0].shape
            if shape is not None and len(shape) == 3 and all(isinstance(d, int) for d in shape):
                args["input_size"] = tuple(shape)
            return _normalize(resolve_data_config(args, pretrained_cfg=cfg.to_dict() if cfg else {}), in_chans)
    raise ConfigError("data_config: the model has no timm origin; give the image size and normalization in the data config")


# ---- classifier ---------------------------------------------------------------------------------


def reset_classifier(graph: LayerGraph, num_classes: int) -> LayerGraph:
    """timm's ``reset_classifier`` on the graph: a fresh ``dense`` classifier, or none (pooled features) for 0.

    Returns a new graph sharing every other node's module (and weights) with ``graph``.
    """
    meta = dict(graph.meta)
    cls = meta.get("classifier")
    if not cls:
        raise ConfigError("reset_classifier: the model has no classifier timm knows of (graph.meta['classifier'])")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ConfigError(f"num_classes: {num_classes!r} is not a class count (0 = no classifier)")
    if cls in graph:
        if graph.node(cls).type != "dense":
            raise ConfigError(
                f"reset_classifier: the classifier {cls!r} of this model is a {graph.node(cls).type} "
                "(not a linear layer); replace it with surgery ops (remove_output_layer, add_layer)"
            )
        feat = graph.node(cls).inputs[0]
    elif len(graph.outputs) == 1:
        feat = graph.outputs[0]  # headless (num_classes=0): the classifier goes after the pooled features
    else:
        raise ConfigError(f"reset_classifier: no node {cls!r} and more than one output")
    nodes = [n for n in graph if n.name != cls]
    outputs = [feat if o == cls else o for o in graph.outputs]
    nodes = [replace(n, inputs=[feat if i == cls else i for i in n.inputs]) for n in nodes]
    if num_classes > 0:
        shapes = graph.trace_shapes()
        dense, spec = build_layer_and_spec("dense", {"out_features": num_classes}, shapes[feat], where=cls)
        at = graph.index(cls) if cls in graph else len(nodes)
        nodes.insert(at, Node(cls, dense, [feat], spec=spec))
        outputs = [cls if o == feat else o for o in outputs]
    return graph.rebuilt(nodes, outputs, meta={**meta, "num_classes": num_classes})
