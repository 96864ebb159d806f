"""One run: source → surgery → freeze → (featurize) → fit → reassemble → evaluate → save.

``run(cfg)`` is a plain function of the composed config, so tests call it through Hydra's
compose API and the console script is a thin ``@hydra.main`` around it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tlexp import finetune as ft
from tlexp.assemble import build_model, edit_graph, load_graph
from tlexp.config import Accelerator, BatchNormMode, FreezeMode, TlexpConfig, plain, typed_config
from tlexp.data import TlexpDataModule, build_datamodule
from tlexp.errors import ConfigError, ShapeError, check
from tlexp.graph import LayerGraph

# build_model stays importable from here: assembly itself lives in tlexp.assemble
__all__ = ["run", "prepare", "Prepared", "build_model"]

log = logging.getLogger(__name__)

#: fine-tune settings that decide the optimizer's identity and parameter groups: saved with a
#: model, and taken back when a run continues it with its optimizer state
CONTINUE_KEYS = ("optimizer", "momentum", "betas", "eps", "groups")

ACCELERATORS = tuple(a.value for a in Accelerator)

def _check_accelerator(acc: str) -> None:
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator: {acc!r} but this machine has no usable CUDA GPU (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); use trainer=cpu"
        )
    if acc == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.accelerator: 'mps' but Apple's MPS backend is not available here; use trainer=cpu")


def validate(cfg: DictConfig | TlexpConfig) -> None:
    """Checks that need no data or model, done before anything is loaded."""
    cfg = typed_config(cfg)
    data = plain(cfg.data)
    for key in ("batch_size", "num_workers"):
        value = data.get(key)
        least = 1 if key == "batch_size" else 0
        if value is not None and value < least:
            raise ConfigError(f"data.{key}: {value} must be at least {least}")
    check(cfg.freeze.mode, FreezeMode, "freeze.mode")
    from tlexp.featurize._store import check_dtype, parse_bytes

    check_dtype(cfg.featurize.dtype)
    parse_bytes(cfg.featurize.max_memory)
    if cfg.featurize.batch_size < 1:
        raise ConfigError(f"featurize.batch_size: {cfg.featurize.batch_size} must be at least 1")
    ft.validate_finetune(plain(cfg.finetune))
    check(cfg.trainer.accelerator, Accelerator, "trainer.accelerator")
    if cfg.trainer.max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs: {cfg.trainer.max_epochs} must be at least 1")
    _check_accelerator(str(cfg.trainer.accelerator))
    ops = cfg.surgery.ops
    if not isinstance(ops, list):
        raise ConfigError("surgery.ops: expected a list of ops")
    from tlexp.callbacks import check_monitor, resolve_mode

    check_monitor(cfg.train.monitor)
    from tlexp.baselines import check_init

    check_init(plain(cfg.source).get("init", "pretrained"))
    from tlexp.phases import check_unfreeze

    check_unfreeze(cfg.unfreeze)
    resolve_mode(cfg.train.monitor, cfg.train.mode)
    if cfg.callbacks is not None and not isinstance(cfg.callbacks, Mapping):
        raise ConfigError("callbacks: expected a mapping of name: {_target_: …} entries")


class Prepared:
    """The model after source, surgery and freeze, with its data: everything before compute."""

    def __init__(self, graph: LayerGraph, data: TlexpDataModule, cut: set[str], finetune: dict[str, Any],
                 optimizer_state: Mapping[str, Any] | None) -> None:
        self.graph, self.data, self.cut, self.finetune, self.optimizer_state = graph, data, cut, finetune, optimizer_state


def _training_terms(meta: dict[str, Any]) -> Any:
    """The source's training terms (an imported Keras model's regularizers and constraints, JSON
    data in ``graph.meta``) as the object the training loop applies, or None."""
    terms = meta.get("training_terms")
    if not terms:
        return None
    from tlexp.sources.keras import KerasTerms

    return KerasTerms(terms)


def prepare(cfg: DictConfig | TlexpConfig) -> Prepared:
    cfg = typed_config(cfg)
    validate(cfg)
    data_cfg = plain(cfg.data)
    source = plain(cfg.source)
    source_pre = _source_preprocessing(cfg)
    if data_cfg.get("type") == "image_folder":
        # image transforms follow the model (timm's data config): load the model first
        graph, finetune = load_graph(cfg)
        meta = dict(graph.meta)
        extra = {"data_config": meta["data_config"]} if meta.get("data_config") else {}
        if source_pre is not None and data_cfg.get("preprocessing", "source") == "source":
            from tlexp.data.preprocessing import ImagePreprocessing

            if not isinstance(source_pre, ImagePreprocessing):
                raise ConfigError(f"data.preprocessing: the source model was trained on {source_pre.kind} data, these are "
                                  "images; set data.preprocessing=refit")
            extra = {"data_config": source_pre.data_config}  # the size and normalization it was trained with
        data = build_datamodule(data_cfg, seed=cfg.seed, **extra)
        if source_pre is not None and data_cfg.get("preprocessing", "source") == "source":
            data.preprocessing_from = "source"
        data.setup()
    else:
        data = build_datamodule(data_cfg, seed=cfg.seed, source_preprocessing=source_pre)
        data.setup()
        graph, finetune = load_graph(cfg, data)
    graph = edit_graph(cfg, graph, data)
    if all(g.shape is not None for g in graph.graph_inputs):
        shapes = graph.trace_shapes(where="model")
        out = shapes[graph.outputs[0]][0]
        loss = str(ft.finetune_setting(finetune, "loss"))
        if ft.finetune_setting(finetune, "validate_output") and out:
            from tlexp.output_check import check_output

            check_output(graph, int(out[-1]), data.num_classes, loss)
        single_unit = loss == "bce" and tuple(out[-1:]) == (1,) and data.num_classes == 2
        if out[-1:] != (data.num_classes,) and not single_unit:
            raise ShapeError(
                f"surgery: the model's output has shape {list(out)} but data has {data.num_classes} classes; "
                "replace the output layer (surgery=replace_output) or set its size"
            )
    optimizer_state = None
    if source.get("load_optimizer_state"):
        from tlexp.sources import load_source_optimizer_state

        optimizer_state = load_source_optimizer_state(source)  # a saved model's, or a DL4J zip's
    ft.apply_graph_overrides(graph, finetune)
    if not any(p.requires_grad for p in graph.parameters()):
        frozen = f"freeze.up_to={cfg.freeze.up_to!r} freezes every layer" if graph.frozen else "the model has no parameters"
        raise ConfigError(f"freeze.up_to: nothing is left to train ({frozen}); freeze up to an earlier layer")
    _check_optimizer(graph, finetune)
    return Prepared(graph, data, set(graph.frozen), finetune, optimizer_state)


def _check_optimizer(graph: LayerGraph, finetune: Mapping[str, Any]) -> None:
    """Build the optimizer once over the trainable parameters before any compute, so an optimizer
    it refuses (a ``_target_`` that cannot take these arguments, a bad momentum) is one line
    before featurizing, baselines or Lightning's logs, not after them. Building it allocates no
    state (optimizers make their state at the first step); the fit builds its own."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fit's own build warns (e.g. a group matching nothing)
        ft.build_optimizer(graph, finetune)


