"""The test helpers themselves: ``cli_here`` gives what a process would and leaves this one as it was."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_here


class _Canary(logging.Handler):
    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.mark.slow  # a run (its folder, Hydra's job logging) in this process
def test_cli_here_reports_like_a_process_and_leaves_this_one_as_it_was(tmp_path: Path) -> None:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    argv, cwd, env = sys.argv[:], os.getcwd(), dict(os.environ)
    root = logging.getLogger()
    handlers, job = root.handlers[:], HydraConfig.instance().cfg
    canary = _Canary()  # a handler of this process (as pytest's, or absl's on pytest's capture file)
    # a run that fails after its folder and job logging were made: exit 2, one line, marked failed
    run_dir = tmp_path / "run"
    res = cli_here(["freeze.up_to=conv9", f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"],
                   cwd=tmp_path, env={"TLEXP_TEST_CANARY": "1"})
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert res.stderr.startswith("tlexp: error: freeze.up_to: no layer named 'conv9'")
    assert (run_dir / "tlexp.log").is_file() and "conv9" in (run_dir / "tlexp.log").read_text()
    # the process afterwards
    assert (sys.argv, os.getcwd(), dict(os.environ)) == (argv, cwd, env)
    assert root.handlers == handlers
    assert not GlobalHydra.instance().is_initialized() and HydraConfig.instance().cfg is job
    assert not canary.closed  # Hydra's dictConfig closes every handler of the process
    # output and exit status of a command that succeeds
    ok = cli_here(["experiment=churn_transfer", "inspect.format=json"], cwd=tmp_path, script="tlexp-inspect")
    assert ok.returncode == 0 and '"frozen"' in ok.stdout, ok.stderr
