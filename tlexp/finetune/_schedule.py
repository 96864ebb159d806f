"""Learning-rate schedules as Lightning ``lr_scheduler`` config dicts, built from torch's schedulers.

``interval`` says when Lightning steps the scheduler: once per epoch or once per optimizer
step. ``step``, ``multistep`` and ``exponential`` count epochs by default (``step_size`` and
``milestones`` are in epochs; with ``interval: step`` they are in optimizer steps). ``cosine``
anneals over every optimizer step of the run by default. ``warmup_cosine`` and ``onecycle``
always work per step; ``warmup_epochs`` may be fractional. Each group keeps its own base
learning rate (``finetune.groups``); ``min_lr`` is absolute and the same for every group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler as sched

from tlexp.errors import ConfigError
from tlexp.finetune._settings import parse

__all__ = ["build_scheduler", "scheduler_state", "restore_scheduler"]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Any, max_epochs: int, steps_per_epoch: int
) -> dict[str, Any] | None:
    """The Lightning scheduler config for ``finetune.schedule`` (None for ``none``).

    ``steps_per_epoch`` counts optimizer steps (batches divided by gradient accumulation).
    """
    s = parse(cfg)
    if s.schedule == "none":
        return None
    build = _BUILDERS[s.schedule]
    scheduler, interval = build(optimizer, dict(s.schedule_args), _Run(s.schedule, max_epochs, steps_per_epoch))
    return {"scheduler": scheduler, "interval": interval, "frequency": 1}


class _Run:
    """The length of the run, checked only by the schedules that need it."""

    def __init__(self, schedule: str, max_epochs: int, steps_per_epoch: int) -> None:
        self.schedule, self.max_epochs, self.steps_per_epoch = schedule, max_epochs, steps_per_epoch

    def epochs(self) -> int:
        if not isinstance(self.max_epochs, int) or self.max_epochs < 1:
            raise ConfigError(
                f"finetune.schedule: {self.schedule!r} needs a known number of epochs (trainer.max_epochs >= 1), "
                f"got {self.max_epochs!r}"
            )
        return self.max_epochs

    def steps(self) -> int:
        if not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch < 1:
            raise ConfigError(
                f"finetune.schedule: {self.schedule!r} needs the number of optimizer steps per epoch (>= 1), "
                f"got {self.steps_per_epoch!r}; is the training split empty?"
            )
        return self.epochs() * self.steps_per_epoch


def _step(opt, a, run):
    return sched.StepLR(opt, step_size=a["step_size"], gamma=a["gamma"]), a["interval"]


def _multistep(opt, a, run):
    return sched.MultiStepLR(opt, milestones=a["milestones"], gamma=a["gamma"]), a["interval"]


def _exponential(opt, a, run):
    return sched.ExponentialLR(opt, gamma=a["gamma"]), a["interval"]


def _cosine(opt, a, run):
    length = run.steps() if a["interval"] == "step" else run.epochs()
    return sched.CosineAnnealingLR(opt, T_max=length, eta_min=a["min_lr"]), a["interval"]


def _warmup_cosine(opt, a, run):
    total = run.steps()
    warmup = round(a["warmup_epochs"] * run.steps_per_epoch)
    if warmup >= total:
        raise ConfigError(
            f"finetune.schedule_args.warmup_epochs: {a['warmup_epochs']!r} leaves no steps to anneal "
            f"({warmup} warmup steps of {total}); valid: < trainer.max_epochs"
        )
    cosine = sched.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=a["min_lr"])
    if warmup == 0:
        return cosine, "step"
    linear = sched.LinearLR(opt, start_factor=a["warmup_start_factor"], end_factor=1.0, total_iters=warmup)
    return sched.SequentialLR(opt, [linear, cosine], milestones=[warmup]), "step"


def _onecycle(opt, a, run):
    if a["cycle_momentum"] and not ({"momentum", "betas"} & set(opt.defaults)):
        raise ConfigError(
            "finetune.schedule_args.cycle_momentum: the optimizer has no momentum or betas to cycle; set it to false"
        )
    scheduler = sched.OneCycleLR(
        opt,
        max_lr=[g["lr"] for g in opt.param_groups],
        total_steps=run.steps(),
        pct_start=a["pct_start"],
        anneal_strategy=a["anneal_strategy"],
        div_factor=a["div_factor"],
        final_div_factor=a["final_div_factor"],
        three_phase=a["three_phase"],
        cycle_momentum=a["cycle_momentum"],
    )
    return scheduler, "step"


def _dl4j(opt, a, run):
    from tlexp.sources.dl4j._schedule import interval_of, value_at

    spec = a["schedule"]
    v0 = value_at(spec, 0)
    if v0 == 0:
        raise ConfigError("finetune.schedule_args.schedule: the DL4J schedule's value at 0 is 0; tlexp scales from it")
    # each group's lr (finetune.lr: the schedule's value at 0) times value(i) / value(0)
    return sched.LambdaLR(opt, lambda i: value_at(spec, i) / v0), interval_of(spec)


_BUILDERS = {
    "step": _step,
    "multistep": _multistep,
    "exponential": _exponential,
    "cosine": _cosine,
    "warmup_cosine": _warmup_cosine,
    "onecycle": _onecycle,
    "dl4j": _dl4j,
}


# ---- continuing a run: the schedule where it stopped ------------------------------------------

#: param-group values a schedule moves (and reads back: torch's schedulers are chained, each
#: step starts from the group's current lr), restored with the schedule's own state
_SCHEDULED_KEYS = ("lr", "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """``scheduler.state_dict()`` as plain JSON values (saved beside the optimizer state)."""
    import json

    return json.loads(json.dumps(scheduler.state_dict(), default=_jsonable))


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON")


def _from_json(state: Any) -> Any:
    if isinstance(state, dict):
        out = {k: _from_json(v) for k, v in state.items()}
        if isinstance(out.get("milestones"), dict):  # MultiStepLR keeps a Counter of ints
            out["milestones"] = Counter({int(k): int(v) for k, v in out["milestones"].items()})
        return out
    if isinstance(state, list):
        return [_from_json(v) for v in state]
    return state


def restore_scheduler(optimizer: torch.optim.Optimizer, scheduler: Any, state: Mapping[str, Any],
                      saved_groups: list[Mapping[str, Any]] | None) -> None:
    """Put ``scheduler`` (built as the saved run built it) where the saved run stopped.

    The schedule's own counters come from ``state``; each param group's scheduled values (lr,
    initial_lr, OneCycle's max/min lr and momentum) from the saved optimizer's groups, so the
    next step uses the learning rate an uninterrupted run would have used.
    """
    scheduler.load_state_dict(_from_json(dict(state)))
    cycle = bool(state.get("cycle_momentum"))
    for group, saved in zip(optimizer.param_groups, saved_groups or []):
        for key in _SCHEDULED_KEYS + (("momentum", "betas") if cycle else ()):
            if key in saved:
                group[key] = tuple(saved[key]) if key == "betas" else saved[key]
    last = state.get("_last_lr")
    if not last and not saved_groups:
        # a position without its learning rates (DL4J's iteration count): computed from the
        # schedule, as the step at that position would
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            last = [float(x) for x in scheduler.get_lr()]
        scheduler._last_lr = list(last)
    if last and not saved_groups:
        for group, lr in zip(optimizer.param_groups, last):
            group["lr"] = lr