def _source_preprocessing(cfg: TlexpConfig) -> Any:
    """The preprocessing a saved source model carries (None: another source, or saved without one)."""
    source = plain(cfg.source)
    if source.get("type") != "saved" or not source.get("path"):
        return None
    from tlexp.data.preprocessing import load_preprocessing

    return load_preprocessing(str(source["path"]))


def _device(cfg: DictConfig | TlexpConfig) -> torch.device:
    acc = cfg.trainer.accelerator
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _logger(cfg: TlexpConfig) -> Any:
    node = cfg.logger
    if not node or "_target_" not in node:
        return False
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except Exception as e:  # a missing optional package (tensorboard) surfaces here
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        why = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
        raise ConfigError(f"logger: cannot create {node['_target_']} ({why}); use logger=csv or install its package") from None


def _baselines(cfg: TlexpConfig, prepared: Prepared, device: torch.device) -> tuple[dict[str, Any], dict[str, str]]:
    """``baseline.source`` (the source as loaded) and ``baseline.before_fit`` on the test split."""
    from tlexp.baselines import source_baseline
    from tlexp.module import evaluate

    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    if cfg.baseline.source:
        result, why = source_baseline(plain(cfg.source), prepared.data, device)
        if result is not None:
            out["source"] = result
        else:
            skipped["source"] = why
            log.info("baseline.source: not defined, %s", why)
    if cfg.baseline.before_fit:
        out["before_fit"] = evaluate(prepared.graph, prepared.data.test_dataloader(), prepared.data.num_classes, device)
        prepared.graph.cpu()
    return out, skipped


