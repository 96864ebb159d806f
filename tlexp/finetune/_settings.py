"""The ``finetune`` config read into checked, typed settings.

Every other part of this package starts from :func:`parse`, so a bad value fails the same way
(one ConfigError naming ``finetune.<field>``, the value and the valid choices) whichever
function meets it first, and :func:`tlexp.finetune.validate_finetune` can check a config
before any compute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tlexp.errors import ConfigError, check, choices
from tlexp.graph import ACTIVATIONS
from tlexp.graph._weight_init import WEIGHT_INITS as _WEIGHT_INIT_TABLE

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SCHEDULE_ARGS",
    "GRADIENT_NORMALIZATIONS",
    "WEIGHT_INITS",
    "GroupRule",
    "Settings",
    "parse",
    "setting",
]

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop", "adagrad")

#: schedule -> its ``schedule_args`` and their defaults (None: required)
SCHEDULE_ARGS: dict[str, dict[str, Any]] = {
    "none": {},
    "step": {"step_size": 1, "gamma": 0.1, "interval": "epoch"},
    "multistep": {"milestones": None, "gamma": 0.1, "interval": "epoch"},
    "exponential": {"gamma": 0.95, "interval": "epoch"},
    "cosine": {"min_lr": 0.0, "interval": "step"},
    "warmup_cosine": {"warmup_epochs": 1.0, "warmup_start_factor": 0.01, "min_lr": 0.0},
    "onecycle": {
        "pct_start": 0.3,
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "anneal_strategy": "cos",
        "three_phase": False,
        "cycle_momentum": False,
    },
    # DL4J's learningRateSchedule (its JSON, org.nd4j.linalg.schedule.*), as DL4J computes it
    "dl4j": {"schedule": None},
}
SCHEDULES = tuple(SCHEDULE_ARGS)

GRADIENT_NORMALIZATIONS = (
    "none",
    "clip_norm",
    "clip_value",
    "clip_element_wise_absolute_value",
    "renormalize_l2_per_layer",
    "clip_l2_per_layer",
    "renormalize_l2_per_param_type",
    "clip_l2_per_param_type",
)

#: the schemes of the one weight-init table (tlexp.graph._weight_init)
WEIGHT_INITS = tuple(_WEIGHT_INIT_TABLE)

#: keys a ``finetune.groups`` entry may set (None values count as unset)
GROUP_KEYS = ("pattern", "lr", "lr_scale", "weight_decay", "l2")

#: keys of an optimizer mapping that tlexp supplies itself
_TARGET_RESERVED = {
    "params": "tlexp passes the trainable parameters itself",
    "weight_decay": "set finetune.weight_decay instead (tlexp applies it decoupled, AdamW-style, to any optimizer)",
}


@dataclass(frozen=True)
class GroupRule:
    """One ``finetune.groups`` entry: node-name patterns and what they override."""

    index: int
    patterns: tuple[str, ...]
    lr: float | None = None
    lr_scale: float | None = None
    weight_decay: float | None = None
    l2: float | None = None

    @property
    def label(self) -> str:
        return ",".join(self.patterns)


@dataclass(frozen=True)
class Settings:
    optimizer: str | dict[str, Any]
    lr: float
    momentum: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    l2: float
    schedule: str
    schedule_args: dict[str, Any]
    dropout: float | None
    activation: str | None
    apply_to_output: bool
    weight_init: str | None
    bias_init: float | None
    gradient_normalization: str
    threshold: float
    seed: int | None
    groups: tuple[GroupRule, ...] = field(default_factory=tuple)
    l1: float = 0.0
    l1_bias: float = 0.0
    l2_bias: float = 0.0
    weight_decay_bias: float = 0.0
    bias_lr: float | None = None
    constraints: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def base_lr(self) -> float:
        """The learning rate of parameters no group overrides (a target mapping's own lr wins)."""
        if isinstance(self.optimizer, dict) and "lr" in self.optimizer:
            return float(self.optimizer["lr"])
        return self.lr


# ---- reading values ------------------------------------------------------------------------


def _plain(cfg: Any) -> dict[str, Any]:
    """A plain dict from a dict, an OmegaConf node or a dataclass instance."""
    if cfg is None:
        return {}
    from tlexp.config import plain

    cfg = plain(cfg)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return {str(k): _plain_value(v) for k, v in cfg.items()}
    raise ConfigError(f"finetune: expected a mapping of options, got {type(cfg).__name__}")


def _plain_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain_value(x) for x in v]
    return v


