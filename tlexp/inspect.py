"""``tlexp-inspect``: what ``source`` + ``surgery`` + ``freeze`` produce, before any training.

Prints each layer with its output shape, parameter count, frozen/trainable state, and the
number of values per sample that the feature cache would store if the cut were placed after
it; a rule marks the current cut. ``inspect.format=json`` prints the architecture JSON.
"""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from tlexp.errors import ConfigError

__all__ = ["inspect_config"]

FORMATS = ("table", "json")


def _needs_data(cfg: DictConfig) -> bool:
    src = cfg.source
    ops = OmegaConf.to_container(cfg.surgery.ops, resolve=True) or []
    wants_auto = "auto" in json.dumps(ops)
    no_shape = src.get("type") == "spec" and not src.get("input_shape") and not src.get("inputs")
    return wants_auto or no_shape


def inspect_config(cfg: DictConfig, console: Console | None = None) -> dict[str, Any]:
    from tlexp._report import layer_table
    from tlexp.data import build_datamodule
    from tlexp.train import build_model

    fmt = cfg.inspect.format
    if fmt not in FORMATS:
        raise ConfigError(f"inspect.format: {fmt!r} is not a format; valid: {', '.join(FORMATS)}")
    data = None
    if _needs_data(cfg):
        data = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed)
    graph, _ = build_model(cfg, data)
    arch = graph.to_config()
    console = console or Console()
    if fmt == "json":
        print(json.dumps(arch, indent=2))
        return arch
    rows = graph.summary()
    total = sum(r.params for r in rows)
    trainable = sum(r.params for r in rows if r.trainable)
    title = f"{cfg.source.type} model: {len(rows)} layers, {total:,} parameters ({trainable:,} trainable)"
    console.print(layer_table(graph, rows, title=title))
    if graph.frozen:
        b = graph.boundary(graph.frozen)
        console.print(f"cut after the rule: {len(graph.frozen)} frozen layer(s); the cache stores {', '.join(b)} "
                      f"(freeze.mode={cfg.freeze.mode})")
    else:
        console.print("nothing frozen (freeze.up_to=null): every layer trains")
    return arch
