"""Console scripts: ``tlexp`` (a run, or a sweep with -m) and ``tlexp-inspect`` (the layer table).

Both are Hydra apps over the package's ``conf/``; a user adds their own config folder with
``--config-dir``. User errors — a bad override, an unknown option, a wrong layer name, an
unreadable file — print one line and exit with status 2. A run that fails after its folder was
made leaves it marked failed (``.hydra/``, ``tlexp.log``, ``metrics.json`` with ``status: failed``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from omegaconf import DictConfig

from tlexp import config as _config  # noqa: F401  (registers the structured configs)
from tlexp.errors import TlexpError

__all__ = ["main", "inspect_main"]

EXIT_USAGE = 2


def _fail(message: str) -> None:
    print(f"tlexp: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _hydra_error_line(e: BaseException) -> str | None:
    """One line for the config errors Hydra and OmegaConf raise at compose time."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException, SearchPathException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    if isinstance(e, SearchPathException):
        return str(e).strip().splitlines()[0] + "; --config-dir must name an existing folder of configs"

    if isinstance(e, MissingConfigException):
        opts = getattr(e, "options", None)
        first = str(e).strip().splitlines()[0]
        # the base_* entries are structured-config schemas, not options a user picks
        opts = sorted(o for o in (opts or []) if not o.startswith("base_"))
        return first + (f"; valid: {', '.join(opts)}" if opts else "")
    if isinstance(e, (ConfigCompositionException, OverrideParseException)):
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        cause = e.__cause__ or e.__context__
        tail = ""
        where = re.match(r"In '(experiment/[^']+)'", lines[0])
        if where and isinstance(cause, ConfigKeyError) and getattr(cause, "full_key", None):
            # an experiment sets a key that the group option chosen on the command line lacks
            key = str(cause.full_key)
            group = key.split(".")[0]
            return (f"{key}: {where.group(1)} sets it, but the chosen {group} option has no such key "
                    f"({_valid_keys(cause)}); choose the {group} the experiment is made for, or start "
                    "from a blank recipe with experiment=none")
        if isinstance(cause, OmegaConfBaseException):
            tail = _omegaconf_line(cause)
        elif len(lines) > 1:
            tail = lines[-1]
        return lines[0] + (f" ({tail})" if tail and tail not in lines[0] else "")
    if isinstance(e, OmegaConfBaseException):
        return _omegaconf_line(e)
    return None


def _valid_keys(e: Any) -> str:
    import dataclasses

    obj_type = getattr(e, "object_type", None)
    if obj_type is not None and dataclasses.is_dataclass(obj_type):
        return "valid keys here: " + ", ".join(f.name for f in dataclasses.fields(obj_type))
    return "no schema"


def _omegaconf_line(e: Any) -> str:
    msg = str(e).strip().splitlines()[0]
    key = getattr(e, "full_key", None)
    bad_choice = re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", msg)
    if bad_choice and key:  # a closed choice (an Enum in tlexp.config)
        return f"{key}: {bad_choice.group(1)!r} is not a valid choice; valid: {bad_choice.group(2)}"
    if "not in" in msg and _valid_keys(e) != "no schema":
        return f"{key}: no such key; {_valid_keys(e)}"
    if key:
        return f"{key}: {msg}"
    return msg


def _guard(entry: Callable[[], Any]) -> None:
    """Run a Hydra entry point, turning config errors into one line and exit status 2."""
    # Hydra re-raises the original exception (instead of printing its own report) with this set
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from tlexp.sweep.callback import failed_jobs, forget_jobs

    forget_jobs()
    try:
        entry()
    except Exception as e:  # noqa: BLE001 - only config errors are turned into a line
        if hasattr(e, "exit_status") and hasattr(e, "sweep_dir"):
            _sweep_failed(e)
        if isinstance(e, ValueError) and str(e) == "No trials are completed yet.":
            # Optuna asked for the best of a search whose every trial failed
            print("tlexp: error: hparams_search: every trial failed; each job's error.txt (or job.out) says why",
                  file=sys.stderr)
            sys.exit(1)
        # Hydra's basic sweeper ran every job, then raised the first failed job's error: the count
        failed = failed_jobs()
        if failed is not None:
            _sweep_failed(failed)
        if isinstance(e, TlexpError):
            _fail(str(e))
        line = _hydra_error_line(e)
        if line is None:
            raise
        _fail(line)


