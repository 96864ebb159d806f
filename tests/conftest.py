"""Shared fixtures: Hydra compose of the package's configs, small and fast."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# keras (a test dependency, used to write reference files) runs on the torch backend here
os.environ.setdefault("KERAS_BACKEND", "torch")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import tlexp.config  # noqa: E402,F401  (registers the structured configs)
from tlexp._resources import CONF_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """compose(overrides) -> config with outputs and cache under tmp_path, no progress bars."""

    def _compose(*overrides: str, out: str = "run") -> DictConfig:
        base = [
            f"paths.output_dir={tmp_path / out}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer.enable_progress_bar=false",
            "logger=none",
            "print_table=false",
        ]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[*base, *overrides])

    yield _compose


def run_cli(args: list[str], cwd: Path, script: str = "tlexp", env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a console script as a user would: the installed entry point (README's install puts it
    on PATH), else the same entry function through this interpreter."""
    import shutil

    exe = shutil.which(script)
    if exe is not None:
        cmd = [exe, *args]
    else:
        func = {"tlexp": "main", "tlexp-inspect": "inspect_main", "tlexp-report": "report_main",
                "tlexp-cache": "cache_main"}[script]
        cmd = [sys.executable, "-c", f"import sys; sys.argv[0] = {script!r}; from tlexp.cli import {func}; {func}()", *args]
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout)


def cli_here(args: list[str], cwd: Path, script: str = "tlexp", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script's entry function run in this process, with what a user's process would
    have: ``sys.argv``, the working folder, the environment, Python warnings ignored (``run_cli``
    sets ``PYTHONWARNINGS=ignore``) and its own stdout/stderr; an uncaught exception is a
    traceback on stderr and exit status 1. Saves the ~7 s of imports a subprocess pays, for tests
    that check what a run prints, exits with and writes. Tests of what only a process shows
    (console-script entry points, signals, launchers that spawn, ``sys.modules`` after start-up,
    environment read at import) use ``run_cli``.

    Afterwards the process is as before: argv, folder, environment, the root logger's handlers
    (Hydra's job logging replaces them) and Hydra's global state (its config search and the job's
    ``HydraConfig``, which a run leaves set). Hydra configures logging with
    ``logging.config.dictConfig``, which closes every handler of the process — in a user's
    process nothing else is there, here it would close pytest's capture file through the handlers
    that absl (imported with keras) made on it: during the call, those are flushed, not closed."""
    import contextlib
    import io
    import logging
    import traceback
    import warnings

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from tlexp import cli

    entry = {"tlexp": cli.main, "tlexp-inspect": cli.inspect_main, "tlexp-report": cli.report_main,
             "tlexp-cache": cli.cache_main}[script]
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_job = HydraConfig.instance().cfg
    real_shutdown = logging.shutdown

    def flush_only(handler_list: list[Any] | None = None) -> None:
        for ref in handler_list or []:
            handler = ref()
            if handler is not None:
                with contextlib.suppress(Exception):
                    handler.flush()

    code = 0
    try:
        logging.shutdown = flush_only
        os.chdir(cwd)
        os.environ.update(env or {})
        sys.argv = [script, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                entry()
            except SystemExit as e:
                if isinstance(e.code, int) or e.code is None:
                    code = e.code or 0
                else:  # sys.exit("message"): the message on stderr, status 1
                    print(e.code, file=sys.stderr)
                    code = 1
            except Exception:  # noqa: BLE001 - as the interpreter would: a traceback, status 1
                traceback.print_exc()
                code = 1
    finally:
        logging.shutdown = real_shutdown
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = saved_job
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
