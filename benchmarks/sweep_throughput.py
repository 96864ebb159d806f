"""Sweep throughput, side by side in one run.

(a) a 2 cuts × 3 lr digits sweep (``tlexp -m``) with Hydra's basic launcher vs
    ``hydra/launcher=gpu_pool`` with 2 slots (``--gpu``: ``jobs_per_gpu=2`` on the GPU(s),
    ``trainer=gpu``). Both launchers run the same sweep. For each: the whole sweep's wall time and
    jobs per minute; the jobs phase (first job's ``timing.started_at`` → last job's
    ``timing.finished_at``, from their ``metrics.json``) and its jobs per minute; and the fixed part
    around it (process start → first job, last job → process end: imports, composing, the
    featurize plan, the report); and featurizations done (passes over the training split: by the
    sweep's one-pass plan plus by jobs that missed the cache).
    Target: gpu_pool ≥ 1.7× the basic launcher's jobs per minute over the whole sweep.

    Job size: both launchers pay the same ~10 s of start-up and report whatever the jobs are, so
    with jobs of a second or less (the recipe's 100 training images, 20 epochs) the whole-sweep
    ratio says little about the launcher — it is mostly the fixed part. A real sweep's jobs take
    minutes. The default job is the digits transfer on every training image of 5–9
    (``data.max_per_class=null``) for ``--epochs`` (200) epochs without early stopping
    (``~callbacks.early_stopping``, so every job does the same work): several seconds a job on 2
    quiet cores (12.7 s at 150 epochs on 2 cores at load average 4), so the jobs phase is most of
    the sweep. The whole-sweep ratio tends to the jobs phase's as jobs grow; ``--epochs 20
    --per-class-train 20`` is the recipe's own sub-second job, where the fixed part dominates.
(b) a 4-cut depth sweep of timm ``resnet18`` (random weights) on a generated 64×64 image folder
    (``layer1`` … ``layer4``): featurize time with one pass for the 4 cuts vs one featurization per
    cut, and vs the deepest cut alone. Target: one pass ≤ 1.3× the deepest cut's featurization alone.

It prints figures and the load average (other processes on the machine skew the ratios: parallel
jobs also win a larger share of a busy CPU); it asserts nothing.

    python benchmarks/sweep_throughput.py [--epochs 200] [--per-class-train N] [--per-class 60] [--repeat 2] [--gpu] [--only a|b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]


def _tlexp(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "import sys; sys.argv[0] = 'tlexp'; from tlexp.cli import main; main()", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore", **(extra_env or {})}
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


def sweep_overrides(epochs: int, gpu: bool, per_class_train: int | None = None) -> list[tuple[str, list[str]]]:
    """(a)'s two sweeps: each launcher's name and its ``tlexp -m`` overrides (less the folders)."""
    grid = ["freeze.up_to=pool2,flatten", "finetune.lr=1e-3,3e-3,1e-2", f"trainer.max_epochs={epochs}",
            "~callbacks.early_stopping", "data.max_per_class=" + ("null" if per_class_train is None else str(per_class_train)),
            "trainer.enable_progress_bar=false", "logger=none"]
    if gpu:
        grid.append("trainer=gpu")
    pool = ["hydra/launcher=gpu_pool"] + (["hydra.launcher.jobs_per_gpu=2"] if gpu else
                                          ["hydra.launcher.slots=2", "hydra.launcher.devices=[]"])
    return [("basic", grid), ("gpu_pool (jobs_per_gpu=2)" if gpu else "gpu_pool slots=2", [*pool, *grid])]


def _ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def sweep_times(sweep: Path, t_start: float, t_end: float) -> dict[str, float]:
    """The jobs phase of a finished sweep (first job's start → last job's end, from each job's
    metrics.json) and the fixed parts around it (process start → first job, last job → end)."""
    timings = [json.loads(m.read_text()).get("timing", {}) for m in sweep.glob("*/metrics.json")]
    starts = [_ts(t["started_at"]) for t in timings if t.get("started_at")]
    ends = [_ts(t["finished_at"]) for t in timings if t.get("finished_at")]
    if not starts or not ends:
        return {}
    first, last = min(starts), max(ends)
    return {"phase": last - first, "before": first - t_start, "after": t_end - last}


def bench_a(work: Path, epochs: int, gpu: bool, per_class_train: int | None) -> list[list[str]]:
    rows = []
    base: dict[str, float] = {}
    runs: list[tuple[str, list[str], dict[str, str]]] = [(name, args, {}) for name, args in
                                                        sweep_overrides(epochs, gpu, per_class_train)]
    if not gpu:
        # The pool gives each of its 2 jobs cores / 2 = 1 torch thread; the basic launcher's one job
        # at a time uses both cores. On these small layers one thread is faster than two, so a
        # third row runs the basic launcher at 1 thread too: pool vs that row is what running jobs
        # side by side alone buys.
        basic_name, basic_args = sweep_overrides(epochs, gpu, per_class_train)[0]
        runs.append((f"{basic_name}, 1 torch thread", basic_args, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}))
    for name, args, extra_env in runs:
        sweep, cache = work / f"a_{len(rows)}", work / f"a_cache_{len(rows)}"
        load = os.getloadavg()[0]
        t_start, t0 = time.time(), time.perf_counter()
        res = _tlexp(["-m", *args, f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache}"], work, extra_env)
        wall = time.perf_counter() - t0
        t_end = t_start + wall
        jobs = len([m for m in sweep.glob("*/metrics.json") if json.loads(m.read_text()).get("status") == "completed"])
        if res.returncode != 0:
            print(res.stderr[-2000:], file=sys.stderr)
        times = sweep_times(sweep, t_start, t_end)
        jpm = jobs / wall * 60
        phase = times.get("phase", float("nan"))
        jpm_phase = jobs / phase * 60 if phase > 0 else float("nan")
        base = base or {"jpm": jpm, "phase": jpm_phase}
        rows.append([name, f"{wall:.1f} s", str(jobs), f"{jpm:.2f}", f"{jpm / base['jpm']:.2f}×",
                     f"{phase:.1f} s", f"{jpm_phase:.2f}", f"{jpm_phase / base['phase']:.2f}×",
                     f"{times.get('before', float('nan')):.1f} s + {times.get('after', float('nan')):.1f} s",
                     str(_featurizations(sweep)), f"{load:.1f} → {os.getloadavg()[0]:.1f}"])
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
    ap.add_argument("--epochs", type=int, default=200, help="epochs per job in (a)")
    ap.add_argument("--per-class-train", type=int, default=None,
                    help="(a): training images per class (data.max_per_class; default: all of them)")
    ap.add_argument("--per-class", type=int, default=60, help="images per class in (b)")
    ap.add_argument("--gpu", action="store_true", help="(a) gpu_pool jobs_per_gpu=2 with trainer=gpu; (b) on cuda")
    ap.add_argument("--only", choices=("a", "b"), default=None)
    ap.add_argument("--repeat", type=int, default=2, help="(b): rounds, each way's best time kept")
    args = ap.parse_args()
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: room for the columns
        console = Console(width=200)
    console.print(f"cores: {os.cpu_count()}, gpu: {args.gpu}, load average: "
                  + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "a"):
            size = "all" if args.per_class_train is None else str(args.per_class_train)
            t = Table(title=f"(a) 2 cuts × 3 lr digits sweep, {args.epochs} epochs per job, {size} training "
                            "images per class, same sweep for both launchers")
            for c in ("launcher", "whole sweep", "jobs", "jobs/min", "vs basic", "jobs phase", "jobs/min (phase)",
                      "vs basic (phase)", "fixed: before first job + after last", "train passes",
                      "load avg before → after"):
                t.add_column(c)
            for row in bench_a(work, args.epochs, args.gpu, args.per_class_train):
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