def run(cfg: DictConfig | TlexpConfig) -> dict[str, Any]:
    """Run one experiment; returns the metrics also written to ``metrics.json``.

    A run that fails (a user error or anything else) leaves its folder marked: ``.hydra/``,
    ``tlexp.log`` with the error, and ``metrics.json`` with ``status: failed`` and the error;
    whatever else this run had created there (Lightning's logs, a checkpoint, a model) is removed,
    so a failed run never looks like a finished one. ``cfg``: the composed config, or the
    :class:`~tlexp.config.TlexpConfig` made of it (:func:`tlexp.config.typed_config`).
    """
    out_dir = Path(cfg.paths.output_dir)
    started_at = _utc_now()
    before = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    from tlexp._tempfiles import remove_stale

    remove_stale(out_dir)  # what an earlier, killed run in this folder left half-written
    try:
        cfg = typed_config(cfg)  # the code past here reads typed attributes
        metrics = _run(cfg, out_dir)
    except BaseException as e:
        _record_failure(cfg, out_dir, started_at, before, e)
        raise
    metrics = write_metrics(out_dir, metrics, status="completed", started_at=started_at)
    log.info("done: val accuracy %.4f, test accuracy %.4f, %s", metrics["val"]["accuracy"], metrics["test"]["accuracy"],
             metrics["timing"])
    if cfg.print_table:
        from tlexp._report import print_run_table

        print_run_table(cfg, metrics, out_dir)
    return metrics


def _error_line(e: BaseException) -> str:
    from tlexp.errors import TlexpError

    if isinstance(e, TlexpError):
        return str(e)
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _record_failure(cfg: DictConfig | TlexpConfig, out_dir: Path, started_at: str, before: set[str], e: BaseException) -> None:
    """Mark the run folder failed: the error in tlexp.log and metrics.json, nothing that looks done."""
    import shutil

    from tlexp.errors import TlexpError

    line = _error_line(e)
    if isinstance(e, (TlexpError, KeyboardInterrupt)):
        log.error("error: %s", line)
    else:
        log.exception("error: %s", line)
    try:
        keep = {".hydra", "tlexp.log", "metrics.json"}
        cache_dir, name = _failure_facts(cfg)
        cache = Path(str(cache_dir)).resolve() if cache_dir else None
        if out_dir.is_dir():
            for p in out_dir.iterdir():
                if p.name in keep or p.name in before or (cache is not None and p.resolve() == cache):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        write_metrics(out_dir, {"name": name, "error": line}, status="failed", started_at=started_at)
    except OSError as err:  # the folder itself may be what failed (read-only, full disk)
        log.error("could not mark the run failed in %s: %s", out_dir, err)


