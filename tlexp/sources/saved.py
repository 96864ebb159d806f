"""``source=saved``: tlexp's own model format, loaded without unpickling.

A model folder holds ``config.json`` (the architecture from the layer registry, no import
paths), ``weights.safetensors`` (parameters and buffers) and, when kept,
``optimizer.safetensors`` (optimizer state tensors; the non-tensor parts as JSON metadata) so a
run can continue training where another stopped (DL4J's ``saveUpdater``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tlexp.errors import ConfigError, SourceError, TlexpError
from tlexp.graph import LayerGraph

__all__ = [
    "MODEL_FORMAT",
    "save_model",
    "load_model",
    "load_optimizer_state",
    "optimizer_state_to_tensors",
    "from_config",
]

MODEL_FORMAT = "tlexp.model/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


def optimizer_state_to_tensors(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten ``optimizer.state_dict()`` into tensors plus JSON metadata for safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for k, v in pstate.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{pid}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    meta = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    if state.get("progress"):
        # the schedule's state and the epoch / step counters, restored with the optimizer state
        meta["progress"] = json.dumps(state["progress"])
    return tensors, meta


def _optimizer_state_from_file(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "param_groups" not in meta:
        raise SourceError(f"{path}: not a tlexp optimizer state file (no param_groups metadata)")
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, pid, name = key.split("/", 2)
        state.setdefault(int(pid), {})[name] = t
    for pid, vals in json.loads(meta.get("scalars", "{}")).items():
        state.setdefault(int(pid), {}).update(vals)
    out = {"state": state, "param_groups": json.loads(meta["param_groups"])}
    if meta.get("progress"):
        out["progress"] = json.loads(meta["progress"])
    return out


def save_model(
    graph: LayerGraph,
    directory: str | os.PathLike[str],
    optimizer_state: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    preprocessing: Any = None,
) -> Path:
    """Write ``graph`` (and optionally an optimizer state) as a model folder, atomically.

    ``preprocessing`` (:mod:`tlexp.data.preprocessing`; by default the graph's own, as
    :func:`load_model` set it) is written beside it as ``preprocessing.json``.

    The folder is assembled under a temporary name beside the target and renamed into place,
    so a crash leaves the previous folder (or none), never a half-written one.
    """
    from tlexp._tempfiles import temp_path, umask_mode

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    tmp.mkdir()  # the user's umask, like every other file tlexp writes (not mkdtemp's 0700)
    try:
        config = {"format": MODEL_FORMAT, "architecture": graph.to_config(), "meta": dict(meta or {})}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=False))
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in graph.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": MODEL_FORMAT})
        if optimizer_state is not None:
            tensors, ometa = optimizer_state_to_tensors(optimizer_state)
            save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata=ometa)
        if preprocessing is None:
            preprocessing = getattr(graph, "preprocessing", None)
        if preprocessing is not None:
            from tlexp.data.preprocessing import save_preprocessing

            save_preprocessing(preprocessing, tmp)
        for f in tmp.iterdir():  # safetensors writes 0600
            f.chmod(umask_mode())
        if target.exists():
            old = temp_path(target.with_name(f"{target.name}.old"))
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise SourceError(f"source.path: {str(directory)!r} is not a model folder (expected {CONFIG_FILE} and {WEIGHTS_FILE} in it)")
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise SourceError(f"source.path: {str(directory)!r} has no {CONFIG_FILE}; is it a tlexp model folder?")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"source.path: {cfg_path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); the file is damaged") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT or "architecture" not in config:
        raise SourceError(f"source.path: {cfg_path} is not a tlexp model config (format {MODEL_FORMAT!r} expected)")
    return config


#: the most parameter and buffer elements a model file may declare (env TLEXP_MAX_PARAMS)
MAX_ELEMENTS = int(float(os.environ.get("TLEXP_MAX_PARAMS", "2e9")))


def _build(architecture: Any, where: Path, meta: Mapping[str, Any] | None = None) -> LayerGraph:
    try:
        return LayerGraph.from_config(architecture, infer_shapes=False, meta=meta)
    except TlexpError as e:
        raise SourceError(f"source.path: {where}: {e}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError, AttributeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"source.path: {where}: the architecture cannot be built ({first})") from None


def _check_sizes(architecture: Any, config_path: Path, weights_path: Path) -> None:
    """Build the architecture on torch's ``meta`` device (nothing allocated) and compare every
    declared tensor with the weights file's header and the size limit, before building it for real."""
    from safetensors import safe_open

    with torch.device("meta"):
        skeleton = _build(architecture, config_path)
    declared = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    total = sum(int(torch.Size(s).numel()) for s in declared.values())
    if total > MAX_ELEMENTS:
        raise SourceError(
            f"source.path: {config_path} declares {total:,} parameter and buffer values, above the limit of "
            f"{MAX_ELEMENTS:,} (TLEXP_MAX_PARAMS); refusing to allocate it"
        )
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise SourceError(f"source.path: {weights_path} cannot be read ({e}); the file is truncated or damaged") from None
    missing = sorted(set(declared) - set(stored))
    unexpected = sorted(set(stored) - set(declared))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise SourceError(f"source.path: {weights_path} does not fit {CONFIG_FILE}: {what}")
    for k, shape in declared.items():
        if stored[k] != shape:
            raise SourceError(
                f"source.path: {weights_path} does not fit {CONFIG_FILE}: {k} has shape {list(stored[k])}, "
                f"the architecture needs {list(shape)}"
            )