def _sweep_failed(e: Any) -> None:
    """Some jobs of a sweep failed, the others finished: the report, then the count of failed
    jobs as the exit status."""
    from tlexp.sweep.report import print_sweep_report

    try:
        print_sweep_report(e.sweep_dir)
    except Exception as report_error:  # noqa: BLE001 - the failure count matters more than the table
        print(f"tlexp: the sweep report could not be made: {report_error}", file=sys.stderr)
    print(f"tlexp: error: {e}", file=sys.stderr)
    sys.exit(e.exit_status)


#: mapping-valued keys that an override may clear with ``{}`` (OmegaConf merges a ``{}``
#: override into the existing mapping, which would keep an experiment's filter)
_CLEARABLE = ("data.where",)


def _default_recipe(argv: list[str]) -> list[str]:
    """Choosing another model (source=…) without naming an experiment starts from a blank
    recipe: the default experiment's surgery and freeze belong to the shipped digits model."""
    argv = [f"{a.split('=', 1)[0]}=null" if a.split("=", 1)[0] in _CLEARABLE and a.split("=", 1)[-1].strip() == "{}" else a
            for a in argv]
    names = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a and not a.startswith("-")}
    if "source" in names and "experiment" not in names:
        return [*argv, "experiment=none"]
    return argv


def _run_task(cfg: DictConfig) -> float | None:
    from tlexp.train import run

    _quiet_console()  # again here: launchers (gpu_pool, ray, submitit) run this in their own processes

    try:
        # a failed run's folder keeps .hydra/, tlexp.log with the error and metrics.json with
        # status: failed (run() writes them), so a sweep's report can say which runs failed
        metrics = run(cfg)
        # returned for sweepers that optimize a value (hparams_search=optuna)
        return optimized_value(cfg, metrics)
    except TlexpError as e:
        if _jobs_run_here():
            raise  # this job fails (Hydra records it), the sweep's other jobs still run
        _fail(str(e))
        return None


def _jobs_run_here() -> bool:
    """Whether this process runs a sweep's jobs itself, one after another (Hydra's basic
    launcher): there a job's user error must fail that job, not end the process (and the sweep)
    with exit status 2. Launchers that run each job in its own process keep the exit status."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and str(hc.launcher.get("_target_", "")).endswith(".BasicLauncher")


_run_app = hydra.main(version_base="1.3", config_path="conf", config_name="config")(_run_task)


def _single_run(overrides: list[str]) -> None:
    """One run of the package's configs, composed once: Hydra's own runner (``Hydra.run``: the
    run folder, logging, job callbacks, ``.hydra/``), without the app's first composition, which
    only learns the run mode (a plain command line of the shipped configs is always one run)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    search_path = create_automatic_config_search_path(None, __name__, "conf")
    app = Hydra.create_main_hydra2(task_name="cli", config_search_path=search_path)
    try:
        app.run(config_name="config", task_function=_run_task, overrides=overrides)
    finally:
        # left initialized, it makes the next in-process compose (a notebook, a test) fail
        GlobalHydra.instance().clear()


def _one_run_overrides(argv: list[str]) -> list[str] | None:
    """The overrides when the command line is one run of the shipped configs (no flags, no
    --config-dir, no run mode or sweeper chosen), else None (Hydra's app decides)."""
    if any(a.startswith("-") for a in argv):
        return None
    keys = [a.split("=", 1)[0].lstrip("+~") for a in argv]
    if any(k.startswith(("hydra.mode", "hydra.sweeper", "hydra/sweeper", "hydra/launcher", "hparams_search"))
           for k in keys):
        return None
    return list(argv)


