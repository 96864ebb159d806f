"""``tlexp-report SWEEP_DIR``: the answer of a sweep, from its job folders.

Reads every job's ``.hydra/overrides.yaml``, ``metrics.json`` and status (``metrics.json``
``status``; a job without metrics, or with ``error.txt``, failed; the gpu_pool summary where
there is one), prints a table, writes ``report.csv``, ``report.md`` and ``report.png`` (the metric
against freeze depth in network order, one line per value of the other swept parameters, error
bars over swept seeds) and names the best run by the validation metric, never by test.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tlexp.errors import ConfigError

__all__ = ["JobRow", "SweepReport", "load_sweep", "write_report", "print_sweep_report"]

#: override keys that say where things go, not what was run
_IGNORED_KEYS = ("hydra.", "paths.", "print_table", "trainer.enable_progress_bar", "logger")
#: the x axis of the plot when it was swept
DEPTH_KEY = "freeze.up_to"
SEED_KEY = "seed"


@dataclass
class JobRow:
    dir: Path
    num: int
    overrides: dict[str, str]
    metrics: dict[str, Any] | None
    status: str
    error: str | None = None

    def value(self, path: str) -> Any:
        node: Any = self.metrics or {}
        for part in path.split("/"):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


@dataclass
class SweepReport:
    sweep_dir: Path
    rows: list[JobRow]
    swept: list[str]
    metric: str
    best: JobRow | None
    baselines: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[JobRow]:
        return [r for r in self.rows if r.status != "completed"]


def _parse_overrides(path: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    items = OmegaConf.to_container(OmegaConf.load(path)) or []
    out: dict[str, str] = {}
    for item in items:  # type: ignore[union-attr]
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~")
        if not any(key == k or key.startswith(k) for k in _IGNORED_KEYS):
            out[key] = value
    return out


def _job_num(d: Path) -> int:
    head = d.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 10**9


def _pool_status(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    path = sweep_dir / "gpu_pool.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {str(Path(j["dir"]).resolve()): j for j in summary.get("jobs", []) if "dir" in j}


def load_sweep(sweep_dir: str | Path, metric: str | None = None) -> SweepReport:
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise ConfigError(f"tlexp-report: {sweep} is not a folder; give the sweep folder (hydra.sweep.dir)")
    job_dirs = sorted({p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")}, key=lambda d: (_job_num(d), d.name))
    if not job_dirs:
        raise ConfigError(f"tlexp-report: {sweep} holds no job folders (*/.hydra/overrides.yaml); give the sweep folder")
    pool = _pool_status(sweep)
    rows = []
    for d in job_dirs:
        metrics = None
        mpath = d / "metrics.json"
        if mpath.is_file():
            try:
                metrics = json.loads(mpath.read_text())
            except json.JSONDecodeError:
                metrics = None
        job = pool.get(str(d.resolve()), {})
        if metrics and metrics.get("status"):
            status = str(metrics["status"])
        elif metrics and "val" in metrics:
            status = "completed"
        else:
            status = "failed"
        if job.get("status") in ("failed", "interrupted", "not started"):
            status = job["status"]  # the process's end outranks what it wrote before
        error = None
        if (d / "error.txt").is_file():
            lines = [ln for ln in (d / "error.txt").read_text(errors="replace").splitlines() if ln.strip()]
            error = lines[-1].strip() if lines else None
        error = error or job.get("error_line")
        rows.append(JobRow(d, _job_num(d), _parse_overrides(d / ".hydra" / "overrides.yaml"), metrics, status, error))
    keys = sorted({k for r in rows for k in r.overrides})
    swept = [k for k in keys if len({r.overrides.get(k) for r in rows}) > 1]
    # keys set the same way in every job but named on the sweep's command line still describe it
    swept += [k for k in keys if k not in swept and k == DEPTH_KEY]
    done = [r for r in rows if r.status == "completed" and r.metrics]
    if metric is None:
        metric = "auroc" if done and all(r.value("val/auroc") is not None for r in done) else "accuracy"
    elif done and all(r.value(f"val/{metric}") is None for r in done):
        names = sorted({k for r in done for k in ((r.metrics or {}).get("val") or {})})
        raise ConfigError(f"--metric: {metric!r} is not in the runs' metrics; valid: {', '.join(names)}")
    lower = "loss" in metric
    scored = [r for r in done if isinstance(r.value(f"val/{metric}"), (int, float))]
    best = (min if lower else max)(scored, key=lambda r: r.value(f"val/{metric}")) if scored else None
    baselines = sorted({b for r in done for b in ((r.metrics or {}).get("baseline") or {})})
    return SweepReport(sweep, rows, swept, metric, best, baselines)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, str) and len(v) > 8:
        try:  # a searched value (0.017648992258182564) reads better short; the CSV keeps it whole
            return f"{float(v):.4g}" if digits <= 4 else v
        except ValueError:
            pass
    return str(v)


def _columns(rep: SweepReport) -> list[tuple[str, Any]]:
    m = rep.metric
    cols: list[tuple[str, Any]] = [("job", lambda r: r.num if r.num < 10**9 else r.dir.name)]
    cols += [(k, (lambda k: lambda r: r.overrides.get(k))(k)) for k in rep.swept]  # noqa: B023 (bound by the outer lambda)
    cols += [(f"val/{m}", lambda r: r.value(f"val/{m}")), (f"test/{m}", lambda r: r.value(f"test/{m}"))]
    for b in rep.baselines:
        cols.append((f"{b}/{m}", (lambda b: lambda r: r.value(f"baseline/{b}/{m}"))(b)))  # noqa: B023 (bound by the outer lambda)
    cols += [
        ("featurize_s", lambda r: r.value("timing/featurize_s")),
        ("fit_s", lambda r: r.value("timing/fit_s")),
        ("cache hit", lambda r: r.value("featurize/cache_hit")),
        ("status", lambda r: r.status if r.status == "completed" or not r.error else f"{r.status}: {r.error}"),
    ]
    return cols


def _table_rows(rep: SweepReport) -> tuple[list[str], list[list[Any]]]:
    cols = _columns(rep)
    return [c for c, _ in cols], [[f(r) for _, f in cols] for r in rep.rows]


def _best_line(rep: SweepReport) -> str:
    if rep.best is None:
        return "best run: none (no job completed)"
    b = rep.best
    what = " ".join(f"{k}={b.overrides.get(k)}" for k in rep.swept) or b.dir.name
    return (f"best run by val/{rep.metric}: job {b.num} ({what}) val/{rep.metric} {_fmt(b.value(f'val/{rep.metric}'))}, "
            f"test/{rep.metric} {_fmt(b.value(f'test/{rep.metric}'))} — {b.dir}")


def _depth_order(rep: SweepReport, key: str) -> list[str]:
    """The swept values of ``key``; for freeze depth, in network order (fewest frozen nodes first)."""
    values = {r.overrides.get(key) for r in rep.rows if r.overrides.get(key) is not None}
    if key == DEPTH_KEY:
        size: dict[str, float] = {}
        for r in rep.rows:
            frozen = r.value("freeze/frozen")
            v = r.overrides.get(key)
            if v is not None and isinstance(frozen, list):
                size[v] = len(frozen)
        return sorted(values, key=lambda v: (size.get(v, math.inf), str(v)))
    def num(v: str) -> tuple[int, float | str]:
        try:
            return (0, float(v))
        except ValueError:
            return (1, v)
    return sorted(values, key=num)


def _plot(rep: SweepReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = f"val/{rep.metric}"
    x_key = DEPTH_KEY if DEPTH_KEY in rep.swept else (next((k for k in rep.swept if k != SEED_KEY), None))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [r for r in rep.rows if r.status == "completed" and isinstance(r.value(m), (int, float))]
    if x_key is None or not done:
        ax.text(0.5, 0.5, "no completed jobs with a swept parameter", ha="center", va="center")
    else:
        xs = _depth_order(rep, x_key)
        others = [k for k in rep.swept if k not in (x_key, SEED_KEY)]
        lines: dict[tuple[str | None, ...], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in done:
            lines[tuple(r.overrides.get(k) for k in others)][r.overrides.get(x_key)].append(float(r.value(m)))
        for label, points in sorted(lines.items(), key=lambda kv: str(kv[0])):
            at = [i for i, x in enumerate(xs) if x in points]
            means = [sum(points[xs[i]]) / len(points[xs[i]]) for i in at]
            errs = [_std(points[xs[i]]) for i in at]
            name = ", ".join(f"{k}={v}" for k, v in zip(others, label)) or m
            ax.errorbar(at, means, yerr=errs if any(errs) else None, marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(xs, rotation=30, ha="right")
        ax.set_xlabel(x_key + (" (network order)" if x_key == DEPTH_KEY else ""))
        ax.legend(fontsize="small")
    ax.set_ylabel(m + (" (mean ± std over seeds)" if SEED_KEY in rep.swept else ""))
    ax.set_title(f"{rep.sweep_dir.name}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def write_report(rep: SweepReport, out_dir: Path | None = None) -> dict[str, Path]:
    out = Path(out_dir or rep.sweep_dir)
    header, rows = _table_rows(rep)
    paths = {"csv": out / "report.csv", "md": out / "report.md", "png": out / "report.png"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*header, "dir"])
        for row, r in zip(rows, rep.rows):
            w.writerow([_fmt(v, 6) for v in row] + [str(r.dir)])
    md = [f"# Sweep report: {rep.sweep_dir}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    md += ["", _best_line(rep), "", f"![val/{rep.metric}](report.png)", ""]
    paths["md"].write_text("\n".join(md))
    _plot(rep, paths["png"])
    return paths


def render_table(rep: SweepReport) -> Table:
    from rich import box

    header, rows = _table_rows(rep)
    # compact enough for 80 columns (a pipe, a CI log): the metric is named once in the title,
    # numbers never wrap; swept values and errors fold rather than being cut to "…"
    table = Table(title=f"sweep: {rep.sweep_dir.name} ({len(rep.rows)} jobs, {len(rep.failed)} failed) · {rep.metric}",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), show_edge=False)
    short = {"featurize_s": "feat s", "fit_s": "fit s", "cache hit": "hit"}
    for h in header:
        # the files keep full names
        name = h.rsplit(".", 1)[-1] if h in rep.swept else short.get(h, h.removesuffix(f"/{rep.metric}"))
        if h in rep.swept or h == "status":
            widest = max([len(name), *(len(_fmt(row[header.index(h)])) for row in rows)])
            table.add_column(name, justify="left" if h == "status" else "right", overflow="fold",
                             min_width=min(widest, 12 if h in rep.swept else 9))
        else:
            table.add_column(name, justify="right", no_wrap=True)
    seconds = {i for i, h in enumerate(header) if h in ("featurize_s", "fit_s")}
    for row, r in zip(rows, rep.rows):
        style = "bold green" if r is rep.best else ("red" if r.status != "completed" else None)
        table.add_row(*[_fmt(v, 1) if i in seconds and isinstance(v, float) else _fmt(v) for i, v in enumerate(row)],
                      style=style)
    return table


def print_sweep_report(sweep_dir: str | Path, metric: str | None = None, console: Console | None = None,
                       write: bool = True) -> SweepReport:
    rep = load_sweep(sweep_dir, metric)
    if console is None:
        console = Console()
        if not console.is_terminal and not os.environ.get("COLUMNS"):  # a log file or a pipe: room for the columns
            console = Console(width=140)
    console.print(render_table(rep))
    console.print(_best_line(rep))
    if write:
        paths = write_report(rep)
        console.print(f"report: {paths['csv']}, {paths['md'].name}, {paths['png'].name}")
    return rep
