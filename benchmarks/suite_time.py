"""How long the test suite takes, against the brief's targets: the fast loop
(``pytest -m "not slow"``) under 90 s, the whole suite (what CI runs) well under 15 min on 2 cores.

Each part runs once in its own pytest process. It prints the wall time, the CPU time of pytest and
every process it waited for (user + system: on a shared machine the wall time grows with the load,
the CPU time much less, so it is the figure to compare between runs), the load average before and
after, the target, and the slowest tests (``--durations``). It asserts nothing.

    python benchmarks/suite_time.py                 # the fast loop, then the slow tests
    python benchmarks/suite_time.py --only fast     # or: slow
    python benchmarks/suite_time.py --only slow tests/test_cli.py tests/test_user_errors.py
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: part -> (pytest marker expression, target in seconds or None)
PARTS = {"fast": ("not slow", 90.0), "slow": ("slow", None)}


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_part(marker: str, paths: list[str], durations: int) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, pytest's last lines) of one pytest run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, f"--durations={durations}", *paths]
    cpu, wall = _cpu_of_children(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall, _cpu_of_children() - cpu
    lines = done.stdout.strip().splitlines()
    slowest = [ln for ln in lines if ln.split("s ", 1)[0].replace(".", "").isdigit()]
    return wall, cpu, "\n".join([*slowest, lines[-1] if lines else done.stderr.strip()[-500:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(PARTS), help="one part (default: fast, then slow)")
    parser.add_argument("--durations", type=int, default=10, help="how many of the slowest tests to list")
    parser.add_argument("paths", nargs="*", help="test files or folders (default: the whole tests/)")
    args = parser.parse_args()
    parts = [args.only] if args.only else list(PARTS)
    total_wall = total_cpu = 0.0
    for part in parts:
        marker, target = PARTS[part]
        before = os.getloadavg()[0]
        wall, cpu, tail = run_part(marker, args.paths, args.durations)
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        aim = f"target < {target:.0f} s" if target else ""
        print(f"-m {marker!r}: {wall:7.1f} s wall, {cpu:7.1f} s CPU   {aim}   "
              f"(load average {before:.1f} before, {os.getloadavg()[0]:.1f} after)")
        print("    " + tail.replace("\n", "\n    "))
    if len(parts) > 1:
        print(f"the whole suite: {total_wall:7.1f} s wall ({total_wall / 60:.1f} min), {total_cpu:7.1f} s CPU   "
              f"target well under 900 s on 2 cores ({os.cpu_count()} here)")


if __name__ == "__main__":
    main()