def _failure_facts(cfg: DictConfig | TlexpConfig) -> tuple[Any, Any]:
    """``paths.cache_dir`` and ``name`` of a failed run's config, which may have failed to
    convert (a required value unset): read off the composed config then, None where unset."""
    if isinstance(cfg, TlexpConfig):
        return cfg.paths.cache_dir, cfg.name
    from omegaconf import OmegaConf

    def get(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        except Exception:  # noqa: BLE001 - an interpolation that cannot resolve: not known
            return None

    return get("paths.cache_dir"), get("name")


def write_metrics(out_dir: Path, metrics: Mapping[str, Any], status: str, started_at: str) -> dict[str, Any]:
    """The one place ``metrics.json`` is written: adds ``status`` and ``timing.started_at`` /
    ``timing.finished_at`` (ISO 8601 UTC), replaces non-finite numbers by null (strict JSON)."""
    out = dict(metrics)
    out["status"] = status
    out["timing"] = {**dict(out.get("timing") or {}), "started_at": started_at, "finished_at": _utc_now()}
    out = _finite(out)
    _write_json(out_dir / "metrics.json", out)
    return out


def _finite(v: Any) -> Any:
    import math

    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _run(cfg: TlexpConfig, out_dir: Path) -> dict[str, Any]:
    import pytorch_lightning as pl

    from tlexp.module import evaluate
    from tlexp.sources.saved import save_model

    t_start = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    prepared = prepare(cfg)
    logger = _logger(cfg)  # before any compute: a logger that cannot be made is a config error
    graph, data, cut = prepared.graph, prepared.data, prepared.cut
    device = _device(cfg)
    class_weights = data.class_weights() if ft.finetune_setting(prepared.finetune, "class_weights") else None
    baseline, baseline_skipped = _baselines(cfg, prepared, device)

    from tlexp.callbacks import check_monitor
    from tlexp.phases import bn_modules, fit_phase, phase2_cut, scale_lrs

    check_monitor(cfg.train.monitor, data.num_classes)
    terms = _training_terms(prepared.graph.meta)
    unfreeze = cfg.unfreeze
    cut2 = phase2_cut(graph, cut, unfreeze.up_to) if unfreeze.epochs > 0 else None
    phases = [fit_phase(cfg, graph, data, cut, device, logger, out_dir, phase=1, max_epochs=int(cfg.trainer.max_epochs),
                        finetune=prepared.finetune, optimizer_state=prepared.optimizer_state, class_weights=class_weights,
                        training_terms=terms, later_phase=cut2 is not None)]
    if cut2 is not None:
        # phase 2: the cut moves back; newly unfrozen layers train at a scaled learning rate
        unfrozen = [n for n in graph.node_names if n in cut - cut2]
        finetune2 = scale_lrs(prepared.finetune, float(unfreeze.lr_scale))
        frozen_bn = bn_modules(graph, unfrozen) if unfreeze.bn == BatchNormMode.frozen else []
        p1 = phases[0].best
        phases.append(fit_phase(cfg, graph, data, cut2, device, logger, out_dir, phase=2,
                                max_epochs=int(unfreeze.epochs), finetune=finetune2, optimizer_state=None,
                                class_weights=class_weights, eval_modules=frozen_bn, start=p1.best_value,
                                training_terms=terms, after=phases[0]))
        phases[1].extra.update({"unfrozen": unfrozen, "lr": finetune2["lr"], "bn": plain(unfreeze.bn)})
    best = phases[-1].best
    featurize_info = phases[0].featurize
    t_feat = sum(ph.featurize_s for ph in phases)
    fit_s = sum(ph.fit_s for ph in phases)
    epochs_run = sum(ph.epochs for ph in phases)
    best_epoch = phases[0].best.best_epoch
    if len(phases) > 1 and phases[1].best.best_epoch is not None:
        best_epoch = phases[0].epochs + phases[1].best.best_epoch

    # the suffix shares its modules with the whole graph: the graph now holds the trained suffix
    val = evaluate(graph, data.val_dataloader(), data.num_classes, device)
    test = evaluate(graph, data.test_dataloader(), data.num_classes, device)
    graph.cpu()
    # the phase whose weights the graph holds: phase 2 unless it never beat phase 1's best
    kept = phases[-1] if len(phases) == 1 or phases[1].best.best_epoch is not None or not cfg.train.restore_best else phases[0]
    optimizer_state = None
    progress = _progress([ph.trainer.lightning_module for ph in phases], epochs_run)
    # the optimizer's state, schedule position and counters at the epoch whose weights were
    # restored (the last epoch's otherwise): a continued run goes on from there
    restored = bool(cfg.train.restore_best and kept.best.best_state is not None and kept.best.best_optimizer_state is not None)
    saved_progress = _saved_progress(phases, kept, progress) if restored else progress
    if ft.finetune_setting(prepared.finetune, "save_optimizer_state"):
        optimizer_state = kept.best.best_optimizer_state if restored else None
        if optimizer_state is None and kept.trainer.optimizers:
            optimizer_state = kept.trainer.optimizers[0].state_dict()
    if optimizer_state is not None:
        optimizer_state = {**optimizer_state, "progress": saved_progress}
    metrics = {
        "name": cfg.name,
        "status": "completed",
        "val": val,
        "test": test,
        "timing": {"featurize_s": round(t_feat, 4), "fit_s": round(fit_s, 4)},
        "featurize": featurize_info,
        "freeze": {"up_to": plain(cfg.freeze.up_to), "frozen": [n for n in graph.node_names if n in cut],
                   "boundary": graph.boundary(cut) if cut else []},
        "epochs": epochs_run,  # epochs completed (early stopping may end a run before max_epochs)
        "best_epoch": best_epoch,  # counting from 1 over both phases
        "monitor": {**best.summary(), "best_epoch": best_epoch,
                    "restored": bool(cfg.train.restore_best and best.best_state is not None)},
        "seed": int(cfg.seed),
        "num_classes": data.num_classes,
        "samples": {s: len(data.dataset(s)) for s in ("train", "val", "test")},
        "optimizer_state_loaded": prepared.optimizer_state is not None,
        # whose statistics prepared the inputs: the saved source model's, or this run's training split
        "preprocessing": data.preprocessing_from,
        # epochs / optimizer steps in all (a continued run counts on from the saved ones), the lr
        # of this run's first and last step, whether a saved schedule continued
        "progress": {k: v for k, v in progress.items() if k != "schedule"},
    }
    # whose optimizer state, schedule position and counters model/ holds: the restored best
    # epoch's ("best_epoch") or the last one's ("last_epoch"); experiment=continue goes on from there
    metrics["progress"]["saved"] = {"at": "best_epoch" if restored else "last_epoch",
                                    **{k: saved_progress[k] for k in ("epochs", "global_step")}}
    if len(phases) > 1:
        metrics["phases"] = [ph.summary(graph) for ph in phases]
    if baseline or baseline_skipped:
        metrics["baseline"] = baseline
        if baseline_skipped:
            metrics["baseline_skipped"] = baseline_skipped
    meta = {"name": cfg.name, "classes": data.class_names, "test_accuracy": test.get("accuracy"),
            # what a continued run (experiment=continue) needs to rebuild the same optimizer
            "finetune": json.loads(json.dumps({k: prepared.finetune.get(k) for k in CONTINUE_KEYS if k in prepared.finetune},
                                              default=str)),
            # a continued run keeps this frozen set: the one the saved weights and optimizer state were trained with
            "freeze_up_to": graph.boundary(kept.cut) if kept.cut else [],
            # the schedule a continued run takes back (with its position, from optimizer.safetensors)
            "schedule": json.loads(json.dumps({"schedule": ft.finetune_setting(prepared.finetune, "schedule") or "none",
                                               "schedule_args": ft.finetune_setting(prepared.finetune, "schedule_args") or {}},
                                              default=str)),
            "progress": {k: saved_progress[k] for k in ("epochs", "global_step")}}
    source_meta = dict(graph.meta)
    if source_meta.get("data_config"):
        meta["data_config"] = source_meta["data_config"]  # how its images are to be prepared
    # how this model's inputs were prepared travels with it (model/preprocessing.json)
    save_model(graph, out_dir / "model", optimizer_state=optimizer_state, meta=meta, preprocessing=data.preprocessing())
    metrics["timing"]["total_s"] = round(time.perf_counter() - t_start, 4)
    return metrics


def _progress(modules: list[Any], epochs_run: int) -> dict[str, Any]:
    """Counters over every phase, on from a continued run's; the schedule is the last phase's."""
    progress = modules[-1].progress(epochs_run)
    first = modules[0]
    before = first.progress_before
    progress["epochs"] = int(before.get("epochs", 0)) + epochs_run
    progress["global_step"] = int(before.get("global_step", 0)) + sum(m.steps_done for m in modules)
    progress["lr_first"] = first.lr_first
    if before:
        progress["continued_from"] = {k: before[k] for k in ("epochs", "global_step") if k in before}
        progress["schedule_restored"] = first.schedule_restored
    return progress


def _saved_progress(phases: list[Any], kept: Any, progress: Mapping[str, Any]) -> dict[str, Any]:
    """``progress`` as of ``kept``'s restored best epoch: counters over the phases before it and
    its own up to that epoch, its schedule's position then."""
    earlier = phases[:phases.index(kept)]
    at = kept.best.best_progress or {}
    before = phases[0].trainer.lightning_module.progress_before
    out = {k: v for k, v in progress.items() if k not in ("schedule", "lr_last")}
    out["epochs"] = int(before.get("epochs", 0)) + sum(ph.epochs for ph in earlier) + int(kept.best.best_epoch or 0)
    out["global_step"] = (int(before.get("global_step", 0)) + sum(ph.trainer.lightning_module.steps_done for ph in earlier)
                          + int(at.get("steps_done", 0)))
    out["lr_last"] = at.get("lr_last")
    if at.get("schedule") is not None:
        out["schedule"] = at["schedule"]
    return out


def _utc_now() -> str:
    """ISO 8601, UTC, to the millisecond (metrics.json timing.started_at / finished_at)."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    from tlexp._tempfiles import temp_path

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_text(json.dumps(data, indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)
