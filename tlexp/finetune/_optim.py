"""The optimizer: parameter groups, decoupled weight decay, loading a saved optimizer state.

Parameter groups. The trainable parameters are taken in ``graph.parameters()`` order and put in
groups: first the parameters no ``finetune.groups`` rule matches, then one group per rule in
config order (first matching rule wins, by node name). Each of those is split into weights
(decayed) and biases/normalization parameters (never decayed), and empty groups are dropped.
The layout depends only on the graph, its frozen set and ``finetune.groups``, so a state saved
by one run loads into the optimizer of another run with the same model and groups.

Decoupled weight decay. ``finetune.weight_decay`` shrinks each weight by ``1 - lr * wd`` before
the optimizer's own update, with the gradient taken at the undecayed weight (AdamW's rule,
Loshchilov & Hutter). ``adamw`` and ``adam`` use torch's own implementation; every other
optimizer (``sgd``, ``nesterov``, ``rmsprop``, ``adagrad`` and any ``_target_`` class) gets a
step pre-hook that runs the closure first, so Lightning's closure-based step decays after the
backward pass, and then shrinks the weights. Optimizers that evaluate their closure several
times per step (LBFGS) are not supported with weight decay.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

import torch

from tlexp.errors import ConfigError, warn
from tlexp.finetune._params import is_weight, rule_for, trainable_params
from tlexp.finetune._settings import GroupRule, Settings, parse
from tlexp.graph import LayerGraph

__all__ = ["build_optimizer", "param_groups", "load_optimizer_state", "WD_KEY"]

#: param-group key holding the decoupled weight decay that tlexp's step hook applies
WD_KEY = "tlexp_weight_decay"


def _uses_native_decay(cls: type) -> bool:
    """adam/adamw decay with torch's own AdamW rule; older torch lacks Adam's flag."""
    if issubclass(cls, torch.optim.AdamW):
        return True
    return cls is torch.optim.Adam and "decoupled_weight_decay" in inspect.signature(cls).parameters


def _builtin(s: Settings) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    name = s.optimizer
    if name in ("sgd", "nesterov"):
        return torch.optim.SGD, {"momentum": s.momentum, "nesterov": name == "nesterov"}
    if name == "adam":
        kw: dict[str, Any] = {"betas": s.betas, "eps": s.eps}
        if _uses_native_decay(torch.optim.Adam):
            kw["decoupled_weight_decay"] = True
        return torch.optim.Adam, kw
    if name == "adamw":
        return torch.optim.AdamW, {"betas": s.betas, "eps": s.eps, "weight_decay": 0.0}
    if name == "rmsprop":
        return torch.optim.RMSprop, {"momentum": s.momentum, "eps": s.eps}
    if name == "adagrad":
        return torch.optim.Adagrad, {"eps": s.eps}
    raise AssertionError(name)  # parse() admits only OPTIMIZERS


def param_groups(graph: LayerGraph, s: Settings, native_decay: bool) -> list[dict[str, Any]]:
    """torch param-group dicts for the trainable parameters of ``graph`` (see the module doc)."""
    buckets: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for np_ in trainable_params(graph):
        rule = rule_for(np_.node, s.groups)
        buckets.setdefault((-1 if rule is None else rule.index, is_weight(np_.param)), []).append(np_.param)
    groups = []
    for rule in (None, *s.groups):
        index = -1 if rule is None else rule.index
        if rule is not None and (index, True) not in buckets and (index, False) not in buckets:
            warn(
                f"finetune.groups[{index}]: pattern {rule.label!r} matches no trainable parameter; "
                "the entry has no effect"
            )
        lr, wd = _lr_and_decay(s, rule)
        label = "default" if rule is None else rule.label
        for weights, name in ((True, label), (False, f"{label}/no_decay")):
            if (index, weights) in buckets:
                decay = wd if weights else s.weight_decay_bias
                group_lr = lr if weights or s.bias_lr is None else s.bias_lr
                group = {"params": buckets[(index, weights)], "lr": group_lr, "name": name}
                group.update({"weight_decay": decay} if native_decay else {"weight_decay": 0.0, WD_KEY: decay})
                groups.append(group)
    return groups


def _lr_and_decay(s: Settings, rule: GroupRule | None) -> tuple[float, float]:
    if rule is None:
        return s.base_lr, s.weight_decay
    lr = rule.lr if rule.lr is not None else s.base_lr * (rule.lr_scale if rule.lr_scale is not None else 1.0)
    return lr, rule.weight_decay if rule.weight_decay is not None else s.weight_decay


def build_optimizer(graph: LayerGraph, cfg: Any) -> torch.optim.Optimizer:
    """The optimizer for the trainable parameters of ``graph`` as ``cfg`` (finetune) says."""
    s = parse(cfg)
    if isinstance(s.optimizer, dict):
        factory = _target_factory(s.optimizer)
        native = False
    else:
        cls, kwargs = _builtin(s)
        factory = functools.partial(cls, lr=s.base_lr, **kwargs)
        native = _uses_native_decay(cls)
    groups = param_groups(graph, s, native)
    if not groups:
        raise ConfigError("finetune: the model has no trainable parameters (is every layer frozen? see freeze.up_to)")
    try:
        optimizer = factory(params=groups)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"finetune.optimizer: cannot build {_describe(s.optimizer)}: {e}") from None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            f"finetune.optimizer: {_describe(s.optimizer)} built a {type(optimizer).__name__}, not a torch optimizer"
        )
    if not native and any(g.get(WD_KEY, 0.0) > 0 for g in optimizer.param_groups):
        optimizer.register_step_pre_hook(_decoupled_decay_hook)
    return optimizer


def _describe(opt: str | dict[str, Any]) -> str:
    return opt if isinstance(opt, str) else str(opt.get("_target_"))


def _target_factory(spec: dict[str, Any]) -> Any:
    """A partial of the ``_target_`` optimizer; the parameters are bound later (no tensors go through OmegaConf).

    ``_convert_: all`` gives the optimizer plain lists and dicts, so its state_dict stays JSON-able.
    """
    from hydra.utils import instantiate

    try:
        factory = instantiate({"_convert_": "all", **spec, "_partial_": True})
    except Exception as e:  # Hydra wraps any failure in InstantiationException
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"finetune.optimizer: cannot instantiate {spec.get('_target_')!r}: {msg}") from None
    return factory


@torch.no_grad()
def _decay(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        wd = group.get(WD_KEY, 0.0)
        if not wd:
            continue
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            torch._foreach_mul_(params, 1.0 - group["lr"] * wd)


def _decoupled_decay_hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Evaluate the closure (forward/backward), decay, then let the optimizer step on that result."""
    args, kwargs = tuple(args), dict(kwargs)
    closure = kwargs.pop("closure", None)
    if closure is None and len(args) > 1:
        closure, args = args[1], args[:1] + args[2:]
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
        kwargs["closure"] = lambda: loss
    _decay(optimizer)
    return args, kwargs


