"""``normalizer.bin``: the data normalizer a DL4J model was saved with, as the graph's first node.

DL4J 1.0 writes it with ``NormalizerSerializer``: ``writeUTF("NORMALIZER")``, an int version,
``writeUTF(type)``, then the strategy's fields -

- ``STANDARDIZE``: a boolean (labels fitted too), ``Nd4j.write(mean)``, ``Nd4j.write(std)``
  (then the label mean/std); DL4J divides by the std with values under 1e-5 replaced by 1.
- ``MIN_MAX``: a boolean, doubles targetMin and targetMax, ``Nd4j.write(min)``,
  ``Nd4j.write(max)``: ``(x - min) / (max - min) * (tMax - tMin) + tMin``.
- ``IMAGE_MIN_MAX`` (ImagePreProcessingScaler): doubles minRange, maxRange, maxPixelVal.

Normalization acts on axis 1 (features, or the channels of images and sequences).
"""

from __future__ import annotations

import io
import struct
from dataclasses import replace

import numpy as np

from tlexp.errors import SourceError
from tlexp.graph import LayerGraph, Node, build_layer
from tlexp.sources.dl4j._ndarray import ND4JFormatError, read_array, read_utf

__all__ = ["add_normalizer", "read_normalizer"]

EPS = 1e-5


def read_normalizer(raw: bytes, where: str) -> tuple[str, dict[str, object]]:
    if raw[:2] == b"\xac\xed":
        raise SourceError(
            f"{where}: normalizer.bin is a Java-serialized object (DL4J before 1.0); it is not read (no "
            "unpickling); re-save the model with DL4J 1.0, or set source.normalizer=false"
        )
    f = io.BytesIO(raw)
    try:
        head = read_utf(f, where)
        if head != "NORMALIZER":
            raise SourceError(f"{where}: normalizer.bin has no NORMALIZER header")
        (version,) = struct.unpack(">i", f.read(4))
        kind = read_utf(f, where)
        if kind == "STANDARDIZE":
            f.read(1)
            mean = read_array(f, where).astype(np.float64).reshape(-1)
            std = read_array(f, where).astype(np.float64).reshape(-1)
            return kind, {"mean": mean, "std": std}
        if kind == "MIN_MAX":
            f.read(1)
            tmin, tmax = struct.unpack(">dd", f.read(16))
            lo = read_array(f, where).astype(np.float64).reshape(-1)
            hi = read_array(f, where).astype(np.float64).reshape(-1)
            return kind, {"min": lo, "max": hi, "target_min": tmin, "target_max": tmax}
        if kind == "IMAGE_MIN_MAX":
            lo, hi, mx = struct.unpack(">ddd", f.read(24))
            return kind, {"min_range": lo, "max_range": hi, "max_pixel": mx}
    except (ND4JFormatError, struct.error) as e:
        raise SourceError(f"{where}: normalizer.bin is truncated or damaged ({e})") from None
    raise SourceError(
        f"{where}: normalizer type {kind!r} is not supported; supported: STANDARDIZE, MIN_MAX, IMAGE_MIN_MAX "
        "(set source.normalizer=false to load the model without it)"
    )


def add_normalizer(graph: LayerGraph, raw: bytes, where: str) -> LayerGraph:
    """A new graph: ``normalizer`` first, then the model (same modules, same names)."""
    kind, p = read_normalizer(raw, f"source.path: {where}")
    spatial = -1  # decided below from the first layer; normalize takes the axes after the features
    if kind == "STANDARDIZE":
        std = np.where(p["std"] < EPS, 1.0, p["std"])  # type: ignore[operator]
        mean = p["mean"]
    elif kind == "MIN_MAX":
        rng = p["max"] - p["min"]  # type: ignore[operator]
        rng = np.where(rng < EPS, 1.0, rng)
        t = float(p["target_max"]) - float(p["target_min"])  # type: ignore[arg-type]
        # (x - min) / rng * t + tmin == (x - mean') / std'
        std = rng / t
        mean = p["min"] - float(p["target_min"]) * std  # type: ignore[operator]
    else:
        node_module = build_layer("dl4j_image_scaler", {
            "min_range": float(p["min_range"]), "max_range": float(p["max_range"]),  # type: ignore[arg-type]
            "max_pixel": float(p["max_pixel"]),  # type: ignore[arg-type]
        })
        return _prepend(graph, node_module)
    spatial = _spatial_dims(graph)
    module = build_layer("normalize", {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                                       "spatial_dims": spatial})
    return _prepend(graph, module)


def _spatial_dims(graph: LayerGraph) -> int:
    first = graph._nodes[0].type if graph._nodes else ""
    if first == "conv3d" or (first == "dl4j_pool" and len(getattr(graph._nodes[0].module, "kernel", [])) == 3):
        return 3
    if first in ("conv2d", "separable_conv2d", "depthwise_conv2d", "dl4j_pool", "zero_padding2d", "dl4j_batchnorm"):
        return 2 if first != "dl4j_pool" or len(getattr(graph._nodes[0].module, "kernel", [0, 0])) == 2 else 1
    if first in ("dl4j_rnn", "dl4j_bidirectional", "conv1d", "dl4j_time_dense"):
        return 1
    return 0


def _prepend(graph: LayerGraph, module) -> LayerGraph:
    if len(graph.graph_inputs) != 1:
        raise SourceError("normalizer.bin: a normalizer for a graph with several inputs is not supported")
    inp = graph.graph_inputs[0].name
    first = Node("normalizer", module, [inp])
    nodes = [first]
    for n in graph.nodes:
        nodes.append(replace(n, inputs=["normalizer" if s == inp else s for s in n.inputs]))
    return LayerGraph(graph.graph_inputs, nodes, graph.outputs, meta={**graph.meta, "normalizer": first.type})
