"""How fast tlexp starts, against importing torch alone.

Each command runs in a fresh interpreter, ``--repeat`` times (best time kept, so a busy machine
disturbs the figures less):

- ``python -c "import torch"``: the floor every tlexp command pays;
- ``tlexp-inspect`` on the default experiment (target: at most 1.3× the floor; it imports
  neither Lightning nor timm);
- the imports of a run (``tlexp.cli`` and ``tlexp.train``: torch, Lightning, torchmetrics …);
- ``tlexp trainer.max_epochs=1`` on the default experiment, cache warm (target: at most 1 s
  beyond its imports plus the one epoch it trains), and how much of that is the run itself
  (``metrics.json``'s ``timing``: preparing, featurizing, training, evaluating, saving) rather
  than Hydra's composition and run folder.

It prints the times and ratios; it asserts nothing.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        run_args = [f"hydra.run.dir={tmp}/run", f"paths.cache_dir={tmp}/cache", "trainer.max_epochs=1",
                    "logger=none", "callbacks=none"]
        torch_s = _best([py, "-c", "import torch"], args.repeat, tmp)
        inspect_s = _best([py, "-c", "from tlexp.cli import inspect_main; inspect_main()"], args.repeat, tmp)
        imports_s = _best([py, "-c", "import tlexp.cli, tlexp.train"], args.repeat, tmp)
        _best([py, "-c", "from tlexp.cli import main; main()", *run_args], 1, tmp)  # fills the cache
        # the run also times itself from the end of its imports: a difference of two whole-process
        # times carries both processes' noise (seconds, on a busy machine)
        marks = Path(tmp, "after_imports.txt")
        timed = ("import time\nimport tlexp.cli, tlexp.train\nt = time.perf_counter()\ntry:\n    tlexp.cli.main()\n"
                 f"finally:\n    open({str(marks)!r}, 'a').write(f'{{time.perf_counter() - t}}\\n')\n")
        run_s = _best([py, "-c", timed, *run_args], args.repeat, tmp)
        after_imports = min(float(v) for v in marks.read_text().split())
        timing = json.loads(Path(tmp, "run", "metrics.json").read_text())["timing"]  # the last repeat's
    floor = 'python -c "import torch"'
    print(f"{floor:<44} {torch_s:6.2f} s")
    print(f"{'tlexp-inspect (default experiment)':<44} {inspect_s:6.2f} s   {inspect_s / torch_s:4.2f}× torch (target ≤ 1.30×)")
    print(f"{'imports of a run (tlexp.cli, tlexp.train)':<44} {imports_s:6.2f} s   {imports_s / torch_s:4.2f}× torch")
    print(f"{'tlexp trainer.max_epochs=1 (cache warm)':<44} {run_s:6.2f} s   "
          f"{run_s - imports_s:+.2f} s beyond its imports (target ≤ 1 s + the epoch)")
    print(f"{'  measured inside the process':<44} {after_imports:6.2f} s   after its imports (target ≤ 1 s + the epoch)")
    # the rest is Hydra's (composition, run folder, .hydra/) and the CLI's
    print(f"{'  of which the run itself (timing.total_s)':<44} {timing['total_s']:6.2f} s   "
          f"training {timing['fit_s']:.2f} s, featurize {timing['featurize_s']:.2f} s")


if __name__ == "__main__":
    main()
