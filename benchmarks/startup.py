"""How fast tlexp starts, against importing torch alone.

Each command runs in a fresh interpreter, ``--repeat`` times (best time kept, so a busy machine
disturbs the figures less):

- ``python -c "import torch"``: the floor every tlexp command pays;
- ``tlexp-inspect`` on the default experiment (target: at most 1.3× the floor; it imports
  neither Lightning nor timm);
- the imports of a run (``tlexp.cli`` and ``tlexp.train``: torch, Lightning, torchmetrics …);
- ``tlexp trainer.max_epochs=1`` on the default experiment, cache warm (target: at most 1 s
  beyond its imports plus the one epoch it trains), timed inside the process from the end of its
  imports, beside its target (1 s + that run's ``timing.fit_s``), and how much of that is the run
  itself (``metrics.json``'s ``timing``: preparing, featurizing, training, evaluating, saving)
  rather than Hydra's plugin scan, composition and run folder.

It prints the times, ratios and the load average (the figures are only as quiet as the machine);
it asserts nothing.

    python benchmarks/startup.py [--repeat 3]
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

ROOT = Path(__file__).resolve().parent.parent


def _best(cmd: list[str], repeat: int, cwd: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def _timed_runs(py: str, run_args: list[str], repeat: int, tmp: str) -> list[tuple[float, float, dict]]:
    """(wall s, s after its imports, metrics.json timing) of each of ``repeat`` runs. The run times
    itself from the end of its imports (perf_counter in the process): a difference of two
    whole-process times carries both processes' noise (seconds, on a busy machine)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = []
    for i in range(repeat):
        mark = Path(tmp, f"after_imports_{i}.txt")
        run_dir = Path(tmp, f"run{i}")
        # main() at the program's top level, as in the console script: it ends the process when
        # done (exit handlers run, Python's finalization skipped), so the mark is an exit handler
        code = ("import atexit, time\nimport tlexp.cli, tlexp.train\nt = time.perf_counter()\n"
                f"atexit.register(lambda: open({str(mark)!r}, 'w').write(f'{{time.perf_counter() - t}}'))\n"
                "tlexp.cli.main()\n")
        t = time.perf_counter()
        subprocess.run([py, "-c", code, *run_args, f"hydra.run.dir={run_dir}"], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        out.append((wall, float(mark.read_text()), json.loads((run_dir / "metrics.json").read_text())["timing"]))
    return out


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        # the default experiment as a user runs it (its CSV logger, checkpoint, early stopping and
        # progress bar included), for one epoch; only the run and cache folders are placed here
        run_args = [f"paths.cache_dir={tmp}/cache", "trainer.max_epochs=1"]
        torch_s = _best([py, "-c", "import torch"], args.repeat, tmp)
        inspect_s = _best([py, "-c", "from tlexp.cli import inspect_main; inspect_main()"], args.repeat, tmp)
        # ending as a run's process ends (without Python's finalization: tlexp's main skips it),
        # so that the run's whole-process time minus this one is what the run adds
        imports_s = _best([py, "-c", "import os, tlexp.cli, tlexp.train; os._exit(0)"], args.repeat, tmp)
        _best([py, "-c", "from tlexp.cli import main; main()", *run_args, f"hydra.run.dir={tmp}/warm"], 1, tmp)  # fills the cache
        runs = _timed_runs(py, run_args, args.repeat, tmp)
    run_s = min(wall for wall, _, _ in runs)
    # the repeat with the least start-up beyond its epoch, with that run's own training time
    _, after_imports, timing = min(runs, key=lambda r: r[1] - r[2]["fit_s"])
    target = 1.0 + timing["fit_s"]
    floor = 'python -c "import torch"'
    print(f"load average (1, 5, 15 min): {load_before} before, {_load()} after; best of {args.repeat}")
    print(f"{floor:<44} {torch_s:6.2f} s")
    print(f"{'tlexp-inspect (default experiment)':<44} {inspect_s:6.2f} s   {inspect_s / torch_s:4.2f}× torch (target ≤ 1.30×)")
    print(f"{'imports of a run (tlexp.cli, tlexp.train)':<44} {imports_s:6.2f} s   {imports_s / torch_s:4.2f}× torch")
    print(f"{'tlexp trainer.max_epochs=1 (cache warm)':<44} {run_s:6.2f} s   "
          f"{run_s - imports_s:+.2f} s beyond its imports (whole processes: noisy)")
    print(f"{'  after its imports, inside the process':<44} {after_imports:6.2f} s   target ≤ 1 s + the epoch "
          f"({timing['fit_s']:.2f} s) = {target:.2f} s: {'met' if after_imports <= target else 'NOT met'}")
    # the rest is Hydra's (plugin scan, composition, run folder, .hydra/) and the CLI's
    print(f"{'  of which the run itself (timing.total_s)':<44} {timing['total_s']:6.2f} s   "
          f"training {timing['fit_s']:.2f} s, featurize {timing['featurize_s']:.2f} s; "
          f"Hydra and the CLI {after_imports - timing['total_s']:.2f} s")


if __name__ == "__main__":
    main()