# ---- a saved state -----------------------------------------------------------------------------

#: param-group keys that describe a schedule or tlexp's bookkeeping, not the optimizer type
_NOT_OPTIONS = {
    "params", "name", "param_names", "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum", WD_KEY,
}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a saved ``optimizer.state_dict()`` (moments, step counts) into ``optimizer``.

    The saved state must come from the same kind of optimizer over the same trainable
    parameters in the same groups; otherwise a ConfigError says what differs. Only the
    per-parameter state is taken: learning rates and other hyperparameters stay as the current
    ``finetune`` config (and schedule) set them.
    """
    where = "source.load_optimizer_state"
    if not isinstance(state, Mapping) or "state" not in state or "param_groups" not in state:
        raise ConfigError(f"{where}: not an optimizer state (expected 'state' and 'param_groups')")
    saved_groups = list(state["param_groups"])
    now_groups = optimizer.param_groups
    saved_sizes = [len(g["params"]) for g in saved_groups]
    now_sizes = [len(g["params"]) for g in now_groups]
    if saved_sizes != now_sizes:
        raise ConfigError(
            f"{where}: the saved state has parameter groups of sizes {saved_sizes}, this model's optimizer "
            f"has {now_sizes}; the trainable layers, freeze.up_to or finetune.groups differ from the run that saved it"
        )
    for i, (sg, ng) in enumerate(zip(saved_groups, now_groups)):
        a, b = set(sg) - _NOT_OPTIONS, set(ng) - _NOT_OPTIONS
        if not (a <= b or b <= a):
            raise ConfigError(
                f"{where}: the saved state is for another optimizer (group {i} options {sorted(a)}, "
                f"this optimizer has {sorted(b)}); set finetune.optimizer as in the run that saved it"
            )
    _check_shapes(where, state, saved_groups, now_groups)
    keep = [{k: v for k, v in g.items() if k != "params"} for g in now_groups]
    per_param = {_param_id(k): v for k, v in state["state"].items()}
    optimizer.load_state_dict({"state": per_param, "param_groups": saved_groups})
    for group, options in zip(optimizer.param_groups, keep):
        params = group["params"]
        group.clear()
        group.update(options)
        group["params"] = params


def _param_id(key: Any) -> Any:
    # a state read back from JSON may carry the parameter ids as text
    return int(key) if isinstance(key, str) and key.isdigit() else key


def _check_shapes(where: str, state: Mapping[str, Any], saved_groups: list, now_groups: list) -> None:
    by_id = {}
    for sg, ng in zip(saved_groups, now_groups):
        by_id.update(zip(sg["params"], ng["params"]))
    for pid, pstate in state["state"].items():
        key = _param_id(pid)
        if key not in by_id:
            raise ConfigError(f"{where}: the saved state names parameter {pid!r}, which no saved group holds")
        shape = tuple(by_id[key].shape)
        for k, v in (pstate or {}).items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != shape:
                raise ConfigError(
                    f"{where}: saved {k!r} of parameter {key} has shape {list(v.shape)}, the parameter has "
                    f"{list(shape)}; the architecture differs from the run that saved it"
                )