def optimized_value(cfg: Any, metrics: dict[str, Any]) -> float:
    """The value named by ``optimized_metric`` ("val/accuracy", "val/auroc", …) in a run's metrics."""
    name = cfg.optimized_metric or ("val/auroc" if metrics.get("num_classes") == 2 else "val/accuracy")
    node: Any = metrics
    for part in str(name).split("/"):
        if not isinstance(node, dict) or part not in node:
            raise TlexpError(f"optimized_metric: {name!r} is not in the run's metrics; valid: "
                             + ", ".join(f"{s}/{k}" for s in ("val", "test") for k in metrics.get(s, {})))
        node = node[part]
    return float(node)


def _refuse_shadowed(argv: list[str]) -> None:
    from tlexp._choices import shadowed_choice
    from tlexp._resources import CONF_DIR

    line = shadowed_choice(argv, Path(CONF_DIR))
    if line is not None:
        _fail(line)


def _without_schemas(help_text: str) -> str:
    """Hydra's help lists every ConfigStore entry of a group; the ``base_*`` ones are schemas
    the options extend, not options a user picks."""
    out = []
    for line in help_text.splitlines():
        group, sep, options = line.partition(": ")
        if sep and group.isidentifier() and "," in options or (sep and options.startswith("base_")):
            kept = [o for o in options.split(", ") if not o.startswith("base_")]
            line = f"{group}: {', '.join(kept)}"
        out.append(line)
    return "\n".join(out)


#: Lightning's start-up lines that say nothing about the run: the device banner (tlexp's table
#: says where it ran), tips and advertisements for Lightning's cloud products
_LIGHTNING_ADS = re.compile(r"^(GPU|TPU|HPU|IPU) available:|Tip:|\N{ELECTRIC LIGHT BULB}|litlogger|litmodels|lightning\.ai",
                  re.IGNORECASE | re.MULTILINE)


class ConsoleWarnings(logging.Filter):
    """The run's console handler (conf/hydra/job_logging/tlexp.yaml) shows tlexp's own logged
    warnings (a cache file rebuilt, a lock that holds on this machine only, …) as one line each;
    errors are the CLI's one ``tlexp: error:`` line, and Python warnings are printed already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno == logging.WARNING and record.name.split(".")[0] in ("tlexp", "hydra_plugins")
                and record.name != "tlexp.warnings")


class _NoAds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _LIGHTNING_ADS.search(record.getMessage()) is None


def _quiet_console() -> None:
    """The console shows tlexp's lines: a warning is one line (never Python's source-line echo),
    and Lightning's advertisements are dropped (from tlexp.log too)."""
    import warnings

    def one_line(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        to_log = logging.getLogger("tlexp.warnings")
        if to_log.hasHandlers():  # a run's tlexp.log (tlexp-inspect logs nowhere: no last-resort echo)
            to_log.warning("%s: %s (%s:%d)", category.__name__, text, filename, lineno)
        print(f"tlexp: warning: {text}", file=sys.stderr)

    warnings.showwarning = one_line

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAds) for f in logger.filters):
            logger.addFilter(_NoAds())


def main() -> None:
    """``tlexp [overrides]`` / ``tlexp -m key=a,b …``.

    Called from a program's top level (the console script, ``python -c``), the command is the
    whole process, and it ends the process itself when done (:func:`_end_process`)."""
    if sys._getframe(1).f_globals.get("__name__") == "__main__":
        _end_process(_main)
    _main()


def _end_process(entry: Callable[[], None]) -> NoReturn:
    """Run ``entry`` as the whole process; on its return or exit status the process's threads are
    joined, its exit handlers run and its output is flushed, as at any exit, and then it ends at
    once: without Python's finalization of torch's and Lightning's modules and objects, which takes
    seconds (1.8–4.6 s measured on 2 cores after a sweep or a run) and does nothing for a command
    that has finished. Any other error is left to Python (its traceback, exit status 1)."""
    import atexit
    import threading

    try:
        entry()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:  # sys.exit("message"): the message on stderr, status 1
            print(e.code, file=sys.stderr)
            code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


def _main() -> None:
    argv = _default_recipe(sys.argv[1:])
    _refuse_shadowed(argv)
    sys.argv = [sys.argv[0], *argv]
    _quiet_console()
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        import contextlib
        import io

        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                _guard(_run_app)
        finally:
            print(_without_schemas(buf.getvalue()))
        return
    overrides = _one_run_overrides(argv)
    if overrides is not None:
        _guard(lambda: _single_run(overrides))
        return
    _guard(_run_app)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _inspect_app(cfg: DictConfig) -> None:
    _inspect(cfg)


