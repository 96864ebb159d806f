"""Sweep throughput, side by side in one run.

(a) a 2 cuts × 3 lr digits sweep (``tlexp -m``) with Hydra's basic launcher vs
    ``hydra/launcher=gpu_pool`` with 2 slots (``--gpu``: ``jobs_per_gpu=2`` on the GPU(s),
    ``trainer=gpu``): wall time, jobs per minute, and featurizations done (passes over the
    training split: by the sweep's one-pass plan plus by jobs that missed the cache).
    Target: gpu_pool ≥ 1.7× the basic launcher's jobs per minute.
(b) a 4-cut depth sweep of timm ``resnet18`` (random weights) on a generated 64×64 image folder
    (``layer1`` … ``layer4``): featurize time with one pass for the 4 cuts vs one featurization per
    cut, and vs the deepest cut alone. Target: one pass ≤ 1.3× the deepest cut's featurization alone.

It prints figures; it asserts nothing.

    python benchmarks/sweep_throughput.py [--epochs 20] [--per-class 60] [--repeat 2] [--gpu] [--only a|b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]


def _tlexp(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "import sys; sys.argv[0] = 'tlexp'; from tlexp.cli import main; main()", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def _featurizations(sweep: Path) -> int:
    """Passes over the training split: the plan's, plus every job that featurized for itself."""
    n = 0
    plan = sweep / "featurize_plan.json"
    if plan.is_file():
        n += sum(g.get("passes", {}).get("train", 0) for g in json.loads(plan.read_text())["groups"])
    for m in sweep.glob("*/metrics.json"):
        hits = json.loads(m.read_text()).get("featurize", {}).get("hits", {})
        n += int(hits.get("train") is False)
    return n


def sweep_overrides(epochs: int, gpu: bool) -> list[tuple[str, list[str]]]:
    """(a)'s two sweeps: each launcher's name and its ``tlexp -m`` overrides (less the folders)."""
    grid = ["freeze.up_to=pool2,flatten", "finetune.lr=1e-3,3e-3,1e-2", f"trainer.max_epochs={epochs}",
            "trainer.enable_progress_bar=false", "logger=none"]
    if gpu:
        grid.append("trainer=gpu")
    pool = ["hydra/launcher=gpu_pool"] + (["hydra.launcher.jobs_per_gpu=2"] if gpu else
                                          ["hydra.launcher.slots=2", "hydra.launcher.devices=[]"])
    return [("basic", grid), ("gpu_pool (jobs_per_gpu=2)" if gpu else "gpu_pool slots=2", [*pool, *grid])]


