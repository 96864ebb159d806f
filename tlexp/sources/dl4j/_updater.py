"""``updaterState.bin`` -> a torch optimizer's state, so training continues where DL4J stopped.

DL4J keeps all updater state in one flat array. Parameters that follow each other in the flat
parameter vector and share an updater configuration form an *updater block*; a block with k
state arrays (Adam: m and v) stores them one after the other, each covering every parameter of
the block in parameter order ([m of the block | v of the block]). Parameters without state
(batch-norm mean/var, DL4J's NoOp updater, plain Sgd) end a block. Each state array is laid out
exactly like the parameters, so it is mapped to torch's layout by the same code that maps them.

Updater -> torch optimizer (state names): Sgd -> SGD; Nesterovs -> SGD(nesterov) with
``momentum_buffer = -v / lr`` (DL4J's v is the negated, lr-scaled buffer); Adam -> Adam
(exp_avg, exp_avg_sq, step); AMSGrad -> Adam(amsgrad); RmsProp -> RMSprop(alpha=rmsDecay);
AdaGrad -> Adagrad (sum); AdaDelta -> Adadelta (square_avg, acc_delta); AdaMax -> Adamax
(exp_avg, exp_inf); Nadam -> NAdam.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from tlexp.errors import ConfigError, SourceError
from tlexp.sources.dl4j._config import simple

__all__ = ["updater_of", "map_updater_state", "STATE_SIZES"]

#: DL4J updater -> number of state arrays per parameter
STATE_SIZES = {"Sgd": 0, "NoOp": 0, "Nesterovs": 1, "RmsProp": 1, "AdaGrad": 1, "AdaDelta": 2, "Adam": 2,
               "AdaMax": 2, "Nadam": 2, "AMSGrad": 3}
_LEGACY = {"SGD": "Sgd", "NESTEROVS": "Nesterovs", "RMSPROP": "RmsProp", "ADAGRAD": "AdaGrad", "ADADELTA": "AdaDelta",
           "ADAM": "Adam", "ADAMAX": "AdaMax", "NADAM": "Nadam", "AMSGRAD": "AMSGrad", "NONE": "NoOp"}
_NO_STATE_PARAMS = {"mean", "var", "log10stdev"}
_BIAS_KEYS = {"b", "bF", "bB", "fb", "bb", "beta"}


def _num(v: Any, default: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def updater_of(layer: dict[str, Any], key: str) -> tuple[str, dict[str, Any]]:
    """(DL4J updater name, its hyperparameters) for parameter ``key`` of a layer config."""
    if key in _NO_STATE_PARAMS:
        return "NoOp", {}
    u = layer.get("biasUpdater") if key in _BIAS_KEYS and layer.get("biasUpdater") else layer.get("iupdater")
    if isinstance(u, dict):
        if "@class" in u:
            name, f = simple(str(u["@class"])), {k: v for k, v in u.items() if k != "@class"}
        else:
            ((name, f),) = u.items()
        lr = f.get("learningRate")
        schedule = f.get("learningRateSchedule")
        if isinstance(schedule, dict):
            # DL4J's learningRate is NaN when a schedule gives it: the schedule's value at 0
            from tlexp.sources.dl4j._schedule import check_schedule, value_at

            spec = check_schedule(schedule, f"source.path: the {name} updater's learningRateSchedule")
            lr = value_at(spec, 0)
        hyper: dict[str, Any] = {
            "lr": _num(lr, 1e-3), "momentum": _num(f.get("momentum"), 0.9), "beta1": _num(f.get("beta1"), 0.9),
            "beta2": _num(f.get("beta2"), 0.999), "eps": _num(f.get("epsilon"), 1e-8),
            "rho": _num(f.get("rho"), 0.95), "decay": _num(f.get("rmsDecay"), 0.95),
        }
        if isinstance(schedule, dict):
            hyper["schedule"] = spec
        return name, hyper
    legacy = str(layer.get("updater") or "SGD").upper()
    name = _LEGACY.get(legacy, legacy)
    lr = _num(layer.get("biasLearningRate") if key in _BIAS_KEYS else layer.get("learningRate"), 0.1)
    hyper = {
        "lr": lr, "momentum": _num(layer.get("momentum"), 0.9), "beta1": _num(layer.get("adamMeanDecay"), 0.9),
        "beta2": _num(layer.get("adamVarDecay"), 0.999), "eps": _num(layer.get("epsilon"), 1e-8),
        "rho": _num(layer.get("rho"), 0.95), "decay": _num(layer.get("rmsDecay"), 0.95),
    }
    return name, hyper


def _overrides(name: str, h: dict[str, Any]) -> dict[str, Any]:
    """The ``finetune`` settings that build the torch optimizer matching DL4J's updater (and its
    learning-rate schedule: ``finetune.schedule=dl4j``)."""
    out = _optimizer_overrides(name, h)
    if h.get("schedule"):
        out.update({"schedule": "dl4j", "schedule_args": {"schedule": h["schedule"]}})
    return out


def _optimizer_overrides(name: str, h: dict[str, Any]) -> dict[str, Any]:
    if name == "Sgd":
        return {"optimizer": "sgd", "lr": h["lr"], "momentum": 0.0}
    if name == "Nesterovs":
        return {"optimizer": "nesterov", "lr": h["lr"], "momentum": h["momentum"]}
    if name == "Adam":
        return {"optimizer": "adam", "lr": h["lr"], "betas": [h["beta1"], h["beta2"]], "eps": h["eps"]}
    if name == "AdaGrad":
        return {"optimizer": "adagrad", "lr": h["lr"], "eps": h["eps"]}
    target = {
        "RmsProp": {"_target_": "torch.optim.RMSprop", "lr": h["lr"], "alpha": h["decay"], "eps": h["eps"]},
        "AdaDelta": {"_target_": "torch.optim.Adadelta", "lr": 1.0, "rho": h["rho"], "eps": h["eps"]},
        "AdaMax": {"_target_": "torch.optim.Adamax", "lr": h["lr"], "betas": [h["beta1"], h["beta2"]], "eps": h["eps"]},
        "Nadam": {"_target_": "torch.optim.NAdam", "lr": h["lr"], "betas": [h["beta1"], h["beta2"]], "eps": h["eps"]},
        "AMSGrad": {"_target_": "torch.optim.Adam", "lr": h["lr"], "betas": [h["beta1"], h["beta2"]], "eps": h["eps"],
                    "amsgrad": True},
    }.get(name)
    if target is None:
        raise ConfigError(
            f"source.load_optimizer_state: DL4J updater {name} has no torch counterpart; supported: "
            f"{', '.join(k for k in STATE_SIZES if k != 'NoOp')} (or set source.load_optimizer_state=false)"
        )
    return {"optimizer": target, "lr": target["lr"]}


_TORCH_KEYS = {
    "Nesterovs": ["momentum_buffer"], "RmsProp": ["square_avg"], "AdaGrad": ["sum"],
    "AdaDelta": ["square_avg", "acc_delta"], "Adam": ["exp_avg", "exp_avg_sq"], "AdaMax": ["exp_avg", "exp_inf"],
    "Nadam": ["exp_avg", "exp_avg_sq"], "AMSGrad": ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
}


def map_updater_state(conf: dict[str, Any], built: list, state: np.ndarray, iteration: int, build_graph,
                      epoch: int = 0) -> dict[str, Any]:
    """``{"finetune_overrides": …, "by_name": {param name: {torch state key: tensor}}}``."""
    flat = state.reshape(-1)
    # every parameter of the flat vector: (position, size, updater, hyper)
    params: list[tuple[int, int, str, dict[str, Any]]] = []
    pos = 0
    for b in built:
        for key, size in b.param_names:
            name, hyper = updater_of(b.fields, key)
            params.append((pos, size, name, hyper))
            pos += size
    kinds = {n for _, _, n, _ in params if n != "NoOp"}
    unknown = sorted(n for n in kinds if n not in STATE_SIZES)
    if unknown:
        raise ConfigError(
            f"source.load_optimizer_state: DL4J updater {unknown[0]} has no torch counterpart; supported: "
            f"{', '.join(k for k in STATE_SIZES if k != 'NoOp')}"
        )
    if len(kinds) != 1:
        raise ConfigError(
            f"source.load_optimizer_state: the DL4J model uses several updaters ({', '.join(sorted(kinds))}); "
            "one torch optimizer cannot continue it (set source.load_optimizer_state=false)"
        )
    (kind,) = kinds
    hyper = next(h for _, _, n, h in params if n == kind)
    k = STATE_SIZES[kind]
    # the state arrays, scattered back to parameter positions: one pseudo parameter vector per state
    pseudo = [np.zeros(pos, dtype=np.float64) for _ in range(k)]
    i = 0
    j = 0
    while j < len(params):
        if STATE_SIZES.get(params[j][2], 0) == 0:
            j += 1
            continue
        start = j
        while (j + 1 < len(params) and params[j + 1][2] == params[start][2] and params[j + 1][3] == params[start][3]
               and params[j + 1][0] == params[j][0] + params[j][1]):
            j += 1
        block = params[start : j + 1]
        total = sum(s for _, s, _, _ in block)
        for si in range(k):
            seg = flat[i + si * total : i + (si + 1) * total]
            if seg.size != total:
                raise SourceError(
                    f"source.path: updaterState.bin holds {flat.size} values, fewer than the configuration's "
                    f"{kind} state needs"
                )
            o = 0
            for p0, s, _, _ in block:
                pseudo[si][p0 : p0 + s] = seg[o : o + s]
                o += s
        i += k * total
        j += 1
    if i != flat.size:
        raise SourceError(
            f"source.path: updaterState.bin holds {flat.size} values but the configuration's {kind} state needs {i}"
        )
    by_name: dict[str, dict[str, Any]] = {}
    keys = _TORCH_KEYS.get(kind, [])
    lr_now = hyper["lr"]
    if hyper.get("schedule"):
        from tlexp.sources.dl4j._schedule import interval_of, value_at

        # DL4J's Nesterov velocity carries the learning rate of the steps that made it: the
        # latest one (the schedule's value at the iteration saved) turns it back into a buffer
        at = iteration if interval_of(hyper["schedule"]) == "step" else epoch
        lr_now = value_at(hyper["schedule"], at) or hyper["lr"]
    for si in range(k):
        g, shadow, _ = build_graph(conf)
        from tlexp.sources.dl4j import _assign

        _assign(shadow, pseudo[si], "updaterState.bin")
        for pname, p in g.named_parameters():
            v = p.detach().clone()
            if kind == "Nesterovs":
                v = -v / lr_now
            by_name.setdefault(pname, {})[keys[si]] = v
    if kind != "Nesterovs" and kind != "Sgd":
        for st in by_name.values():
            st["step"] = torch.tensor(float(iteration))
            if kind == "Nadam":
                psi, mu_prod = 0.004, 1.0
                for t in range(1, iteration + 1):
                    mu_prod *= hyper["beta1"] * (1.0 - 0.5 * 0.96 ** (t * psi))
                st["mu_product"] = torch.tensor(mu_prod)
    out = {"finetune_overrides": _overrides(kind, hyper), "by_name": by_name, "updater": kind, "iteration": iteration}
    if hyper.get("schedule"):
        from tlexp.sources.dl4j._schedule import interval_of

        # where the schedule stands: the next step is DL4J's iteration ``iterationCount`` (or epoch)
        at = iteration if interval_of(hyper["schedule"]) == "step" else epoch
        out["schedule"] = {"name": "dl4j", "args": {"schedule": hyper["schedule"]},
                           "state": {"last_epoch": at, "_step_count": at + 1, "lr_lambdas": [None]}}
    return out
