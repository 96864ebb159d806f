"""Training phases: one ``fit`` of the part of the graph outside a cut.

Phase 1 trains with the prefix frozen at ``freeze.up_to``. With ``unfreeze.epochs > 0`` phase 2
moves the cut back to ``unfreeze.up_to`` (a shallower cut; null = the whole network) and trains on
with the learning rate scaled by ``unfreeze.lr_scale`` (fastai's ``fine_tune``, Lightning's
``BackboneFinetuning``). Under ``freeze.mode=featurize`` each phase reads its own prefix's
outputs from the cache (the phase-2 prefix is the part still frozen, so it has its own key).
BatchNorm in newly unfrozen layers stays in inference mode under ``unfreeze.bn=frozen``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlexp.config import BatchNormMode, TlexpConfig, UnfreezeConfig, plain
from tlexp.errors import ConfigError, check
from tlexp.graph import LayerGraph

#: Lightning warnings every fit phase expects (filtered, never shown)
_EXPECTED_WARNINGS = (
    ".*does not have many workers.*",  # in-memory tensor batches need no worker processes
    ".*The number of training batches.*",  # small transfer sets have few batches per epoch
    ".*module\\(s\\) in eval mode.*",  # frozen nodes always run in inference mode
    ".*LeafSpec.*",  # Lightning's own use of a deprecated torch API
)


def _autocast_dtype(cfg: TlexpConfig, device: torch.device) -> torch.dtype | None:
    """The trainer's mixed precision, applied to featurizing too (GPU only)."""
    precision = str(cfg.trainer.precision)
    if device.type != "cuda" or "mixed" not in precision:
        return None
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16


def _source_name(cfg: TlexpConfig) -> str:
    src = plain(cfg.source)
    return f"{src.get('type', '?')}: {src.get('name') or src.get('path') or ''}".rstrip(": ")


__all__ = ["PhaseResult", "fit_phase", "phase2_cut", "bn_modules", "scale_lrs", "BN_MODES"]

log = logging.getLogger(__name__)

#: unfreeze.bn, as tlexp.config.BatchNormMode (checked when the config is composed)
BN_MODES = tuple(m.value for m in BatchNormMode)


@dataclass
class PhaseResult:
    phase: int
    cut: set[str]
    featurize: dict[str, Any]
    featurize_s: float
    fit_s: float
    epochs: int
    best: Any
    trainer: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self, graph: LayerGraph) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "frozen": [n for n in graph.node_names if n in self.cut],
            "epochs": self.epochs,
            "best_epoch": self.best.best_epoch,
            "monitor": self.best.summary(),
            "featurize": {k: self.featurize.get(k) for k in ("mode", "key", "cache_hit")},
            "timing": {"featurize_s": round(self.featurize_s, 4), "fit_s": round(self.fit_s, 4)},
            **self.extra,
        }


def check_unfreeze(node: UnfreezeConfig) -> None:
    """Checks of the ``unfreeze`` group that need no model."""
    if node.epochs < 0:
        raise ConfigError(f"unfreeze.epochs: {node.epochs} must be 0 (one phase) or more")
    if node.lr_scale <= 0:
        raise ConfigError(f"unfreeze.lr_scale: {node.lr_scale} must be above 0")
    check(node.bn, BatchNormMode, "unfreeze.bn")  # a TlexpConfig made in Python, not composed


def phase2_cut(graph: LayerGraph, cut1: set[str], up_to: Any) -> set[str]:
    """The cut of phase 2: a part of phase 1's cut, so that more of the network trains."""
    from tlexp.freeze import resolve_cut

    if not cut1:
        raise ConfigError("unfreeze.epochs: phase 1 freezes nothing (freeze.up_to is null), so there is nothing "
                          "to unfreeze; set freeze.up_to or unfreeze.epochs=0")
    cut2 = resolve_cut(graph, up_to, field="unfreeze.up_to")
    if not cut2 < cut1:
        deeper = sorted(cut2 - cut1)
        why = f"it freezes {', '.join(deeper)} which phase 1 trains" if deeper else "it is the same cut"
        raise ConfigError(f"unfreeze.up_to: {up_to!r} must be a shallower cut than freeze.up_to; {why}; "
                          "null unfreezes everything")
    return cut2