def _inspect(cfg: DictConfig) -> None:
    from tlexp.inspect import inspect_config

    try:
        inspect_config(cfg)
    except TlexpError as e:
        _fail(str(e))


def _plain_overrides(argv: list[str]) -> list[str] | None:
    """The overrides of a command line made of overrides and ``--config-dir`` (which becomes a
    ``hydra.searchpath`` entry: Hydra puts both after the package's configs), or None when it
    uses another Hydra flag (``--help``, ``--cfg`` …), which Hydra's own app then handles."""
    from hydra.errors import SearchPathException

    out: list[str] = []
    dirs: list[str] = []
    args = iter(argv)
    for a in args:
        if a in ("--config-dir", "-cd"):
            d = next(args, None)
            if d is None:
                return None
            dirs.append(d)
        elif a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1])
        elif a.startswith("-") or a.split("=", 1)[0].lstrip("+~") == "hydra.searchpath":
            return None
        else:
            out.append(a)
    paths = []
    for d in dirs:
        path = os.path.abspath(d)
        if not os.path.isdir(path):
            raise SearchPathException(f"Additional config directory '{path}' not found")
        if "'" in path or "\\" in path:
            return None
        paths.append(f"'file://{path}'")
    if paths:
        out.append(f"hydra.searchpath=[{','.join(paths)}]")
    return out


def _compose(overrides: list[str]) -> DictConfig:
    """The config composed once with Hydra's compose API, as the task of a run sees it (no
    ``hydra`` node; ``${hydra:...}`` resolves, the output folder being the current one). Hydra's
    app would compose it twice (once to learn the run mode) and set up a job; inspecting starts
    no job and writes nothing."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_module(config_module="tlexp.conf", version_base="1.3", job_name="inspect"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = os.getcwd()
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def inspect_main() -> None:
    """``tlexp-inspect [overrides]``: the layer table (or ``inspect.format=json``).

    Called from a program's top level, it ends the process when done, as :func:`main` does
    (Python's finalization of torch's modules would add about as long as importing torch)."""
    if sys._getframe(1).f_globals.get("__name__") == "__main__":
        _end_process(_inspect_main)
    _inspect_main()


def _inspect_main() -> None:
    argv = _default_recipe(sys.argv[1:])
    _refuse_shadowed(argv)
    _quiet_console()  # warnings (a Keras file's ignored training config, …) as one line each
    holder: list[list[str] | None] = []
    _guard(lambda: holder.append(_plain_overrides(argv)))
    overrides = holder[0]
    if overrides is not None:
        _guard(lambda: _inspect(_compose(overrides)))
        return
    # inspecting writes nothing: no run folder, no log file
    quiet = ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    sys.argv = [sys.argv[0], *argv, *quiet]
    _guard(_inspect_app)


def report_main(argv: list[str] | None = None) -> None:
    """``tlexp-report SWEEP_DIR [--metric NAME]``: the sweep's table, report.csv/.md/.png, the best run."""
    import argparse

    parser = argparse.ArgumentParser(prog="tlexp-report", description=report_main.__doc__)
    parser.add_argument("sweep_dir", help="the sweep folder (hydra.sweep.dir), holding one folder per job")
    parser.add_argument("--metric", default=None,
                        help="validation/test metric to compare (accuracy, auroc, f1, loss, …); default: "
                             "auroc when every run has it (two classes), else accuracy")
    args = parser.parse_args(argv)
    from tlexp.sweep.report import print_sweep_report

    try:
        print_sweep_report(args.sweep_dir, args.metric)
    except TlexpError as e:
        _fail(str(e))


def cache_main(argv: list[str] | None = None) -> None:
    """``tlexp-cache list`` / ``tlexp-cache prune --older-than 30d --max-size 50GB [--dry-run]``."""
    from tlexp.featurize._admin import cache_cli

    try:
        cache_cli(argv)
    except TlexpError as e:
        _fail(str(e))
