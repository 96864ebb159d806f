"""Where models come from. Each source turns its config into a :class:`LayerGraph`.

``source.type`` picks the loader (each file in ``conf/source/`` sets it): ``spec`` (layers
listed in YAML), ``saved`` (tlexp's own format), ``keras`` (h5py reader), ``zoo`` (timm), ``dl4j``
(Deeplearning4j ModelSerializer zips).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from tlexp.errors import ConfigError, choices
from tlexp.graph import LayerGraph, register_provider

__all__ = ["SOURCES", "load_source", "load_source_optimizer_state"]

#: source type -> module that defines ``from_config(cfg) -> LayerGraph``; imported lazily so
#: that a run from a saved model never imports timm or h5py-reading code it does not need
SOURCES: dict[str, str] = {
    "spec": "tlexp.sources.spec",
    "saved": "tlexp.sources.saved",
    "keras": "tlexp.sources.keras",
    "zoo": "tlexp.sources.zoo",
    "dl4j": "tlexp.sources.dl4j",
    "dl4j_zoo": "tlexp.sources.dl4j._zoo",
}

#: modules that register the layer types only one source needs; the layer registry imports one
#: when a config names a type it does not know yet (a saved Keras import names keras_relu)
for _provider in (
    "tlexp.sources.keras._layers",
    "tlexp.sources.keras._layers_more",
    "tlexp.sources.dl4j._layers",
    "tlexp.sources.dl4j._zoo",
    "tlexp.sources.zoo._layers",
):
    register_provider(_provider)


def load_source(cfg: Mapping[str, Any]) -> LayerGraph:
    """Build the model that ``cfg`` (the ``source`` config node) describes."""
    if not isinstance(cfg, dict):
        from tlexp.config import plain

        cfg = plain(cfg)
    kind = cfg.get("type")
    if kind not in SOURCES:
        raise ConfigError(f"source.type: unknown source {kind!r}; valid: {choices(SOURCES)}")
    module = importlib.import_module(SOURCES[kind])
    loader: Callable[[Mapping[str, Any]], LayerGraph] = module.from_config
    return loader(cfg)


def load_source_optimizer_state(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer state the ``source`` config node's model was saved with
    (``source.load_optimizer_state=true``): ``by_name`` or a torch ``state_dict``, and ``progress``.
    A source that has one defines ``optimizer_state_from_config(cfg)`` (saved, dl4j); the graph's
    ``meta`` stays JSON data, so the tensors come from here."""
    if not isinstance(cfg, dict):
        from tlexp.config import plain

        cfg = plain(cfg)
    kind = cfg.get("type")
    module = importlib.import_module(SOURCES.get(str(kind), SOURCES["saved"]))
    loader: Callable[[Mapping[str, Any]], dict[str, Any]] | None = getattr(module, "optimizer_state_from_config", None)
    if loader is None:
        raise ConfigError(f"source.load_optimizer_state: a {kind} source has no optimizer state; "
                          "sources that have one: saved, dl4j")
    return loader(cfg)
