"""The sweep's Hydra callback (``hydra.callbacks.tlexp``, on by default).

``on_multirun_start``: the featurize plan — every featurization the grid's jobs need, nested
cuts in one pass per split — before any job starts, under every launcher (it runs in the
process that launches). ``on_multirun_end``: the sweep report table and files.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepCallback(Callback):
    def __init__(self, one_pass: bool = True, report: bool = True) -> None:
        self.one_pass = one_pass
        self.report = report

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
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

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.report:
            return
        from tlexp.sweep.report import print_sweep_report

        try:
            print_sweep_report(str(config.hydra.sweep.dir))
        except Exception as e:  # noqa: BLE001 - the sweep itself succeeded; say why there is no table
            log.warning("sweep report: %s", e)


def _warm_pool(config: DictConfig) -> None:
    """Under ``hydra/launcher=gpu_pool``: start its fork server now, so its imports run while the
    plan featurizes (the launcher finds it running)."""
    launcher = config.hydra.get("launcher") or {}
    if not str(launcher.get("_target_", "")).endswith("GpuPoolLauncher") or not launcher.get("zygote", True):
        return
    try:
        from hydra_plugins.tlexp_gpu_pool.launcher import zygote_context

        zygote_context([*(launcher.get("preload") or []), "tlexp.cli"])
    except Exception as e:  # noqa: BLE001 - the launcher tries again (and says why it cannot)
        log.debug("gpu_pool fork server not started early: %s", e)
