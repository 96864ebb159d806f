"""The sweep's Hydra callback (``hydra.callbacks.tlexp``, on by default).

``on_multirun_start``: the featurize plan — every featurization the grid's jobs need, nested
cuts in one pass per split — before any job starts, under every launcher (it runs in the
process that launches). ``on_job_end``: a job that failed in this process (Hydra's basic
launcher runs every job here, one after another) is recorded — its error in ``error.txt`` in its
folder and one ``tlexp: error:`` line — and the sweep goes on; :func:`failed_jobs` is what the CLI
turns into the sweep's exit status. ``on_multirun_end``: the sweep report table and files.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: a failed job's error, in its own folder (as gpu_pool writes it)
JOB_ERROR = "error.txt"
#: most an exit status can say about how many jobs failed
MAX_EXIT = 100


class JobsFailed(Exception):
    """Some jobs of a sweep failed; the others ran to the end. ``exit_status`` is how many failed."""

    def __init__(self, failed: int, total: int, sweep_dir: str, lines: list[str]) -> None:
        self.failed, self.total, self.sweep_dir, self.lines = failed, total, sweep_dir, list(lines)
        self.exit_status = min(failed, MAX_EXIT)
        super().__init__(f"{failed} of {total} job(s) failed: " + "; ".join(self.lines))


#: the sweep whose jobs run in this process: its folder, the jobs started, the failed jobs' lines
_here: dict[str, Any] = {"sweep_dir": None, "started": 0, "failed": []}


def forget_jobs() -> None:
    """A new command in this process: no sweep's jobs yet."""
    _here.update(sweep_dir=None, started=0, failed=[])


def failed_jobs() -> JobsFailed | None:
    """The jobs of this process's sweep that failed here (Hydra's basic launcher), or None."""
    if not _here["failed"]:
        return None
    return JobsFailed(len(_here["failed"]), max(_here["started"], len(_here["failed"])), str(_here["sweep_dir"]),
                      _here["failed"])


class SweepCallback(Callback):
    def __init__(self, one_pass: bool = True, report: bool = True) -> None:
        self.one_pass = one_pass
        self.report = report

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        forget_jobs()
        _here["sweep_dir"] = str(config.hydra.sweep.dir)
        _warm_pool(config)
        if not self.one_pass:
            return
        from tlexp.sweep.plan import make_plan

        sweep_dir = str(config.hydra.sweep.dir)
        try:
            plan = make_plan(config, sweep_dir)
        except Exception as e:  # noqa: BLE001 - the jobs still featurize for themselves
            log.warning("featurize plan failed (%s: %s); each job featurizes its own cut", type(e).__name__, e,
                        exc_info=True)
            return
        if plan is None:
            log.info("featurize plan: not a grid sweep; jobs share the cache job by job")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _here["started"] += 1

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if job_return.status != JobStatus.FAILED or config.hydra.mode != RunMode.MULTIRUN:
            return
        e = job_return._return_value
        from tlexp.errors import TlexpError

        if isinstance(e, TlexpError):
            line = str(e)
            text = line + "\n"
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            line = f"{type(e).__name__}: {first}" if first else type(e).__name__
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        num = config.hydra.job.get("num")
        overrides = " ".join(config.hydra.overrides.task)
        _here["failed"].append(f"#{num} ({overrides}): {line}")
        try:
            out = Path(str(config.hydra.runtime.output_dir))
            out.mkdir(parents=True, exist_ok=True)
            (out / JOB_ERROR).write_text(text)
        except Exception as write_error:  # noqa: BLE001 - the line below still says what failed
            log.warning("job #%s: error.txt not written: %s", num, write_error)
        print(f"tlexp: error: job #{num} ({overrides}): {line}", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.report:
            return
        from tlexp.sweep.report import print_sweep_report

        try:
            print_sweep_report(str(config.hydra.sweep.dir))
        except Exception as e:  # noqa: BLE001 - the sweep itself succeeded; say why there is no table
            log.warning("sweep report: %s", e)


def _warm_pool(config: DictConfig) -> None:
    """Under ``hydra/launcher=gpu_pool``: start its fork server now, before the plan starts any
    compute, as a fork of this process once it has imported what the plan needs anyway (torch,
    Lightning, tlexp): the server starts with them loaded, at no cost. Where that cannot be (CUDA
    or threads already started here), the usual fork server, whose imports then run while the
    plan featurizes. The launcher finds it running."""
    launcher = config.hydra.get("launcher") or {}
    if not str(launcher.get("_target_", "")).endswith("GpuPoolLauncher") or not launcher.get("zygote", True):
        return
    try:
        from hydra_plugins.tlexp_gpu_pool.launcher import fork_zygote_here, zygote_context

        modules = [*(launcher.get("preload") or []), "tlexp.cli"]
        if not fork_zygote_here(modules):
            zygote_context(modules)
    except Exception as e:  # noqa: BLE001 - the launcher tries again (and says why it cannot)
        log.debug("gpu_pool fork server not started early: %s", e)