def _number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    """A finite float within bounds; numeric strings are accepted (YAML reads ``1e-3`` as text)."""
    return float(check(value, float, name, low=low, high=high, low_open=low_open, high_open=high_open,
                       text_numbers=True))


def _int(value: Any, name: str, low: int | None = None) -> int:
    return int(check(value, int, name, low=low, text_numbers=True))


def _name(value: Any, name: str, valid: tuple[str, ...] | list[str]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ConfigError(f"{name}: unknown value {value!r}; valid: {choices(valid)}")
    return value


def _bool(value: Any, name: str) -> bool:
    return bool(check(value, bool, name))


# ---- the fields ----------------------------------------------------------------------------


def _optimizer(value: Any) -> str | dict[str, Any]:
    if isinstance(value, Mapping):
        return _target_optimizer(dict(value))
    if isinstance(value, str):
        return _name(value.lower(), "finetune.optimizer", OPTIMIZERS)
    raise ConfigError(
        f"finetune.optimizer: {value!r} is not an optimizer; valid: {choices(OPTIMIZERS)}, "
        "or a mapping with _target_ (e.g. torch.optim.RAdam)"
    )


def _target_optimizer(spec: dict[str, Any]) -> dict[str, Any]:
    target = spec.get("_target_")
    if not isinstance(target, str) or not target:
        raise ConfigError(
            f"finetune.optimizer: a mapping needs _target_ (an optimizer class such as torch.optim.RAdam); "
            f"got keys {choices(sorted(spec)) or '(none)'}; or use a name: {choices(OPTIMIZERS)}"
        )
    for key, why in _TARGET_RESERVED.items():
        if key in spec:
            raise ConfigError(f"finetune.optimizer.{key}: not allowed in an optimizer mapping; {why}")
    if "lr" in spec:
        _number(spec["lr"], "finetune.optimizer.lr", low=0.0)
    obj = _locate(target)
    import torch

    if isinstance(obj, type) and not issubclass(obj, torch.optim.Optimizer):
        raise ConfigError(f"finetune.optimizer._target_: {target!r} is not a torch.optim.Optimizer subclass")
    if not callable(obj):
        raise ConfigError(f"finetune.optimizer._target_: {target!r} is not callable")
    return spec


def _locate(target: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as e:  # Hydra raises ImportError or its own errors for a bad path
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"finetune.optimizer._target_: cannot import {target!r} ({msg})") from None


def _betas(value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"finetune.betas: {value!r} is not a pair of numbers like [0.9, 0.999]")
    return (
        _number(value[0], "finetune.betas[0]", low=0.0, high=1.0, high_open=True),
        _number(value[1], "finetune.betas[1]", low=0.0, high=1.0, high_open=True),
    )


def _schedule_args(schedule: str, value: Any) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"finetune.schedule_args: {value!r} is not a mapping")
    allowed = SCHEDULE_ARGS[schedule]
    for key in value:
        if key not in allowed:
            raise ConfigError(
                f"finetune.schedule_args.{key}: not an argument of schedule {schedule!r}; "
                f"valid: {choices(allowed) or '(none)'}"
            )
    args = {**allowed, **dict(value)}
    missing = [k for k, v in args.items() if v is None]
    if missing:
        raise ConfigError(f"finetune.schedule_args.{missing[0]}: schedule {schedule!r} needs it")
    return _check_schedule_args(args)


def _check_schedule_args(args: dict[str, Any]) -> dict[str, Any]:
    name = "finetune.schedule_args."
    checks = {
        "step_size": lambda v, n: _int(v, n, low=1),
        "gamma": lambda v, n: _number(v, n, low=0.0, low_open=True),
        "min_lr": lambda v, n: _number(v, n, low=0.0),
        "warmup_epochs": lambda v, n: _number(v, n, low=0.0),
        "warmup_start_factor": lambda v, n: _number(v, n, low=0.0, high=1.0, low_open=True),
        "pct_start": lambda v, n: _number(v, n, low=0.0, high=1.0, low_open=True, high_open=True),
        "div_factor": lambda v, n: _number(v, n, low=0.0, low_open=True),
        "final_div_factor": lambda v, n: _number(v, n, low=0.0, low_open=True),
        "anneal_strategy": lambda v, n: _name(v, n, ("cos", "linear")),
        "three_phase": _bool,
        "cycle_momentum": _bool,
        "interval": lambda v, n: _name(v, n, ("epoch", "step")),
        "milestones": _milestones,
        "schedule": _dl4j_schedule,
    }
    return {k: checks[k](v, name + k) for k, v in args.items()}


