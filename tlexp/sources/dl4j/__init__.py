"""``source=dl4j``: Deeplearning4j ``ModelSerializer`` zips read as a native LayerGraph.

A DL4J model file (``MultiLayerNetwork.save`` / ``ComputationGraph.save`` /
``ModelSerializer.writeModel``, DL4J 0.5 to 1.0.0-M2) is a zip of ``configuration.json`` (the
network, in Jackson's JSON), ``coefficients.bin`` (every parameter in one ND4J array),
optionally ``updaterState.bin`` (the optimizer state, same format) and ``normalizer.bin`` (the
data normalizer the model was trained behind). tlexp reads all of them itself: no JVM, no
unpickling, no user code (a custom layer class is refused, named).

The graph takes inputs as DL4J's ``output()`` does ([batch, features], NCHW images,
[batch, features, time] sequences), returns what it returns, and comes back in inference mode.
Node names are DL4J's layer names (a MultiLayerNetwork's unnamed layers: ``layer0``, ...), so a
``freeze.up_to`` written for DL4J works. A stored normalizer becomes the first node,
``normalizer`` (``normalizer=False`` leaves it out).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tlexp.errors import ConfigError, SourceError
from tlexp.graph import GraphInput, LayerGraph, Node
from tlexp.sources.dl4j import _layers  # noqa: F401  (registers the dl4j_* layer types)
from tlexp.sources.dl4j._convert import SUPPORTED_LAYERS, SUPPORTED_VERTICES, Builder, Built
from tlexp.sources.dl4j._ndarray import ND4JFormatError, read_array_bytes, read_array_file

__all__ = [
    "load_dl4j",
    "load_optimizer_state",
    "from_config",
    "optimizer_state_from_config",
    "read_array_file",
    "read_model_zip",
    "SUPPORTED_LAYERS",
    "SUPPORTED_VERTICES",
]


def read_model_zip(path: str | Path) -> dict[str, bytes]:
    """The entries of a ModelSerializer zip that tlexp reads (refusing a zip that lacks the two
    it needs)."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"source.path: {path}: no such file")
    if not zipfile.is_zipfile(p):
        raise SourceError(f"source.path: {path}: not a DL4J model zip (ModelSerializer writes a zip)")
    with zipfile.ZipFile(p) as z:
        names = set(z.namelist())
        missing = [n for n in ("configuration.json", "coefficients.bin") if n not in names]
        if missing:
            raise SourceError(
                f"source.path: {path}: not a DL4J model zip, it lacks {' and '.join(missing)} "
                f"(it holds: {', '.join(sorted(names)[:8]) or 'nothing'})"
            )
        return {n: z.read(n) for n in ("configuration.json", "coefficients.bin", "updaterState.bin",
                                       "normalizer.bin", "noParams.marker") if n in names}


def _multi_layer_network(conf: dict[str, Any], b: Builder, where: str) -> tuple[list[GraphInput], list[Built], list[str]]:
    confs = conf["confs"]
    pre = conf.get("inputPreProcessors") or {}
    built: list[Built] = []
    src, kind = "input", _first_kind(confs)
    for i, c in enumerate(confs):
        layer = c["layer"]
        fields = layer if "@class" in layer else (next(iter(layer.values())) if len(layer) == 1 else layer)
        name = fields.get("layerName") or f"layer{i}"
        lw = f"{where}: layer {i} ({name!r})"
        if str(i) in pre and pre[str(i)] is not None:
            nodes, src, kind = b.preprocessor(f"{name}_preprocessor", pre[str(i)], src, kind, lw)
            if nodes:
                built.append(Built(nodes, src, kind))
        out = b.layer(name, layer, src, kind, lw)
        built.append(out)
        src, kind = out.out, out.kind
    return [GraphInput("input")], built, [src]


def _first_kind(confs: list[dict[str, Any]]) -> str:
    if not confs:
        raise SourceError("configuration.json: a network without layers")
    layer = confs[0]["layer"]
    key = (layer.get("@class") or next(iter(layer), "")).rsplit(".", 1)[-1].lower()
    if "3d" in key:
        return "cnn3d"
    if any(s in key for s in ("lstm", "rnn", "1d", "embeddingsequence", "bidirectional", "lasttimestep")):
        return "rnn"
    if any(s in key for s in ("convolution", "subsampling", "pooling2d", "zeropadding", "cropping", "upsampling",
                              "localresponse", "separable", "depthwise", "cnnloss")):
        return "cnn"
    return "ff"


