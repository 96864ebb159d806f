"""``tlexp-inspect``: what ``source`` + ``surgery`` + ``freeze`` produce, before any training.

Prints each layer with its output shape, parameter count, frozen/trainable state, and the
number of values per sample that the feature cache would store if the cut were placed after
it; a rule marks the current cut. ``inspect.format=json`` prints the architecture JSON.
"""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from tlexp.config import TlexpConfig, plain, typed_config
from tlexp.errors import ConfigError

__all__ = ["inspect_config"]

FORMATS = ("table", "json")


def inspect_config(cfg: DictConfig | TlexpConfig, console: Console | None = None) -> dict[str, Any]:
    from tlexp._report import layer_table
    from tlexp.assemble import DataLike, build_model, needs_data
    from tlexp.data import build_datamodule, data_facts

    cfg = typed_config(cfg)
    fmt = plain(cfg.inspect.format)
    if fmt not in FORMATS:
        raise ConfigError(f"inspect.format: {fmt!r} is not a format; valid: {', '.join(FORMATS)}")
    data: DataLike | None = None
    if needs_data(cfg):
        data_cfg = plain(cfg.data)
        data = data_facts(data_cfg) or build_datamodule(data_cfg, seed=cfg.seed)
    graph, _ = build_model(cfg, data)
    arch = graph.to_config()
    console = console or Console()
    if fmt == "json":
        print(json.dumps(arch, indent=2))
        return arch
    rows = graph.summary()
    total = sum(r.params for r in rows)
    trainable = sum(r.params for r in rows if r.trainable)
    title = f"{plain(cfg.source).get('type')} model: {len(rows)} layers, {total:,} parameters ({trainable:,} trainable)"
    console.print(layer_table(graph, rows, title=title))
    if graph.frozen:
        b = graph.boundary(graph.frozen)
        console.print(f"cut after the rule: {len(graph.frozen)} frozen layer(s); the cache stores {', '.join(b)} "
                      f"(freeze.mode={plain(cfg.freeze.mode)})")
    else:
        console.print("nothing frozen (freeze.up_to=null): every layer trains")
    from tlexp._report import equivalent_cuts

    if equivalent_cuts(graph):
        console.print("(= X): freezing up to that layer trains the same layers as freezing up to X (same results)")
    return arch
