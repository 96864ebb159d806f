"""DL4J's learning-rate schedules (``org.nd4j.linalg.schedule.*``), computed as DL4J computes them.

An updater's ``learningRateSchedule`` gives the learning rate of each iteration (``ITERATION``:
the optimizer step about to be taken, counting from 0) or epoch (``EPOCH``). tlexp runs it as
``finetune.schedule=dl4j`` (a torch ``LambdaLR`` stepped per step or per epoch), and a run
continued from a DL4J zip starts it at the zip's ``iterationCount`` / ``epochCount``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tlexp.errors import ConfigError

__all__ = ["SCHEDULES", "check_schedule", "value_at", "interval_of"]

#: DL4J schedule class -> its numeric fields
SCHEDULES: dict[str, tuple[str, ...]] = {
    "FixedSchedule": ("value",),
    "ExponentialSchedule": ("initialValue", "gamma"),
    "InverseSchedule": ("initialValue", "gamma", "power"),
    "PolySchedule": ("initialValue", "power", "maxIter"),
    "SigmoidSchedule": ("initialValue", "gamma", "stepSize"),
    "StepSchedule": ("initialValue", "decayRate", "step"),
    "MapSchedule": (),
}


def check_schedule(spec: Any, where: str = "finetune.schedule_args.schedule") -> dict[str, Any]:
    """A DL4J schedule's JSON (``{"@class": "org.nd4j.linalg.schedule.StepSchedule", ...}``),
    checked and reduced to plain values."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("@class"), str):
        raise ConfigError(f"{where}: {spec!r} is not a DL4J schedule (a mapping with '@class')")
    cls = spec["@class"].rsplit(".", 1)[-1]
    if cls not in SCHEDULES:
        raise ConfigError(f"{where}: DL4J schedule {cls} is not supported; supported: {', '.join(SCHEDULES)}")
    out: dict[str, Any] = {"@class": f"org.nd4j.linalg.schedule.{cls}"}
    if cls != "FixedSchedule":
        kind = str(spec.get("scheduleType", "ITERATION")).upper()
        if kind not in ("ITERATION", "EPOCH"):
            raise ConfigError(f"{where}.scheduleType: {kind!r}; valid: ITERATION, EPOCH")
        out["scheduleType"] = kind
    for key in SCHEDULES[cls]:
        try:
            out[key] = float(spec[key])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}.{key}: DL4J's {cls} needs a number, got {spec.get(key)!r}") from None
    if cls == "MapSchedule":
        values = spec.get("values")
        try:
            table = {str(int(k)): float(v) for k, v in dict(values or {}).items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.values: {values!r} is not a mapping of step -> value") from None
        if "0" not in table:
            raise ConfigError(f"{where}.values: DL4J's MapSchedule needs a value for 0")
        out["values"] = table
    return out


def interval_of(spec: Mapping[str, Any]) -> str:
    """'step' for an ITERATION schedule, 'epoch' for an EPOCH one."""
    return "epoch" if spec.get("scheduleType") == "EPOCH" else "step"


def value_at(spec: Mapping[str, Any], i: int) -> float:
    """DL4J's ``ISchedule.valueAt``: the value at iteration (or epoch) ``i``."""
    cls = str(spec["@class"]).rsplit(".", 1)[-1]
    if cls == "FixedSchedule":
        return float(spec["value"])
    if cls == "MapSchedule":
        keys = sorted(int(k) for k in spec["values"])
        at = max(k for k in keys if k <= i) if i >= keys[0] else keys[0]
        return float(spec["values"][str(at)])
    v0 = float(spec["initialValue"])
    if cls == "ExponentialSchedule":
        return v0 * float(spec["gamma"]) ** i
    if cls == "InverseSchedule":
        return v0 / (1.0 + float(spec["gamma"]) * i) ** float(spec["power"])
    if cls == "PolySchedule":
        # as DL4J's PolySchedule computes it, zero from maxIter on
        max_iter = float(spec["maxIter"])
        return 0.0 if i >= max_iter else v0 * (1.0 + i / max_iter) ** float(spec["power"])
    if cls == "SigmoidSchedule":
        return v0 / (1.0 + math.exp(-float(spec["gamma"]) * (i - float(spec["stepSize"]))))
    if cls == "StepSchedule":
        return v0 * float(spec["decayRate"]) ** math.floor(i / float(spec["step"]))
    raise ConfigError(f"DL4J schedule {cls} is not supported")