def _topological(conf: dict[str, Any]) -> list[str]:
    """DL4J's own vertex order (it decides where each vertex's parameters sit in the flat vector)."""
    order = conf.get("topologicalOrderStr")
    inputs = list(conf["networkInputs"])
    if order:
        return [v for v in order if v not in inputs]
    names = inputs + [v for v in conf["vertices"] if v not in inputs]
    index = {n: i for i, n in enumerate(names)}
    vin = conf.get("vertexInputs") or {}
    remaining = {n: set(vin.get(n, [])) for n in names}
    outs: dict[str, set[int]] = {n: set() for n in names}
    for n, srcs in vin.items():
        for s in srcs:
            if s not in index:
                raise SourceError(f"configuration.json: vertex {n!r} takes {s!r}, which is not a vertex or input")
            outs[s].add(index[n])
    queue = [n for n in names if not remaining[n]]
    result: list[str] = []
    while queue:
        cur = queue.pop(0)
        result.append(cur)
        for j in sorted(outs[cur]):
            nxt = names[j]
            remaining[nxt].discard(cur)
            if not remaining[nxt]:
                queue.append(nxt)
    if len(result) != len(names):
        raise SourceError("configuration.json: the graph has a cycle")
    return [v for v in result if v not in inputs]


def _computation_graph(conf: dict[str, Any], b: Builder, where: str) -> tuple[list[GraphInput], list[Built], list[str]]:
    inputs = list(conf["networkInputs"])
    b.net_input = inputs[0]
    vin = conf.get("vertexInputs") or {}
    out_of: dict[str, tuple[str, str]] = {}
    first_kind = "ff"
    # guess each input's layout from its first consumer
    for v in conf["vertices"].values():
        inner = v.get("layerConf", {}).get("layer") if "@class" in v else next(iter(v.values()), {}).get("layerConf", {}).get("layer")
        if inner:
            first_kind = _first_kind([{"layer": inner}])
            break
    for name in inputs:
        out_of[name] = (name, first_kind)
    built: list[Built] = []
    for name in _topological(conf):
        obj = conf["vertices"][name]
        srcs = [out_of[s][0] for s in vin.get(name, [])]
        kinds = [out_of[s][1] for s in vin.get(name, [])]
        vw = f"{where}: vertex {name!r}"
        if not srcs:
            raise SourceError(f"{vw}: has no inputs")
        cls = obj.get("@class", "").rsplit(".", 1)[-1] if "@class" in obj else next(iter(obj))
        if cls == "LayerVertex":
            fields = obj if "@class" in obj else obj["LayerVertex"]
            src, kind = srcs[0], kinds[0]
            if len(srcs) > 1:
                # DL4J merges several inputs of a layer vertex along the feature axis
                merge = {"@class": "org.deeplearning4j.nn.conf.graph.MergeVertex"}
                mnodes = [Node(f"{name}_merge", b.vertex(f"{name}_merge", merge, srcs, kinds, vw).nodes[0].module, srcs)]
                built.append(Built(mnodes, f"{name}_merge", kind))
                src = f"{name}_merge"
            if fields.get("preProcessor"):
                nodes, src, kind = b.preprocessor(f"{name}_preprocessor", fields["preProcessor"], src, kind, vw)
                if nodes:
                    built.append(Built(nodes, src, kind))
            out = b.layer(name, fields["layerConf"]["layer"], src, kind, vw)
        else:
            out = b.vertex(name, obj, srcs, kinds, vw)
        built.append(out)
        out_of[name] = (out.out, out.kind)
    outputs = [out_of[o][0] for o in conf["networkOutputs"]]
    return [GraphInput(n) for n in inputs], built, outputs


def _assign(built: list[Built], params: np.ndarray, path: str) -> None:
    total = sum(x.n_params for x in built)
    if params.size != total:
        raise SourceError(
            f"source.path: {path}: coefficients.bin holds {params.size} parameters but the configuration needs "
            f"{total}; the file is damaged or from a different network"
        )
    i = 0
    flat = params.reshape(-1)
    for x in built:
        if x.n_params:
            x.assign(flat[i : i + x.n_params])
            i += x.n_params


def _parse_json(raw: bytes, path: str) -> dict[str, Any]:
    try:
        conf = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"source.path: {path}: configuration.json is not valid JSON ({e})") from None
    if not isinstance(conf, dict):
        raise SourceError(f"source.path: {path}: configuration.json is not a DL4J configuration")
    return conf


def build_graph(conf: dict[str, Any], path: str = "configuration.json") -> tuple[LayerGraph, list[Built], str]:
    """The graph (random weights) and the per-layer parameter blocks of a DL4J configuration."""
    b = Builder()
    try:
        if "confs" in conf:
            inputs, built, outputs = _multi_layer_network(conf, b, path)
            kind = "MultiLayerNetwork"
        elif "vertices" in conf:
            inputs, built, outputs = _computation_graph(conf, b, path)
            kind = "ComputationGraph"
        else:
            raise SourceError(f"source.path: {path}: configuration.json is neither a MultiLayerNetwork nor a ComputationGraph")
    except (SourceError, ConfigError):
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, StopIteration) as e:
        raise SourceError(f"source.path: {path}: malformed DL4J configuration ({type(e).__name__}: {e})") from None
    nodes = [n for x in built for n in x.nodes]
    graph = LayerGraph(inputs, nodes, outputs)
    return graph, built, kind


