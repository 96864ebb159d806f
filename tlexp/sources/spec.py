"""``source=spec``: a network listed layer by layer in YAML.

Each entry has a ``name`` and a ``type`` from the layer registry; the layer's arguments may sit
beside them or under ``args``; ``inputs`` names the nodes it takes (default: the entry before).
Sizes that follow from the input shape (``in_features`` …) may be left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tlexp.errors import ConfigError
from tlexp.graph import LayerGraph

__all__ = ["from_config", "build_spec"]

_RESERVED = {"name", "type", "args", "inputs"}


def build_spec(
    layers: Sequence[Mapping[str, Any]],
    input_shape: Sequence[int] | None = None,
    inputs: Sequence[Mapping[str, Any]] | None = None,
    outputs: Sequence[str] | None = None,
) -> LayerGraph:
    if not layers:
        raise ConfigError("source.layers: the list of layers is empty")
    if inputs:
        input_specs = [dict(i) for i in inputs]
    else:
        input_specs = [{"name": "input", "shape": None if input_shape is None else list(input_shape)}]
    nodes = []
    for i, entry in enumerate(layers):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"source.layers[{i}]: expected a mapping with name and type, got {entry!r}")
        entry = dict(entry)
        for key in ("name", "type"):
            if key not in entry:
                raise ConfigError(f"source.layers[{i}]: missing {key!r}")
        args = dict(entry.get("args") or {})
        args.update({k: v for k, v in entry.items() if k not in _RESERVED})
        node = {"name": str(entry["name"]), "type": entry["type"], "args": args}
        if entry.get("inputs") is not None:
            node["inputs"] = entry["inputs"]
        nodes.append(node)
    arch = {"inputs": input_specs, "nodes": nodes}
    if outputs:
        arch["outputs"] = list(outputs)
    return LayerGraph.from_config(arch)


def from_config(cfg: Mapping[str, Any]) -> LayerGraph:
    return build_spec(
        cfg.get("layers") or [],
        input_shape=cfg.get("input_shape"),
        inputs=cfg.get("inputs"),
        outputs=cfg.get("outputs"),
    )
