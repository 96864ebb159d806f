"""What featurizing the frozen prefix buys, and what Lightning costs over a hand-written loop.

For 1, 5 and 20 epochs of one experiment (default: the shipped digits_transfer) it runs
``freeze.mode=in_model`` and ``freeze.mode=featurize`` (cache cold for the first featurize run
of each epoch count, so the featurize time is paid every time) side by side, then trains the same
head on the same cached tensors with a plain PyTorch loop (same optimizer, batch size, batch order,
validation pass per epoch). It prints wall times and ratios; it asserts nothing.

    python benchmarks/featurize_speedup.py [--experiment churn_transfer] [--epochs 1 5 20] [overrides…]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

import tlexp.config  # noqa: F401
from tlexp import finetune as ft
from tlexp._resources import CONF_DIR
from tlexp.data._sampler import SeededBatchSampler
from tlexp.featurize import featurize
from tlexp.featurize._sampling import TensorBatches
from tlexp.module import log_probs, output_kind
from tlexp.train import prepare, run


def _compose(overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def hand_loop(cfg, cache_dir: Path, epochs: int) -> tuple[float, float]:
    """The limit: the head trained on the cached tensors by a plain loop. Returns (seconds, val acc)."""
    prepared = prepare(cfg)
    graph = prepared.graph
    prefix, suffix = graph.split(prepared.cut)
    result = featurize(prefix, graph.boundary(prepared.cut), prepared.data, cache_dir)  # a cache hit
    train = TensorBatches.from_file(result.files["train"], torch.device("cpu"))
    val = TensorBatches.from_file(result.files["val"], torch.device("cpu"))
    settings = ft.parse_finetune(prepared.finetune)
    kind = output_kind(suffix)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    optimizer = ft.build_optimizer(suffix, settings)
    train_order = SeededBatchSampler(train.n, prepared.data.batch_size, shuffle=True, seed=cfg.seed)
    val_order = SeededBatchSampler(val.n, prepared.data.batch_size, shuffle=False, seed=cfg.seed)
    acc = 0.0
    for _ in range(epochs):
        suffix.train()
        for idx in train_order:
            xs, y = train[idx]
            loss = F.nll_loss(log_probs(suffix(*xs), kind), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        suffix.eval()
        correct = 0
        with torch.no_grad():
            for idx in val_order:
                xs, y = val[idx]
                correct += int((suffix(*xs).argmax(-1) == y).sum())
        acc = correct / val.n
    return time.perf_counter() - start, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="digits_transfer")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 20])
    args, overrides = parser.parse_known_args()
    console = Console(width=150)
    table = Table(title=f"featurize vs in_model vs hand-written loop: {args.experiment} "
                        f"({torch.get_num_threads()} threads, {os.cpu_count()} cores)")
    for col in ("epochs", "in_model total s", "featurize total s", "speedup", "featurize s (once)",
                "fit s (featurized)", "hand loop s", "fit / hand", "in_model fit s"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in args.epochs:
            times = {}
            for mode in ("in_model", "featurize"):
                cache = Path(tmp) / f"cache-{epochs}"
                cfg = _compose([f"experiment={args.experiment}", f"freeze.mode={mode}", f"trainer.max_epochs={epochs}",
                                f"paths.output_dir={tmp}/{mode}-{epochs}", f"paths.cache_dir={cache}",
                                "trainer.enable_progress_bar=false", "logger=none", "print_table=false", *overrides])
                t = time.perf_counter()
                metrics = run(cfg)
                times[mode] = (time.perf_counter() - t, metrics)
            hand_s, _ = hand_loop(cfg, Path(tmp) / f"cache-{epochs}", epochs)
            (im_s, im), (fz_s, fz) = times["in_model"], times["featurize"]
            table.add_row(str(epochs), f"{im_s:.2f}", f"{fz_s:.2f}", f"{im_s / fz_s:.2f}×",
                          f"{fz['timing']['featurize_s']:.2f}", f"{fz['timing']['fit_s']:.2f}", f"{hand_s:.2f}",
                          f"{fz['timing']['fit_s'] / hand_s:.2f}×", f"{im['timing']['fit_s']:.2f}")
            Console(stderr=True).print(f"[dim]{epochs} epoch(s) done[/dim]")
    console.print(table)


if __name__ == "__main__":
    main()