def bench_a(work: Path, epochs: int, gpu: bool) -> list[list[str]]:
    rows = []
    base = None
    for name, args in sweep_overrides(epochs, gpu):
        sweep, cache = work / f"a_{len(rows)}", work / f"a_cache_{len(rows)}"
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        res = _tlexp(["-m", *args, f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache}"], work)
        wall = time.perf_counter() - t0
        jobs = len(list(sweep.glob("*/metrics.json")))
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
        jpm = jobs / wall * 60
        base = base or jpm
        rows.append([name, f"{wall:.1f} s", str(jobs), f"{jpm:.2f}", f"{jpm / base:.2f}×", str(_featurizations(sweep)),
                     f"{load:.1f} → {os.getloadavg()[0]:.1f}"])
    return rows


def bench_b(work: Path, per_class: int, gpu: bool, repeat: int = 2) -> list[list[str]]:
    from hydra import compose, initialize_config_dir

    import tlexp.config  # noqa: F401
    from tlexp._resources import CONF_DIR
    from tlexp.data.demo_images import write_digit_images
    from tlexp.featurize import featurize, featurize_cuts
    from tlexp.freeze import resolve_cut
    from tlexp.train import prepare

    images = work / "imgs"
    write_digit_images(images, size=64, per_class=per_class)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            "experiment=none", "source=zoo", "source.name=resnet18", "source.input_size=[3,64,64]",
            "data=image_folder", f"data.path={images}", "surgery=replace_output", "freeze.up_to=layer4",
            f"paths.cache_dir={work / 'unused'}", "paths.output_dir=.",
        ])
    p = prepare(cfg)
    graph, data = p.graph, p.data
    device = "cuda" if gpu else "cpu"
    cuts = [resolve_cut(graph, name) for name in ("layer1", "layer2", "layer3", "layer4")]
    n = sum(len(data.dataset(s)) for s in ("train", "val"))

    # warm-up (allocator, kernels) on a throwaway cache, then each way on a fresh cache; the rounds
    # alternate the ways and each way keeps its best time (a shared, loaded machine adds noise)
    graph.set_frozen(cuts[0])
    featurize(graph.split(cuts[0])[0], graph.boundary(cuts[0]), data, work / "b_warm", device=device)
    one = float("inf")
    alone = [float("inf")] * len(cuts)
    rounds = []
    for r in range(repeat):
        t0 = time.perf_counter()
        featurize_cuts(graph, cuts, data, work / f"b_one_{r}", device=device)
        this_one = time.perf_counter() - t0
        one = min(one, this_one)
        for i, cut in reversed(list(enumerate(cuts))):
            graph.set_frozen(cut)
            prefix, _ = graph.split(cut)
            t0 = time.perf_counter()
            featurize(prefix, graph.boundary(cut), data, work / f"b_alone_{r}_{i}", device=device)
            took = time.perf_counter() - t0
            alone[i] = min(alone[i], took)
            if i == len(cuts) - 1:
                rounds.append(f"{this_one:.2f}/{took:.2f} s = {this_one / took:.2f}× (load {os.getloadavg()[0]:.1f})")
    print("(b) each round, one pass / deepest alone: " + "; ".join(rounds))
    deepest = alone[-1]
    return [
        ["one pass, 4 cuts", f"{one:.2f} s", f"{one / deepest:.2f}×", "1 per split"],
        ["one featurization per cut (4)", f"{sum(alone):.2f} s", f"{sum(alone) / deepest:.2f}×", "4 per split"],
        ["deepest cut (layer4) alone", f"{deepest:.2f} s", "1.00×", "1 per split"],
        [f"({n} images, best of {repeat} rounds; cuts: layer1 {alone[0]:.2f} s, layer2 {alone[1]:.2f} s, "
         f"layer3 {alone[2]:.2f} s)", "", "", ""],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20, help="epochs per job in (a)")
    ap.add_argument("--per-class", type=int, default=60, help="images per class in (b)")
    ap.add_argument("--gpu", action="store_true", help="(a) gpu_pool jobs_per_gpu=2 with trainer=gpu; (b) on cuda")
    ap.add_argument("--only", choices=("a", "b"), default=None)
    ap.add_argument("--repeat", type=int, default=2, help="(b): rounds, each way's best time kept")
    args = ap.parse_args()
    console = Console()
    console.print(f"cores: {os.cpu_count()}, gpu: {args.gpu}, load average: "
                  + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "a"):
            t = Table(title=f"(a) 2 cuts × 3 lr digits sweep, {args.epochs} epochs per job")
            for c in ("launcher", "wall", "jobs", "jobs/min", "vs basic", "featurizations (train passes)",
                      "load avg (1 min) before → after"):
                t.add_column(c)
            for row in bench_a(work, args.epochs, args.gpu):
                t.add_row(*row)
            console.print(t)
        if args.only in (None, "b"):
            t = Table(title="(b) resnet18 depth sweep, 64×64 image folder: featurize time")
            for c in ("how", "featurize", "vs deepest alone", "passes over the data"):
                t.add_column(c)
            for row in bench_b(work, args.per_class, args.gpu, max(1, args.repeat)):
                t.add_row(*row)
            console.print(t)
    console.print("load average at the end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
