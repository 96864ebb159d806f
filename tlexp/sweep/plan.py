"""The featurize plan of a grid sweep, made before any job starts.

The sweep's overrides are expanded into its jobs (as Hydra's basic sweeper does), each job's
model is prepared (source, surgery, freeze — no compute) and its cache key computed exactly as
the job will compute it (once for jobs that differ only in training settings, ``TRAINING_ONLY``:
``planned_as`` names the job whose key they share). Jobs with the same key share it; keys of nested cuts of the same
graph over the same data form a group, featurized in one pass over each split by its deepest
prefix (:func:`tlexp.featurize.featurize_cuts`). Every job then finds its cut in the cache and
stays an independent run. ``featurize_plan.json`` in the sweep folder records the keys, cuts and
jobs of each group, and the passes made.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tlexp.config import TlexpConfig, plain, typed_config

__all__ = ["expand_grid", "make_plan", "PLAN_FILE"]

log = logging.getLogger(__name__)

PLAN_FILE = "featurize_plan.json"

#: overrides that change nothing a featurization depends on (the prefix, its inputs, the dtype,
#: the device): jobs that differ only in these have the same key, so the plan prepares one of them
#: and the others share it (a job still computes its own key when it runs: a wrong guess here
#: would cost a cache miss, never a wrong feature)
TRAINING_ONLY = frozenset({"finetune.lr", "finetune.weight_decay", "finetune.momentum", "trainer.max_epochs",
                           "trainer.enable_progress_bar", "logger", "print_table", "optimized_metric"})


def _featurize_signature(overrides: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in TRAINING_ONLY))
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def expand_grid(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides for a basic-sweeper grid; None for other sweepers (adaptive)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.get("sweeper") or {}
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    args += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))  # type: ignore[arg-type]
    parsed = OverridesParser.create().parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose

    return compose(config_name=config_name, overrides=list(overrides))


def _describe_source(cfg: TlexpConfig) -> str:
    src = plain(cfg.source)
    what = src.get("name") or src.get("path") or ""
    return f"{src.get('type', '?')}: {what}".strip().rstrip(":")


def make_plan(config: DictConfig, sweep_dir: str | Path, execute: bool = True) -> dict[str, Any] | None:
    """Plan (and, with ``execute``, run) the sweep's featurizations; writes featurize_plan.json."""
    import pytorch_lightning as pl
    import torch

    from tlexp.featurize import featurize_cuts, featurize_key
    from tlexp.phases import _autocast_dtype
    from tlexp.train import _device, prepare

    grid = expand_grid(config)
    if grid is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():  # job configs interpolate ${hydra:…}; the sweep's own answers
        HydraConfig.instance().set_config(config)
    t0 = time.perf_counter()
    config_name = str(config.hydra.job.config_name)
    jobs: list[dict[str, Any]] = []
    prepared: dict[int, Any] = {}
    planned_as: dict[tuple[str, ...], int] = {}  # a signature's first prepared job
    for num, overrides in enumerate(grid):
        job: dict[str, Any] = {"num": num, "overrides": overrides}
        jobs.append(job)
        signature = _featurize_signature(overrides)
        twin = planned_as.get(signature)
        if twin is not None:
            job.update({k: jobs[twin][k] for k in ("key", "up_to", "cut_size", "boundary")}, planned_as=twin)
            prepared[num] = prepared[twin]
            continue
        try:
            cfg = typed_config(_compose(config_name, overrides))  # the job's config, as its run reads it
            if cfg.freeze.mode != "featurize" or cfg.freeze.up_to is None:
                job["skipped"] = "nothing featurized (freeze.mode or freeze.up_to)"
                continue
            if cfg.featurize.augment_copies:
                job["skipped"] = "augmented copies are featurized by the job itself"
                continue
            pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as run() does before prepare
            p = prepare(cfg)
        except Exception as e:  # noqa: BLE001 - the job reports its own error when it runs
            job["skipped"] = f"not planned: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
            continue
        if not p.cut:
            job["skipped"] = "nothing frozen"
            continue
        device = _device(cfg)
        autocast = _autocast_dtype(cfg, device)
        prefix, _ = p.graph.split(p.cut)
        boundary = p.graph.boundary(p.cut)
        job["key"] = featurize_key(prefix, boundary, p.data, plain(cfg.featurize.dtype), 0, autocast)
        job["up_to"] = plain(cfg.freeze.up_to)
        job["cut_size"] = len(p.cut)
        job["boundary"] = boundary
        featurize_setting = json.dumps({"data": p.data.identity(), "dtype": plain(cfg.featurize.dtype), "autocast": str(autocast),
                          "device": str(device), "batch_size": int(cfg.featurize.batch_size),
                          "cache_dir": str(cfg.paths.cache_dir)}, sort_keys=True, default=str)
        prepared[num] = (cfg, p, featurize_setting, device, autocast)
        planned_as[signature] = num

    # groups: a leader (deepest cut) and the keys of its nested shallower cuts over the same data
    groups: list[dict[str, Any]] = []
    by_key: dict[str, dict[str, Any]] = {}
    for num in sorted(prepared, key=lambda n: -jobs[n]["cut_size"]):
        job = jobs[num]
        if job["key"] in by_key:
            by_key[job["key"]]["jobs"].append(num)
            continue
        cfg, p, featurize_setting, _, _ = prepared[num]
        placed = False
        for g in groups:
            lead_cfg, lead, lead_setting, _, lead_autocast = prepared[g["leader"]]
            if lead_setting != featurize_setting or not p.cut <= lead.cut:
                continue
            lead.graph.set_frozen(p.cut)
            pre, _ = lead.graph.split(p.cut)
            same = featurize_key(pre, lead.graph.boundary(p.cut), lead.data, plain(lead_cfg.featurize.dtype), 0,
                                 lead_autocast) == job["key"]
            lead.graph.set_frozen(lead.cut)
            if same:
                entry = {"key": job["key"], "up_to": job["up_to"], "boundary": job["boundary"], "jobs": [num],
                         "cut": p.cut}
                g["cuts"].append(entry)
                by_key[job["key"]] = entry
                placed = True
                break
        if not placed:
            entry = {"key": job["key"], "up_to": job["up_to"], "boundary": job["boundary"], "jobs": [num], "cut": p.cut}
            groups.append({"leader": num, "cuts": [entry]})
            by_key[job["key"]] = entry

    out_groups = []
    for gi, g in enumerate(groups):
        lead_cfg, lead, _, device, autocast = prepared[g["leader"]]
        record: dict[str, Any] = {
            "source": _describe_source(lead_cfg), "data": lead.data.identity(), "dtype": plain(lead_cfg.featurize.dtype),
            "deepest": g["cuts"][0]["up_to"],
            "cuts": [{k: v for k, v in c.items() if k != "cut"} for c in g["cuts"]],
        }
        if execute:
            info = [{"up_to": c["up_to"], "source": record["source"], "data": record["data"],
                     "writer": f"sweep {sweep_dir} (featurize plan)"} for c in g["cuts"]]
            with torch.no_grad():
                res = featurize_cuts(lead.graph, [c["cut"] for c in g["cuts"]], lead.data, lead_cfg.paths.cache_dir,
                                     dtype=plain(lead_cfg.featurize.dtype), batch_size=lead_cfg.featurize.batch_size,
                                     device=device, autocast=autocast, info=info)
            assert res.keys == [c["key"] for c in g["cuts"]], "plan keys differ from the featurized keys"
            record.update(passes=res.passes, hits=res.hits, seconds=round(res.seconds, 4))
            log.info("featurize plan: group %d (%s): %d cut(s) in %s pass(es) per split, %.2fs", gi,
                     record["source"], len(g["cuts"]), res.passes, res.seconds)
        out_groups.append(record)

    plan = {
        "sweep_dir": str(sweep_dir), "jobs": [{k: v for k, v in j.items() if k not in ("cut_size",)} for j in jobs],
        "groups": out_groups, "executed": execute, "seconds": round(time.perf_counter() - t0, 4),
    }
    path = Path(sweep_dir) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(plan, indent=2, default=str))
    os.replace(tmp, path)
    return plan
