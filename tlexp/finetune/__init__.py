"""How the unfrozen part is trained: the ``finetune`` config group.

The equivalent of Deeplearning4j's FineTuneConfiguration: optimizer (``sgd``, ``nesterov``,
``adam``, ``adamw``, ``rmsprop``, ``adagrad``, or any optimizer class as a Hydra ``_target_``
mapping), learning-rate schedule, decoupled weight decay and an L2 penalty (two distinct
options), dropout and activation overrides, init of new layers, gradient normalization, and
per-layer-group learning rates (``groups``: fnmatch patterns on layer names, first match wins).

The LightningModule calls, in order: :func:`validate_finetune` (before any compute),
:func:`apply_graph_overrides` (on the whole model), :func:`build_optimizer` and
:func:`build_scheduler` (in ``configure_optimizers``), optionally :func:`load_optimizer_state`,
:func:`regularization_loss` (added to the training loss) and :func:`normalize_gradients` (in
``on_before_optimizer_step``). Each takes the ``finetune`` config node, or the
:class:`Settings` that :func:`parse_finetune` made of it (cheaper in per-step calls: reading an
OmegaConf node costs about a millisecond).

``weight_decay`` is decoupled: each step shrinks every trainable weight by ``1 - lr * wd``
(AdamW's rule) whatever the optimizer. ``l2`` adds ``l2 / 2 * sum ||w||^2`` to the loss, so its
gradient ``l2 * w`` goes through the optimizer (Adam rescales it; weight decay is not). Both
apply to weights only (parameters with two or more dimensions), not to biases or normalization
parameters, as Deeplearning4j's ``l2`` / ``weightDecay`` do.
"""

from tlexp.finetune._grads import apply_constraints, normalize_gradients, regularization_loss
from tlexp.finetune._optim import build_optimizer, load_optimizer_state
from tlexp.finetune._overrides import apply_graph_overrides
from tlexp.finetune._schedule import build_scheduler, restore_scheduler, scheduler_state
from tlexp.finetune._settings import (
    GRADIENT_NORMALIZATIONS,
    OPTIMIZERS,
    SCHEDULE_ARGS,
    SCHEDULES,
    WEIGHT_INITS,
    Settings,
)
from tlexp.finetune._settings import (
    parse as parse_finetune,
)
from tlexp.finetune._settings import (
    setting as finetune_setting,
)

__all__ = [
    "GRADIENT_NORMALIZATIONS",
    "OPTIMIZERS",
    "SCHEDULES",
    "SCHEDULE_ARGS",
    "WEIGHT_INITS",
    "Settings",
    "apply_graph_overrides",
    "build_optimizer",
    "build_scheduler",
    "load_optimizer_state",
    "normalize_gradients",
    "apply_constraints",
    "parse_finetune",
    "regularization_loss",
    "restore_scheduler",
    "scheduler_state",
    "finetune_setting",
    "validate_finetune",
]


def validate_finetune(cfg: object) -> None:
    """Check a ``finetune`` config; raise ConfigError naming ``finetune.<field>`` if it is invalid."""
    parse_finetune(cfg)
