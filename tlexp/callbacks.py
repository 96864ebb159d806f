"""Choosing the epoch: the monitored metric, the best epoch's weights, the ``callbacks`` group.

``train.monitor`` (``val/loss``, ``val/accuracy``, ``val/auroc`` for two classes) and
``train.mode`` decide which epoch is best. :class:`BestWeights` keeps that epoch's weights in
memory (a copy per improvement, no file), so the run restores them before the test evaluation
and before ``model/`` is saved. The ``callbacks`` config group (the lightning-hydra-template way:
a mapping of ``_target_`` entries) adds Lightning's own callbacks, which read the same
``${train.monitor}``/``${train.mode}``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from tlexp.config import MonitorMode, monitor_mode
from tlexp.errors import ConfigError, choices

__all__ = ["MONITORS", "BestWeights", "resolve_mode", "check_monitor", "build_callbacks"]

log = logging.getLogger(__name__)

#: the metrics an epoch can be chosen by (val/auroc: two classes only)
MONITORS = ("val/loss", "val/accuracy", "val/auroc")
MODES = tuple(m.value for m in MonitorMode)


def resolve_mode(monitor: str, mode: str) -> str:
    """``auto``: min for a loss, max for a score."""
    return monitor_mode(monitor, mode)


def check_monitor(monitor: str, num_classes: int | None = None) -> None:
    if monitor not in MONITORS:
        raise ConfigError(f"train.monitor: {monitor!r} is not logged; valid: {choices(MONITORS)}")
    if monitor == "val/auroc" and num_classes is not None and num_classes != 2:
        raise ConfigError(f"train.monitor: val/auroc needs two classes, the data has {num_classes}; "
                          "use val/loss or val/accuracy")


class BestWeights(pl.Callback):
    """Keeps a copy of the trained module's weights at the best value of ``monitor``.

    ``best_epoch`` counts from 1 (as ``epochs`` does); ``history`` holds the monitored value of
    every validated epoch. ``best_optimizer_state`` is the optimizer's state at that epoch (a
    copy), so that the state saved beside the restored weights is the one that produced them;
    ``best_progress`` the trained module's counters and schedule position then (its
    ``progress(epochs)``, with ``steps_done``). Both are taken once the epoch has ended (its
    epoch-stepped schedule stepped), before the next optimizer step.
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min", keep: bool = True,
                 target: torch.nn.Module | None = None) -> None:
        self.monitor, self.mode, self.keep = monitor, resolve_mode(monitor, mode), keep
        #: the module whose weights are kept (default: the trained LightningModule)
        self.target = target
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_optimizer_state: dict[str, Any] | None = None
        self.best_progress: dict[str, Any] | None = None
        self.history: list[float] = []
        self._pending: int | None = None  # the best epoch whose optimizer state is still to be taken

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(f"train.monitor: {self.monitor!r} was not logged; logged: "
                              f"{choices(sorted(trainer.callback_metrics))}")
        value = float(value)
        self.history.append(value)
        if self._better(value):
            self.best_value, self.best_epoch = value, trainer.current_epoch + 1
            if self.keep:
                self.best_state = self._snapshot(self.target or pl_module)
                self._pending = self.best_epoch

    def _take_optimizer_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The optimizer's state and the module's progress as of the best epoch: after its end
        (an epoch-stepped schedule has stepped), before any further optimizer step."""
        if self._pending is None:
            return
        optimizers = trainer.optimizers
        self.best_optimizer_state = copy.deepcopy(optimizers[0].state_dict()) if optimizers else None
        progress = getattr(pl_module, "progress", None)
        if callable(progress):
            self.best_progress = {**copy.deepcopy(progress(self._pending)),
                                  "steps_done": int(getattr(pl_module, "steps_done", 0))}
        self._pending = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._take_optimizer_state(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._take_optimizer_state(trainer, pl_module)

    @staticmethod
    def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def start_from(self, value: float | None, module: torch.nn.Module) -> None:
        """Count only epochs better than ``value`` (an earlier phase's best); until one is, the
        weights kept are ``module``'s as they are now (and no optimizer state of this phase)."""
        self.best_value = value
        self.best_state = self._snapshot(module)
        self.best_optimizer_state = self.best_progress = None

    def restore(self, pl_module: pl.LightningModule) -> bool:
        """Load the best epoch's weights (into ``target`` when set); False when none were kept."""
        if self.best_state is None:
            return False
        (self.target or pl_module).load_state_dict(self.best_state)
        return True

    def summary(self) -> dict[str, Any]:
        return {"name": self.monitor, "mode": self.mode, "best": self.best_value, "best_epoch": self.best_epoch}


def _skip_reason(target: str, trainer_kwargs: Mapping[str, Any], logger: Any) -> str | None:
    name = target.rsplit(".", 1)[-1]
    if name == "ModelCheckpoint" and not trainer_kwargs.get("enable_checkpointing", True):
        return "trainer.enable_checkpointing is false"
    if "ProgressBar" in name and not trainer_kwargs.get("enable_progress_bar", True):
        return "trainer.enable_progress_bar is false"
    if name == "LearningRateMonitor" and not logger:
        return "there is no logger (choose logger=csv)"
    return None


def build_callbacks(node: Mapping[str, Any] | None, trainer_kwargs: Mapping[str, Any], logger: Any) -> list[pl.Callback]:
    """Instantiate every ``_target_`` entry of the resolved ``callbacks`` mapping.

    Entries the trainer settings rule out (a checkpoint with checkpointing off, a progress bar
    with the bar off, a learning-rate monitor without a logger) are left out with a log line.
    """
    from hydra.utils import instantiate

    out: list[pl.Callback] = []
    for key, spec in (node or {}).items():
        if spec is None:
            continue
        if not isinstance(spec, Mapping) or "_target_" not in spec:
            raise ConfigError(f"callbacks.{key}: expected a mapping with _target_ (a Lightning callback class)")
        why = _skip_reason(str(spec["_target_"]), trainer_kwargs, logger)
        if why:
            log.info("callbacks.%s: left out, %s", key, why)
            continue
        try:
            cb = instantiate(dict(spec))
        except Exception as e:  # an unknown class or argument: name it, no traceback
            root = e
            while root.__cause__ is not None:
                root = root.__cause__
            text = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
            raise ConfigError(f"callbacks.{key}: cannot create {spec['_target_']} ({text})") from None
        if not isinstance(cb, pl.Callback):
            raise ConfigError(f"callbacks.{key}: {spec['_target_']} is not a Lightning callback")
        out.append(cb)
    return out
