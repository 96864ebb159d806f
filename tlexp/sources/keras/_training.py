"""A Keras file's stored training config (optimizer, loss) as tlexp fine-tune fields.

Keras 2 writes ``training_config.optimizer_config`` with class names like ``SGD``,
``Custom>Adam`` or ``Adam`` and ``learning_rate`` (old files: ``lr``); Keras 3 writes the same
key in HDF5 files and ``compile_config.optimizer`` (with ``module``/``registered_name``) in
``.keras`` files. What has no tlexp equivalent (a learning-rate schedule, centered
RMSprop, Nadam, a loss other than cross-entropy) fails with the value and what is supported.
"""

from __future__ import annotations

from typing import Any

from tlexp.errors import ConfigError

__all__ = ["map_training_config", "OPTIMIZERS", "LOSSES"]

OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")

#: Keras loss -> tlexp finetune.loss
LOSSES = {
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "CategoricalCrossentropy": "cross_entropy",
    "SparseCategoricalCrossentropy": "cross_entropy",
}


def _fail(what: str, value: Any, valid: str) -> ConfigError:
    return ConfigError(f"source.enforce_training_config: {what} {value!r} cannot be mapped to a tlexp fine-tune; supported: {valid}")


def _number(cfg: dict[str, Any], *keys: str, default: float | None = None) -> float | None:
    for key in keys:
        if key in cfg and cfg[key] is not None:
            v = cfg[key]
            if isinstance(v, dict):
                raise _fail(f"{key} (a schedule)", v.get("class_name", v), "a constant number")
            return float(f"{float(v):.7g}")  # Keras stores float32 values: 0.01, not 0.009999999776
    return default


def _loss(loss: Any) -> str:
    if isinstance(loss, dict):
        loss = loss.get("class_name") or loss.get("config", {}).get("name")
    if isinstance(loss, (list, tuple)) or loss is None:
        raise _fail("loss", loss, ", ".join(LOSSES))
    if str(loss) not in LOSSES:
        raise _fail("loss", loss, ", ".join(LOSSES))
    return LOSSES[str(loss)]


def map_training_config(training: dict[str, Any] | None) -> dict[str, Any]:
    """Fine-tune overrides: optimizer, lr, momentum, betas, eps, weight_decay, loss.

    ``optimizer`` is a name (sgd, nesterov, adam, adamw), or a ``_target_`` mapping where the
    torch optimizer needs an argument the fine-tune fields do not name (RMSprop's rho as
    ``alpha``, Adagrad's initial accumulator, AMSGrad).
    """
    if not training:
        raise ConfigError(
            "source.enforce_training_config: the Keras file stores no training config (it was saved uncompiled, "
            "or as JSON); set source.enforce_training_config=false"
        )
    opt = training.get("optimizer_config")
    if not isinstance(opt, dict):
        raise ConfigError("source.enforce_training_config: the stored training config has no optimizer")
    cls = str(opt.get("class_name", "")).split(">")[-1]
    cfg = opt.get("config") or {}
    if cls not in OPTIMIZERS:
        raise _fail("optimizer", cls, ", ".join(OPTIMIZERS))
    lr = _number(cfg, "learning_rate", "lr")
    out: dict[str, Any] = {"lr": lr if lr is not None else 1e-3}
    if _number(cfg, "decay", default=0.0):
        raise _fail("decay (a learning-rate schedule)", cfg["decay"], "0")
    wd = _number(cfg, "weight_decay", default=0.0) or 0.0
    if cls == "SGD":
        momentum = _number(cfg, "momentum", default=0.0) or 0.0
        out["optimizer"] = "nesterov" if cfg.get("nesterov") else "sgd"
        out["momentum"] = momentum
    elif cls in ("Adam", "AdamW"):
        out["betas"] = [_number(cfg, "beta_1", default=0.9), _number(cfg, "beta_2", default=0.999)]
        out["eps"] = _number(cfg, "epsilon", default=1e-7)
        out["optimizer"] = cls.lower()
        if cfg.get("amsgrad"):
            out["optimizer"] = {"_target_": f"torch.optim.{cls}", "betas": out["betas"], "eps": out["eps"], "amsgrad": True}
    elif cls == "RMSprop":
        if cfg.get("centered"):
            raise _fail("optimizer", "RMSprop(centered=True)", "RMSprop without centered")
        out["momentum"] = _number(cfg, "momentum", default=0.0)
        out["eps"] = _number(cfg, "epsilon", default=1e-7)
        # Keras's rho is torch's alpha (Keras's default 0.9, torch's 0.99): name the class to pass it
        out["optimizer"] = {"_target_": "torch.optim.RMSprop", "alpha": _number(cfg, "rho", default=0.9),
                            "momentum": out["momentum"], "eps": out["eps"]}
    else:  # Adagrad
        out["eps"] = _number(cfg, "epsilon", default=1e-7)
        # Keras starts the accumulator at 0.1 by default, torch at 0: name the class to pass it
        out["optimizer"] = {"_target_": "torch.optim.Adagrad", "eps": out["eps"],
                            "initial_accumulator_value": _number(cfg, "initial_accumulator_value", default=0.1)}
    out["weight_decay"] = wd
    out["loss"] = _loss(training.get("loss"))
    return out
