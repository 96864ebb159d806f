"""Tables a person reads: the end-of-run summary and tlexp-inspect's layer table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tlexp.graph import LayerGraph, SummaryRow

__all__ = ["print_run_table", "layer_table", "human_count"]


def human_count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def print_run_table(cfg: Any, metrics: Mapping[str, Any], out_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"tlexp run: {metrics.get('name')}", show_header=True, header_style="bold")
    t.add_column("", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")  # long paths fold onto the next line, never cut to "…"
    from tlexp.config import plain

    src = plain(cfg.source)
    what = src.get("path") or src.get("name") or f"{len(src.get('layers') or [])} layers listed"
    t.add_row("source", f"{src.get('type')}: {what}")
    if src.get("type") == "zoo" and not src.get("pretrained") and not src.get("weights"):
        t.add_row("weights", "[bold red]RANDOM WEIGHTS[/]: nothing pretrained was loaded; "
                             "source.pretrained=true (download) or source.weights=FILE")
    if metrics.get("optimizer_state_loaded"):
        t.add_row("optimizer", f"state loaded from {src.get('path')} (training continues)")
        prog = metrics.get("progress") or {}
        if prog.get("continued_from"):
            was = prog["continued_from"]
            restored = prog.get("schedule_restored")
            sched = ("continued" if restored is True else restored) if restored else "none saved"
            t.add_row("continued", f"from epoch {was.get('epochs', 0)}, step {was.get('global_step', 0)}; "
                                   f"now {prog.get('epochs')} epochs, {prog.get('global_step')} steps; schedule {sched}")
    t.add_row("surgery", f"{len(cfg.surgery.ops)} op(s)" + (": " + ", ".join(str(o.get('op')) for o in cfg.surgery.ops) if cfg.surgery.ops else ""))
    frz = metrics["freeze"]
    t.add_row("frozen", f"up to {frz['up_to']!r}: {len(frz['frozen'])} layer(s)" if frz["frozen"] else "nothing")
    f = metrics["featurize"]
    mode = f["mode"]
    if f.get("key"):
        mode += f"  (cache {'hit' if f['cache_hit'] else 'built'}, key {f['key'][:12]})"
    t.add_row("mode", mode)
    t.add_row("data", f"{plain(cfg.data).get('type')}: train {metrics['samples']['train']}, val {metrics['samples']['val']}, "
                      f"test {metrics['samples']['test']}, {metrics['num_classes']} classes")
    t.add_row("epochs", str(metrics["epochs"]))
    tm = metrics["timing"]
    t.add_row("time", f"featurize {tm['featurize_s']:.2f}s · fit {tm['fit_s']:.2f}s · total {tm['total_s']:.2f}s")
    for split in ("val", "test"):
        m = metrics[split]
        parts = [f"accuracy {m['accuracy']:.4f}"]
        for k in ("f1", "auroc"):
            if k in m:
                parts.append(f"{k} {m[k]:.4f}")
        parts.append(f"loss {m['loss']:.4f}")
        t.add_row(split, " · ".join(parts))
    for name, b in (metrics.get("baseline") or {}).items():
        t.add_row(f"baseline: {name}", _versus(metrics["test"], b))
    t.add_row("saved", str(out_dir))
    console.print(t)


def _versus(test: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """A baseline's test scores and how far the run's result is above (+) or below (−) them."""
    parts = []
    for k in ("accuracy", "auroc"):
        if k in base and k in test:
            parts.append(f"{k} {base[k]:.4f} (result {test[k] - base[k]:+.4f})")
    return " · ".join(parts)


def layer_table(graph: LayerGraph, rows: Sequence[SummaryRow], title: str = "model") -> Table:
    """Index, name, type, output shape, parameters (``shares X`` for a shared layer's later use:
    its weights are X's), frozen/trainable, and the feature size a cut after that layer would
    store per sample (the boundary tensors, skip connections included)."""
    from rich import box

    # compact enough for 80 columns (a pipe, a CI log): a chain's inputs are the row above, so
    # that column is shown for graphs only; names and shapes fold rather than being cut to "…"
    chain = graph.is_chain
    t = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = [("#", "right"), ("layer", "left"), ("type", "left"), ("inputs", "left"), ("output", "left"),
            ("params", "right"), ("state", "left"), ("floats at cut", "right")]
    for col, just in cols:
        if chain and col == "inputs":
            continue
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    shapes = {r.name: r.output_shape for r in rows}
    for gi in graph.graph_inputs:
        shapes[gi.name] = (tuple(gi.shape),) if gi.shape is not None else None
    frozen = graph.frozen
    last_frozen = max((r.index for r in rows if r.frozen), default=-1)
    same_as = equivalent_cuts(graph)
    for r in rows:
        cut = graph.ancestors([r.name])
        size = 0
        for b in graph.boundary(cut):
            s = shapes.get(b)
            if s is None:
                size = None  # type: ignore[assignment]
                break
            for part in s:
                n = 1
                for d in part:
                    n *= d
                size += n
        out = " ".join(str(list(s)) for s in r.output_shape) if r.output_shape else "?"
        state = "frozen" if r.name in frozen else ("trainable" if r.params else "-")
        params = human_count(r.params)
        if r.shares is not None:  # a shared layer's later use: its weights are the earlier node's
            params = f"shares {r.shares}"
            state = "frozen" if r.frozen else ("trainable" if r.trainable else "-")
        kind = r.type
        if kind == "timm_module":  # say which timm block it is (BasicBlock, ConvNeXtBlock, …)
            kind = f"timm {type(graph.module(r.name)).__name__}"
        cut_col = human_count(size) if size is not None else "?"
        if r.name in same_as:
            cut_col += f" (= {same_as[r.name]})"
        cells = [str(r.index), r.name, kind, *([] if chain else [", ".join(r.inputs)]), out, params, state, cut_col]
        t.add_row(*cells, end_section=r.index == last_frozen)
    return t


def equivalent_cuts(graph: LayerGraph) -> dict[str, str]:
    """Cuts that train exactly what an earlier cut trains: ``{layer: earlier layer}``.

    Freezing up to a layer without parameters or train-time behaviour (a pooling, a flatten)
    leaves the same layers to train as freezing up to the layer before it: a sweep over both
    compares identical runs."""
    import torch.nn as nn

    def matters(name: str) -> bool:
        m = graph.module(name)
        if any(p.numel() for p in m.parameters()):
            return True
        return any(isinstance(x, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)) for x in m.modules())

    relevant = [n for n in graph.node_names if matters(n)]
    first: dict[frozenset[str], str] = {}
    out = {}
    for name in graph.node_names:
        cut = graph.ancestors([name])
        trains = frozenset(n for n in relevant if n not in cut)
        if trains in first:
            out[name] = first[trains]
        else:
            first[trains] = name
    return out