def _dl4j_schedule(value: Any, name: str) -> dict[str, Any]:
    from tlexp.sources.dl4j._schedule import check_schedule

    return check_schedule(value, name)


def _milestones(value: Any, name: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name}: {value!r} is not a list of epochs like [10, 20]")
    out = [_int(v, f"{name}[{i}]", low=1) for i, v in enumerate(value)]
    if out != sorted(set(out)):
        raise ConfigError(f"{name}: {value!r} must be increasing")
    return out


def _groups(value: Any) -> tuple[GroupRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"finetune.groups: {value!r} is not a list of {{pattern: ..., lr: ...}} entries")
    return tuple(_group(i, g) for i, g in enumerate(value))


def _group(i: int, entry: Any) -> GroupRule:
    where = f"finetune.groups[{i}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: {entry!r} is not a mapping like {{pattern: 'layer4.*', lr: 1e-3}}")
    for key in entry:
        if key not in GROUP_KEYS:
            raise ConfigError(f"{where}.{key}: unknown key; valid: {choices(GROUP_KEYS)}")
    pattern = entry.get("pattern")
    patterns = [pattern] if isinstance(pattern, str) else pattern
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(
            f"{where}.pattern: {pattern!r} is not a layer-name pattern (fnmatch, e.g. 'layer4.*') or a list of them"
        )
    opt = {k: entry.get(k) for k in ("lr", "lr_scale", "weight_decay", "l2")}
    if opt["lr"] is not None and opt["lr_scale"] is not None:
        raise ConfigError(f"{where}: set lr or lr_scale, not both")
    checked = {k: None if v is None else _number(v, f"{where}.{k}", low=0.0) for k, v in opt.items()}
    return GroupRule(index=i, patterns=tuple(patterns), **checked)


def parse(cfg: Any) -> Settings:
    """Read and check a ``finetune`` config (a mapping, an OmegaConf node or a dataclass).

    Settings pass through unchanged, so a caller that runs every step can parse once.
    """
    if isinstance(cfg, Settings):
        return cfg
    c = _plain(cfg)
    _check_keys(c)
    c = {**defaults(), **c}  # the schema's defaults (tlexp.config.FinetuneConfig), never re-declared
    get = c.get
    optimizer = _optimizer(get("optimizer"))
    schedule = _name(get("schedule") or "none", "finetune.schedule", SCHEDULES)
    momentum = _number(get("momentum"), "finetune.momentum", low=0.0, high=1.0, high_open=True)
    if optimizer == "nesterov" and momentum == 0.0:
        raise ConfigError("finetune.momentum: 0 with optimizer nesterov; valid: (0, 1) (Nesterov needs momentum)")
    dropout = get("dropout")
    retain = get("dropout_retain")
    if retain is not None:
        if dropout is not None:
            raise ConfigError(
                "finetune.dropout_retain: set dropout (torch's drop probability) or dropout_retain (DL4J's "
                "retain probability), not both"
            )
        retain = _number(retain, "finetune.dropout_retain", low=0.0, high=1.0, low_open=True)
        dropout = 1.0 - retain
    activation = get("activation")
    weight_init = get("weight_init")
    from tlexp.config import Loss

    check(get("loss"), Loss, "finetune.loss")  # read by tlexp.module and tlexp.train through setting()
    for key in ("validate_output", "class_weights", "save_optimizer_state"):
        _bool(get(key), f"finetune.{key}")
    bias_init = get("bias_init")
    seed = get("seed")
    return Settings(
        optimizer=optimizer,
        lr=_number(get("lr"), "finetune.lr", low=0.0),
        momentum=momentum,
        betas=_betas(get("betas")),
        eps=_number(get("eps"), "finetune.eps", low=0.0, low_open=True),
        weight_decay=_number(get("weight_decay"), "finetune.weight_decay", low=0.0),
        l2=_number(get("l2"), "finetune.l2", low=0.0),
        schedule=schedule,
        schedule_args=_schedule_args(schedule, get("schedule_args")),
        dropout=None if dropout is None else _number(dropout, "finetune.dropout", low=0.0, high=1.0, high_open=True),
        activation=None if activation is None else _name(activation, "finetune.activation", list(ACTIVATIONS)),
        apply_to_output=_bool(get("apply_to_output"), "finetune.apply_to_output"),
        weight_init=None if weight_init is None else _name(weight_init, "finetune.weight_init", WEIGHT_INITS),
        bias_init=None if bias_init is None else _number(bias_init, "finetune.bias_init"),
        gradient_normalization=_name(
            get("gradient_normalization") or "none", "finetune.gradient_normalization", GRADIENT_NORMALIZATIONS
        ),
        threshold=_number(
            get("gradient_normalization_threshold"), "finetune.gradient_normalization_threshold",
            low=0.0, low_open=True,
        ),
        seed=None if seed is None else _int(seed, "finetune.seed"),
        groups=_groups(get("groups")),
        l1=_number(get("l1"), "finetune.l1", low=0.0),
        l1_bias=_number(get("l1_bias"), "finetune.l1_bias", low=0.0),
        l2_bias=_number(get("l2_bias"), "finetune.l2_bias", low=0.0),
        weight_decay_bias=_number(get("weight_decay_bias"), "finetune.weight_decay_bias", low=0.0),
        bias_lr=None if get("bias_lr") is None else _number(get("bias_lr"), "finetune.bias_lr", low=0.0),
        constraints=_constraints(get("constraints")),
    )


