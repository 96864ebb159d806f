"""Shared fixtures: Hydra compose of the package's configs, small and fast."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

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