def load_model(directory: str | os.PathLike[str]) -> LayerGraph:
    """Load a model folder written by :func:`save_model` (or by a tlexp run's ``model/``).

    The file decides nothing before it is checked: the architecture is first built on the
    ``meta`` device and its sizes compared with the weights file and a limit."""
    from tlexp._resources import resolve_path

    directory = resolve_path(str(directory))  # pkg://models/… as in a config
    config = _read_config(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SourceError(f"source.path: {str(directory)!r} has no {WEIGHTS_FILE}")
    _check_sizes(config["architecture"], directory / CONFIG_FILE, weights_path)
    graph = _build(config["architecture"], directory / CONFIG_FILE, dict(config.get("meta") or {}))
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SourceError(f"source.path: {weights_path} cannot be read ({e}); the file is truncated or damaged") from None
    expected = graph.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise SourceError(f"source.path: {weights_path} does not fit {CONFIG_FILE}: {what}")
    for k, v in weights.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise SourceError(
                f"source.path: {weights_path} does not fit {CONFIG_FILE}: {k} has shape {list(v.shape)}, "
                f"the architecture needs {list(expected[k].shape)}"
            )
    graph.load_state_dict(weights)
    from tlexp.data.preprocessing import load_preprocessing

    # how its inputs were prepared (None for a model saved without it): new data the same way
    graph.preprocessing = load_preprocessing(directory)
    graph.eval()  # every loader returns inference mode (dropout off, batch-norm running statistics)
    return graph


def load_optimizer_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The optimizer state saved beside a model (``source.load_optimizer_state=true``)."""
    path = Path(directory) / OPTIMIZER_FILE
    if not path.is_file():
        raise SourceError(
            f"source.load_optimizer_state: {str(directory)!r} has no {OPTIMIZER_FILE}; "
            "save the model with finetune.save_optimizer_state=true or set source.load_optimizer_state=false"
        )
    try:
        return _optimizer_state_from_file(path)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise SourceError(f"source.path: {path} cannot be read ({e}); the file is truncated or damaged") from None


def optimizer_state_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`load_optimizer_state` of the ``source`` config node's folder."""
    return load_optimizer_state(str(cfg.get("path")))


def from_config(cfg: Mapping[str, Any]) -> LayerGraph:
    path = cfg.get("path")
    if not path:
        raise ConfigError("source.path: a saved model needs source.path=DIR (a folder with config.json and weights.safetensors)")
    from tlexp._resources import resolve_path

    graph = load_model(resolve_path(str(path)))
    if cfg.get("load_optimizer_state"):
        # the saved state fits only the optimizer that made it: take its kind and groups back
        saved = graph.meta.get("finetune") or {}
        if saved:
            graph = graph.rebuilt(meta={**graph.meta, "finetune_overrides": dict(saved)})
        schedule = graph.meta.get("schedule")
        if schedule and schedule.get("schedule", "none") != "none":
            # the saved run's schedule continues unless the config names one (assemble)
            graph = graph.rebuilt(meta={**graph.meta, "schedule_default": dict(schedule)})
    return graph