#: constraint type -> its arguments and defaults (None: required)
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "max_norm": {"max": None},
    "min_max_norm": {"min": None, "max": None, "rate": 1.0},
    "unit_norm": {},
    "non_negative": {},
}
_APPLY_TO = ("weights", "biases", "all")


def _constraints(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"finetune.constraints: {value!r} is not a list like [{{type: max_norm, max: 2.0}}]")
    out = []
    for i, entry in enumerate(value):
        where = f"finetune.constraints[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: {entry!r} is not a mapping like {{type: max_norm, max: 2.0}}")
        kind = _name(entry.get("type"), f"{where}.type", list(CONSTRAINTS))
        allowed = {"type", "apply_to", *CONSTRAINTS[kind]}
        for key in entry:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}: unknown key for {kind}; valid: {choices(sorted(allowed))}")
        c: dict[str, Any] = {"type": kind, "apply_to": _name(entry.get("apply_to", "weights"), f"{where}.apply_to",
                                                             _APPLY_TO)}
        for arg, default in CONSTRAINTS[kind].items():
            v = entry.get(arg, default)
            if v is None:
                raise ConfigError(f"{where}.{arg}: {kind} needs {arg}")
            c[arg] = _number(v, f"{where}.{arg}", low=0.0)
        if kind == "min_max_norm" and c["min"] > c["max"]:
            raise ConfigError(f"{where}: min {c['min']} is above max {c['max']}")
        out.append(c)
    return tuple(out)


def setting(cfg: Mapping[str, Any], key: str) -> Any:
    """One ``finetune`` value as given, or the schema's default (a plain value) when left out."""
    return cfg[key] if key in cfg else defaults()[key]


def defaults() -> dict[str, Any]:
    """``finetune``'s defaults as plain values, read off the one schema (tlexp.config.FinetuneConfig)."""
    from tlexp.config import FinetuneConfig

    out: dict[str, Any] = {}
    for f in dataclasses.fields(FinetuneConfig):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = value.value if isinstance(value, Enum) else value
    return out


def _check_keys(c: Mapping[str, Any]) -> None:
    """Unknown ``finetune`` keys are refused from Python too (Hydra's schema refuses them from YAML)."""
    from tlexp.config import FinetuneConfig

    known = {f.name for f in dataclasses.fields(FinetuneConfig)}
    for key in c:
        if key not in known:
            raise ConfigError(f"finetune.{key}: unknown key; valid: {choices(sorted(known))}")