def load_dl4j(path: str | Path, normalizer: bool = True, load_optimizer_state: bool = False) -> LayerGraph:
    """Import a DL4J ModelSerializer zip as a :class:`LayerGraph` in inference mode.

    ``graph.meta`` records the network kind, the file's DL4J dtype, and the training settings
    the file stores (JSON data). With ``load_optimizer_state`` the zip's ``updaterState.bin`` must
    map to a torch optimizer: that optimizer becomes ``graph.meta["finetune_overrides"]``, and
    :func:`load_optimizer_state` reads the state itself (torch tensors per parameter name), so a
    run continues where DL4J stopped.
    """
    entries = read_model_zip(path)
    conf = _parse_json(entries["configuration.json"], str(path))
    graph, built, kind = build_graph(conf, str(path))
    try:
        params = read_array_bytes(entries["coefficients.bin"], f"{path}: coefficients.bin")
    except ND4JFormatError as e:
        raise SourceError(f"source.path: {e}") from None
    _assign(built, params, str(path))
    meta: dict[str, Any] = {
        "source": "dl4j",
        "dl4j_network": kind,
        "dl4j_dtype": str(params.dtype),
        "has_updater_state": "updaterState.bin" in entries,
        "param_layout": [[n.out, [list(k) for k in n.param_names]] for n in built if n.n_params],
    }
    if load_optimizer_state:
        mapped = _updater_state(path, entries, conf, built)
        meta["finetune_overrides"] = mapped["finetune_overrides"]
        meta["dl4j_updater"] = mapped["updater"]
        meta["dl4j_iteration"] = mapped["iteration"]
    graph = graph.rebuilt(meta=meta)
    if normalizer and "normalizer.bin" in entries:
        from tlexp.sources.dl4j._normalizer import add_normalizer

        graph = add_normalizer(graph, entries["normalizer.bin"], str(path))
    graph.eval()
    return graph


def _updater_state(path: str | Path, entries: Mapping[str, bytes], conf: dict[str, Any], built: list[Built]) -> dict[str, Any]:
    """The zip's updaterState.bin mapped to torch (``map_updater_state``'s result)."""
    if "updaterState.bin" not in entries:
        raise SourceError(
            f"source.path: {path}: the zip has no updaterState.bin (DL4J saved it with saveUpdater=false); "
            "set source.load_optimizer_state=false"
        )
    from tlexp.sources.dl4j._updater import map_updater_state

    try:
        state = read_array_bytes(entries["updaterState.bin"], f"{path}: updaterState.bin")
    except ND4JFormatError as e:
        raise SourceError(f"source.path: {e}") from None
    return map_updater_state(conf, built, state, _iterations(conf), build_graph, epoch=_epochs(conf))


def load_optimizer_state(path: str | Path) -> dict[str, Any]:
    """The optimizer state of a DL4J zip (``source.load_optimizer_state=true``): ``by_name`` (torch
    state per parameter name) and ``progress`` (DL4J's counters, and its learning-rate schedule
    where it stands), as a saved model's ``optimizer.safetensors`` gives them."""
    entries = read_model_zip(path)
    conf = _parse_json(entries["configuration.json"], str(path))
    _, built, _ = build_graph(conf, str(path))
    mapped = _updater_state(path, entries, conf, built)
    # DL4J's counters (configuration.json iterationCount / epochCount): a run continues them
    progress: dict[str, Any] = {"epochs": _epochs(conf), "global_step": mapped["iteration"]}
    if mapped.get("schedule"):
        progress["schedule"] = mapped["schedule"]  # DL4J's learningRateSchedule, where it stands
    return {"by_name": mapped["by_name"], "progress": progress}


def optimizer_state_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`load_optimizer_state` of the ``source`` config node's file."""
    from tlexp._resources import resolve_path

    return load_optimizer_state(resolve_path(str(cfg.get("path"))))


def _counter(conf: dict[str, Any], key: str) -> int:
    counts = [conf.get(key) or 0]
    for c in conf.get("confs") or []:
        counts.append(c.get(key) or 0)
    for v in (conf.get("vertices") or {}).values():
        lv = v.get("LayerVertex", v) if isinstance(v, dict) else {}
        counts.append((lv.get("layerConf") or {}).get(key) or 0)
    return int(max(int(c) for c in counts))


def _iterations(conf: dict[str, Any]) -> int:
    return _counter(conf, "iterationCount")


def _epochs(conf: dict[str, Any]) -> int:
    return _counter(conf, "epochCount")


def from_config(cfg: Mapping[str, Any]) -> LayerGraph:
    """The ``source`` config node (type=dl4j) -> LayerGraph."""
    path = cfg.get("path")
    if not path or path == "???":
        raise ConfigError("source.path: a DL4J source needs source.path=FILE (a ModelSerializer .zip)")
    from tlexp._resources import resolve_path

    return load_dl4j(resolve_path(str(path)), normalizer=bool(cfg.get("normalizer", True)),
                     load_optimizer_state=bool(cfg.get("load_optimizer_state", False)))