def scale_lrs(finetune: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """The ``finetune`` settings of phase 2: every absolute learning rate times ``scale``.

    ``lr``, the ``lr`` of a ``_target_`` optimizer mapping, each ``finetune.groups`` entry's
    ``lr``, ``bias_lr`` and a schedule's ``min_lr`` are multiplied; a group's ``lr_scale`` is
    relative to the base rate, so it follows the scaled base as it is.
    """
    out = dict(finetune)
    out["lr"] = float(out.get("lr", 1e-3)) * scale
    if isinstance(out.get("optimizer"), Mapping) and out["optimizer"].get("lr") is not None:
        out["optimizer"] = {**out["optimizer"], "lr": float(out["optimizer"]["lr"]) * scale}
    if out.get("groups"):
        out["groups"] = [
            {**g, "lr": float(g["lr"]) * scale} if isinstance(g, Mapping) and g.get("lr") is not None else g
            for g in out["groups"]
        ]
    if out.get("bias_lr") is not None:
        out["bias_lr"] = float(out["bias_lr"]) * scale
    args = out.get("schedule_args")
    if isinstance(args, Mapping) and args.get("min_lr") is not None:
        out["schedule_args"] = {**args, "min_lr": float(args["min_lr"]) * scale}
    return out


def bn_modules(graph: LayerGraph, names: Sequence[str]) -> list[nn.Module]:
    """The BatchNorm modules inside the named nodes (timm's BatchNormAct2d included)."""
    out: list[nn.Module] = []
    for n in names:
        out.extend(m for m in graph.module(n).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    return out


def fit_phase(cfg: TlexpConfig, graph: LayerGraph, data: Any, cut: set[str], device: torch.device, logger: Any,
              out_dir: Path, *, phase: int, max_epochs: int, finetune: Mapping[str, Any],
              optimizer_state: Mapping[str, Any] | None, class_weights: torch.Tensor | None,
              eval_modules: Sequence[nn.Module] = (), start: Any = None, training_terms: Any = None,
              after: PhaseResult | None = None, later_phase: bool = False) -> PhaseResult:
    """Featurize the prefix before ``cut`` (featurize mode) and fit the rest for ``max_epochs``.

    ``start`` (phase 2): the best monitored value so far; an epoch must beat it to be kept, and
    the whole graph is snapshot so that a phase that never improves leaves the graph as it found it.
    ``after`` (phase 2): the previous phase; the logger's epochs and steps continue after its
    own, and each ``ModelCheckpoint`` starts from its best, so that ``checkpoints/`` keeps the
    best epoch over both phases. ``later_phase`` (phase 1 of two): a ``finetune.groups`` pattern
    that matches only layers phase 2 unfreezes is not warned about here (phase 2 warns when a
    pattern matches nothing it trains).
    """
    import pytorch_lightning as pl

    from tlexp.callbacks import BestWeights, build_callbacks, resolve_mode
    from tlexp.featurize import FeaturizedDataModule, describe, featurize
    from tlexp.module import TransferModule

    graph.set_frozen(cut)
    info: dict[str, Any] = {"mode": plain(cfg.freeze.mode), "key": None, "cache_hit": False}
    t_feat = 0.0
    if cfg.freeze.mode == "featurize" and cut:
        prefix, suffix = graph.split(cut)
        boundary = graph.boundary(cut)
        result = featurize(
            prefix, boundary, data, cfg.paths.cache_dir, dtype=plain(cfg.featurize.dtype),
            batch_size=cfg.featurize.batch_size, augment_copies=cfg.featurize.augment_copies,
            overwrite=cfg.featurize.overwrite, device=device, autocast=_autocast_dtype(cfg, device),
            info={"up_to": plain(cfg.freeze.up_to) if phase == 1 else sorted(cut), "source": _source_name(cfg),
                  "data": data.identity(), "writer": str(out_dir)},
        )
        t_feat = result.seconds
        info.update(describe(result))
        log.info("phase %d featurize: key %s, cache hits %s, %.2fs", phase, result.key, result.hits, t_feat)
        train_data: Any = FeaturizedDataModule(
            result, batch_size=data.batch_size, seed=cfg.seed, max_memory=cfg.featurize.max_memory, device=device
        )
        info["in_memory"] = train_data.in_memory
        trainable: LayerGraph = suffix
    else:
        train_data = data
        trainable = graph
        if cfg.freeze.mode == "featurize":
            info["mode"] = "featurize (nothing frozen: no prefix to compute)"

    mode = resolve_mode(cfg.train.monitor, cfg.train.mode)
    module = TransferModule(trainable, finetune, data.num_classes, class_weights, optimizer_state,
                            monitor=cfg.train.monitor, eval_modules=eval_modules, training_terms=training_terms)
    trainer_kwargs = {k: v for k, v in plain(cfg.trainer).items() if v is not None}
    trainer_kwargs["max_epochs"] = max_epochs
    keep = bool(cfg.train.restore_best)
    best = BestWeights(cfg.train.monitor, mode, keep=keep, target=graph if start is not None else None)
    if start is not None and keep:
        best.start_from(start, graph)
    callbacks = [best, *build_callbacks(cfg.callbacks, trainer_kwargs, logger)]
    if after is not None:
        _continue_checkpoints(callbacks, after.trainer)
    trainer = pl.Trainer(**trainer_kwargs, logger=logger, default_root_dir=str(out_dir), callbacks=callbacks)
    # both freeze modes start fitting from the same RNG state: same dropout masks, same results
    pl.seed_everything(cfg.seed + phase - 1, workers=True, verbose=False)
    t_fit = time.perf_counter()
    shift = (after.epochs, int(after.trainer.global_step)) if after is not None else (0, 0)
    with warnings.catch_warnings(), _shifted_logging(trainer.loggers, *shift):
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        if later_phase:
            warnings.filterwarnings("ignore", message=r"finetune\.groups\[\d+\]: pattern .* matches no trainable parameter")
        if after is not None:  # phase 1's best checkpoint is there, and kept unless beaten
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(module, datamodule=train_data)
    epochs_run = int(trainer.current_epoch)
    if keep and best.restore(module):
        log.info("phase %d: best epoch %s of %s by %s (%.4f): its weights restored", phase, best.best_epoch,
                 epochs_run, best.monitor, best.best_value if best.best_value is not None else float("nan"))
    fit_s = time.perf_counter() - t_fit
    return PhaseResult(phase, set(cut), info, t_feat, fit_s, epochs_run, best, trainer)


def _continue_checkpoints(callbacks: Sequence[Any], previous: Any) -> None:
    """Start each ``ModelCheckpoint`` from the previous phase's one with the same monitor
    (Lightning's own resume state: best score, best path, top k), so that a later phase replaces
    the best checkpoint only with a better epoch."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    before = {(cb.monitor, cb.dirpath): cb for cb in previous.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)}
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and (cb.monitor, cb.dirpath) in before:
            cb.load_state_dict(before[(cb.monitor, cb.dirpath)].state_dict())


@contextlib.contextmanager
def _shifted_logging(loggers: Sequence[Any], epochs: int, steps: int) -> Iterator[None]:
    """Logged epochs and steps continue after an earlier phase's (metrics.csv, TensorBoard)."""
    if not (epochs or steps):
        yield
        return
    patched = []
    for lg in loggers:
        inner = lg.log_metrics

        def log_metrics(metrics: Mapping[str, Any], step: int | None = None, _inner: Any = inner) -> None:
            shifted = dict(metrics)
            if "epoch" in shifted:
                shifted["epoch"] = shifted["epoch"] + epochs
            _inner(shifted, None if step is None else step + steps)

        lg.log_metrics = log_metrics
        patched.append(lg)
    try:
        yield
    finally:
        for lg in patched:
            del lg.log_metrics  # the class's method again
