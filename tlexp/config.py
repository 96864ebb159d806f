"""Structured config schemas, registered in Hydra's ConfigStore.

Each YAML option in ``conf/`` extends one of these (``defaults: [base_x, _self_]``), so a
misspelled key or a value of the wrong type fails when the config is composed, before any
compute. Sources and data sets are polymorphic groups: every option has its own schema, and
``type`` says which loader reads it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

__all__ = [
    "register_configs",
    "TlexpConfig",
    "Choice",
    "FreezeMode",
    "CacheDtype",
    "Schedule",
    "GradientNormalization",
    "Loss",
    "Accelerator",
    "InspectFormat",
    "MonitorMode",
    "PreprocessingMode",
    "SourceInit",
    "InputLayout",
    "WeightInit",
    "BatchNormMode",
    "plain",
    "typed_config",
    "check_required",
]


# ---- closed choices ---------------------------------------------------------------------------


class Choice(str, Enum):
    """A closed choice: OmegaConf checks it at compose time and lists the valid values; in code
    it compares, hashes and formats as its plain string (member names equal their values)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class FreezeMode(Choice):
    featurize = "featurize"
    in_model = "in_model"


class CacheDtype(Choice):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Schedule(Choice):
    none = "none"
    step = "step"
    multistep = "multistep"
    exponential = "exponential"
    cosine = "cosine"
    warmup_cosine = "warmup_cosine"
    onecycle = "onecycle"
    dl4j = "dl4j"


class GradientNormalization(Choice):
    none = "none"
    clip_norm = "clip_norm"
    clip_value = "clip_value"
    clip_element_wise_absolute_value = "clip_element_wise_absolute_value"
    renormalize_l2_per_layer = "renormalize_l2_per_layer"
    clip_l2_per_layer = "clip_l2_per_layer"
    renormalize_l2_per_param_type = "renormalize_l2_per_param_type"
    clip_l2_per_param_type = "clip_l2_per_param_type"


class Loss(Choice):
    cross_entropy = "cross_entropy"
    nll = "nll"
    bce = "bce"


class Accelerator(Choice):
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    mps = "mps"
    auto = "auto"


class InspectFormat(Choice):
    table = "table"
    json = "json"


class MonitorMode(Choice):
    min = "min"
    max = "max"
    auto = "auto"


class PreprocessingMode(Choice):
    source = "source"
    refit = "refit"


class SourceInit(Choice):
    """``source.init``: the source's weights, or the same architecture freshly initialized."""

    pretrained = "pretrained"
    random = "random"


class InputLayout(Choice):
    """``source.input_layout`` of a Keras model: the axis order its inputs and outputs take."""

    channels_first = "channels_first"
    channels_last = "channels_last"


class WeightInit(Choice):
    """``finetune.weight_init``: a scheme of the one weight-init table (tlexp.graph._weight_init)."""

    default = "default"
    xavier_uniform = "xavier_uniform"
    xavier_normal = "xavier_normal"
    kaiming_uniform = "kaiming_uniform"
    kaiming_normal = "kaiming_normal"
    normal = "normal"
    uniform = "uniform"
    zeros = "zeros"
    ones = "ones"


class BatchNormMode(Choice):
    """``unfreeze.bn``: BatchNorm in newly unfrozen layers keeps inference mode (its running
    statistics) or trains (its statistics follow the new data)."""

    frozen = "frozen"
    train = "train"


def plain(node: Any) -> Any:
    """A config node (an OmegaConf node, a schema dataclass, or lists and dicts of them) as plain
    data: interpolations resolved, closed choices as their string values, containers copied;
    anything else as it is. The one place a config node becomes plain data (the loaders take
    mappings: sources, data sets, finetune, surgery ops, callbacks)."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    return _plain_value(node)


def _plain_value(v: Any) -> Any:
    if isinstance(v, Enum):
        return v.value
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain_value(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {k: _plain_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain_value(x) for x in v]
    return v


# ---- source -----------------------------------------------------------------------------------


@dataclass
class SpecSource:
    type: str = "spec"
    #: pretrained (the source's weights) or random (same architecture, default init, seeded)
    init: SourceInit = SourceInit.pretrained
    layers: list[Any] = field(default_factory=list)
    input_shape: Optional[list[int]] = None
    inputs: Optional[list[Any]] = None
    outputs: Optional[list[str]] = None


@dataclass
class SavedSource:
    type: str = "saved"
    #: pretrained (the source's weights) or random (same architecture, default init, seeded)
    init: SourceInit = SourceInit.pretrained
    path: str = MISSING
    load_optimizer_state: bool = False


@dataclass
class KerasSource:
    type: str = "keras"
    #: pretrained (the source's weights) or random (same architecture, default init, seeded)
    init: SourceInit = SourceInit.pretrained
    path: str = MISSING
    weights_path: Optional[str] = None
    input_shape: Optional[list[int]] = None
    enforce_training_config: bool = False
    input_layout: InputLayout = InputLayout.channels_first


@dataclass
class Dl4jSource:
    type: str = "dl4j"
    #: pretrained (the source's weights) or random (same architecture, default init, seeded)
    init: SourceInit = SourceInit.pretrained
    path: str = MISSING
    #: put the zip's normalizer.bin (if any) in front of the model
    normalizer: bool = True
    #: continue from the zip's updaterState.bin
    load_optimizer_state: bool = False


@dataclass
class Dl4jZooSource:
    type: str = "dl4j_zoo"
    #: vgg16 | darknet19 | tinyyolo | resnet50 | squeezenet
    name: str = MISSING
    #: random (DL4J's architecture, fresh weights) or pretrained (DL4J's zoo zip at path)
    init: SourceInit = SourceInit.random
    path: Optional[str] = None
    num_classes: Optional[int] = None
    #: [channels, height, width] (DL4J's setInputShape); the zoo class's default when null
    input_size: Optional[list[int]] = None


@dataclass
class ZooSource:
    type: str = "zoo"
    #: pretrained (the source's weights) or random (same architecture, default init, seeded)
    init: SourceInit = SourceInit.pretrained
    name: str = MISSING
    pretrained: bool = False
    weights: Optional[str] = None
    num_classes: Optional[int] = None
    in_chans: int = 3
    input_size: Optional[list[int]] = None
    kwargs: Optional[Any] = None


# ---- model edits, freezing, fine-tuning ----------------------------------------------------------


@dataclass
class SurgeryConfig:
    #: list of ops applied in order, each a mapping with ``op`` and its arguments
    ops: list[Any] = field(default_factory=list)


@dataclass
class FreezeConfig:
    #: a layer name or index (or a list of names on a graph); null = nothing frozen
    up_to: Any = None
    #: featurize: run the frozen prefix once into the HDF5 cache; in_model: keep it in the model
    mode: FreezeMode = FreezeMode.featurize


@dataclass
class FeaturizeConfig:
    #: prefix outputs above this many bytes stream from HDF5 instead of living in memory
    max_memory: str = "2GB"
    #: dtype the cache stores (part of the key): float32, float16, bfloat16
    dtype: CacheDtype = CacheDtype.float32
    batch_size: int = 256
    #: K > 0 stores K randomly augmented passes of the training split; each epoch draws one
    augment_copies: int = 0
    #: rebuild the cache even when a valid file exists
    overwrite: bool = False


@dataclass
class GroupOverride:
    #: fnmatch pattern (or list of patterns) on layer names; the first matching group wins
    pattern: Any = MISSING
    lr: Optional[float] = None
    #: multiplies finetune.lr instead of replacing it
    lr_scale: Optional[float] = None
    weight_decay: Optional[float] = None
    l2: Optional[float] = None


@dataclass
class FinetuneConfig:
    #: sgd, nesterov, adam, adamw, rmsprop, adagrad, or a mapping with _target_ (_partial_: true)
    optimizer: Any = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    #: decoupled weight decay (p -= lr * wd * p), distinct from l2
    weight_decay: float = 0.0
    #: L2 penalty on weights added to the loss: l2 / 2 * sum ||w||^2
    l2: float = 0.0
    #: L1 penalty on weights (l1 * sum |w|), and DL4J's bias counterparts l1Bias / l2Bias
    l1: float = 0.0
    l1_bias: float = 0.0
    l2_bias: float = 0.0
    #: decoupled weight decay on biases (DL4J weightDecayBias); weight_decay covers weights only
    weight_decay_bias: float = 0.0
    #: a separate learning rate for biases (DL4J biasUpdater); null: finetune.lr
    bias_lr: Optional[float] = None
    #: applied after every step: [{type: max_norm, max: 2.0, apply_to: weights}], types max_norm,
    #: min_max_norm (min, max, rate), unit_norm, non_negative; apply_to weights | biases | all
    constraints: list[Any] = field(default_factory=list)
    schedule: Schedule = Schedule.none
    #: null or a mapping (assigned whole on the command line: finetune.schedule_args={gamma: 0.5})
    schedule_args: Optional[Any] = None
    #: torch's drop probability (0.2: drop 20%)
    dropout: Optional[float] = None
    #: DL4J's dropOut(x): the probability to *retain* an activation (0.8: drop 20%)
    dropout_retain: Optional[float] = None
    activation: Optional[str] = None
    apply_to_output: bool = False
    weight_init: Optional[WeightInit] = None
    bias_init: Optional[float] = None
    gradient_normalization: GradientNormalization = GradientNormalization.none
    gradient_normalization_threshold: float = 1.0
    seed: Optional[int] = None
    groups: list[GroupOverride] = field(default_factory=list)
    #: cross_entropy (probabilities or logits, read off the output layer), nll, or bce (one
    #: sigmoid or logit unit for two classes)
    loss: Loss = Loss.cross_entropy
    #: refuse an output layer whose activation does not fit the loss (DL4J's validateOutputLayerConfig)
    validate_output: bool = True
    #: weigh the loss by inverse class frequency of the training split
    class_weights: bool = False
    #: keep the optimizer state in model/optimizer.safetensors (DL4J saveUpdater)
    save_optimizer_state: bool = True


# ---- data -------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """What every data set shares: seeded splits and loader settings."""

    type: str = MISSING
    #: cap on training samples per class (a small training set for transfer)
    max_per_class: Optional[int] = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 42
    batch_size: int = 64
    num_workers: int = 0
    #: starting from a saved model: source (its saved preprocessing: column layout, statistics,
    #: image normalization) or refit (re-estimated on this run's training split)
    preprocessing: PreprocessingMode = PreprocessingMode.source


@dataclass
class DigitsData(SplitData):
    type: str = "digits"
    #: digit classes to keep (relabelled 0..k-1 in this order); null = all ten
    classes: Optional[list[int]] = None
    val_fraction: float = 0.2
    test_fraction: float = 0.3
    batch_size: int = 32


@dataclass
class TabularData(SplitData):
    type: str = "csv"
    path: Optional[str] = None
    label: str = MISSING
    drop: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    #: keep only rows whose column values are listed: {Geography: [Germany]}
    where: Optional[Any] = None
    #: rows of the synthetic churn table when no path is given
    synthetic_rows: int = 10000
    #: standardize numeric columns with train-split statistics (false: raw values, e.g. for a
    #: model that carries its own normalizer, like a DL4J file's normalizer.bin)
    standardize: bool = True
    #: category order per categorical column (the first is the one dropped): {Gender: [Male, Female]}
    category_order: Optional[Any] = None
    #: drop rows with an empty or NaN value (in a numeric column or the label)
    dropna: bool = False
    #: fill empty or NaN numeric values with this number
    fillna: Optional[float] = None


@dataclass
class ImageFolderData(SplitData):
    type: str = "image_folder"
    path: str = MISSING
    split_dirs: Optional[dict[str, str]] = None
    augment: bool = False
    batch_size: int = 32


# ---- running ----------------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    accelerator: Accelerator = Accelerator.cpu
    devices: Any = 1
    precision: Any = "32-true"
    deterministic: bool = True
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    num_sanity_val_steps: int = 0
    #: one Lightning checkpoint at the end of training (under checkpoints/)
    enable_checkpointing: bool = True
    check_val_every_n_epoch: int = 1
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None


@dataclass
class TrainConfig:
    #: the metric that chooses the epoch: val/loss, val/accuracy, val/auroc (two classes)
    monitor: str = "val/loss"
    #: min, max, or auto (min for a loss, max for a score)
    mode: MonitorMode = MonitorMode.auto
    #: load the best epoch's weights before the test evaluation and before model/ is saved
    restore_best: bool = True


@dataclass
class UnfreezeConfig:
    #: phase 2's cut: a shallower layer than freeze.up_to; null = the whole network trains
    up_to: Any = None
    #: epochs of phase 2; 0 = one phase only
    epochs: int = 0
    #: phase 2's learning rate is finetune.lr times this (finetune.groups still apply)
    lr_scale: float = 0.1
    #: BatchNorm in newly unfrozen layers: frozen (inference mode, running stats kept) or train
    bn: BatchNormMode = BatchNormMode.frozen


@dataclass
class BaselineConfig:
    #: evaluate the source as loaded on the test split (when its outputs match the classes)
    source: bool = True
    #: evaluate the model after surgery, before training
    before_fit: bool = True


@dataclass
class PathsConfig:
    root_dir: str = "."
    output_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class InspectConfig:
    #: table (rich) or json (the architecture JSON)
    format: InspectFormat = InspectFormat.table


@dataclass
class TlexpConfig:
    name: str = "run"
    seed: int = 12345
    source: Any = MISSING
    surgery: SurgeryConfig = field(default_factory=SurgeryConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Any = None
    #: Lightning callbacks, a mapping of _target_ entries (conf/callbacks)
    callbacks: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    unfreeze: UnfreezeConfig = field(default_factory=UnfreezeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    #: print the summary table at the end of a run
    print_table: bool = True
    #: the value a run returns to a sweeper (hparams_search=optuna): "val/accuracy", "val/auroc", …;
    #: null: val/auroc for two classes, else val/accuracy
    optimized_metric: Optional[str] = None


# ---- the entry points' one conversion --------------------------------------------------------


def check_required(cfg: DictConfig) -> None:
    """A required value left unset (``???`` in a config) is named, not passed on as a string."""
    from tlexp.errors import ConfigError

    missing = [k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra.")]
    if missing:
        key = missing[0]
        raise ConfigError(f"{key}: a value is required and none is set; add {key}=… to the command line or your experiment"
                          + (f" (also unset: {', '.join(missing[1:4])})" if len(missing) > 1 else ""))


def monitor_mode(monitor: str, mode: Any) -> str:
    """``train.mode`` as the callbacks take it: ``auto`` is min for a loss, max for a score."""
    from tlexp.errors import check

    mode = check(mode, MonitorMode, "train.mode").value
    if mode != "auto":
        return str(mode)
    return "min" if str(monitor).endswith("loss") else "max"


def typed_config(cfg: DictConfig | TlexpConfig) -> TlexpConfig:
    """The composed config as typed objects (:class:`TlexpConfig` and its children), made once at
    an entry point (a run, ``tlexp-inspect``, the helper, a sweep's plan) with
    ``OmegaConf.to_object``; a :class:`TlexpConfig` is returned as it is, so the public functions
    take either.

    Required values left unset are named first; interpolations are resolved, with the
    ``callbacks``' ``${train.mode}`` as the callbacks take it (``auto`` → min/max). A source or
    data option extends its schema, so it becomes that dataclass (a mapping when a user's option
    has none); ``logger``, ``callbacks`` and the other free-form values stay plain lists and dicts
    of plain values (``hydra.utils.instantiate`` takes them), closed choices in them as strings.
    """
    if isinstance(cfg, TlexpConfig):
        return cfg
    from tlexp.errors import ConfigError

    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config: expected a composed config (DictConfig) or a TlexpConfig, not {type(cfg).__name__}")
    work = cfg.copy()
    OmegaConf.set_readonly(work, False)
    with open_dict(work):
        if "hydra" in work:  # composed with return_hydra_config: Hydra's own node is not the run's
            del work["hydra"]
        if OmegaConf.is_interpolation(work.paths, "output_dir") and _no_hydra_output_dir():
            # composed outside a Hydra job (a notebook, a sweep's plan before its jobs exist): the
            # current folder, as Hydra's own default would be; run() reads the composed value itself
            work.paths.output_dir = os.getcwd()
    check_required(work)
    with open_dict(work):
        if work.get("callbacks"):
            work.train.mode = monitor_mode(work.train.monitor, work.train.mode)
    out = OmegaConf.to_object(work)
    if not isinstance(out, TlexpConfig):
        raise ConfigError(f"config: the composed config does not extend base_config (got {type(out).__name__})")
    out.train.mode = cfg.train.mode
    _plain_free_values(out)
    return out


def _no_hydra_output_dir() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    hydra_cfg: Any = HydraConfig.get()
    return OmegaConf.select(hydra_cfg, "runtime.output_dir", default=None, throw_on_missing=False) is None


def _plain_free_values(obj: Any) -> None:
    """Lists and dicts held by a schema dataclass (its ``Any`` fields) as plain values; the
    dataclasses in them (``finetune.groups``) stay typed."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, (dict, list)) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            setattr(obj, f.name, _free(value))


def _free(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        _plain_free_values(v)
        return v
    if isinstance(v, dict):
        return {k: _free(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_free(x) for x in v]
    return v.value if isinstance(v, Enum) else v


def path_safe(value: Any) -> str:
    """A run name (or override string) as one folder name: separators and ``..`` neutralized, so
    ``name=../../x`` stays inside the run folder (``${tlexp_path_safe:${name}}`` in conf/hydra)."""
    s = str(value).replace("/", "_").replace("\\", "_").replace("..", "__")
    return s or "_"


def register_configs() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("tlexp_path_safe"):
        OmegaConf.register_new_resolver("tlexp_path_safe", path_safe)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=TlexpConfig)
    cs.store(group="source", name="base_source_spec", node=SpecSource)
    cs.store(group="source", name="base_source_saved", node=SavedSource)
    cs.store(group="source", name="base_source_keras", node=KerasSource)
    cs.store(group="source", name="base_source_zoo", node=ZooSource)
    cs.store(group="source", name="base_source_dl4j", node=Dl4jSource)
    cs.store(group="source", name="base_source_dl4j_zoo", node=Dl4jZooSource)
    cs.store(group="surgery", name="base_surgery", node=SurgeryConfig)
    cs.store(group="freeze", name="base_freeze", node=FreezeConfig)
    cs.store(group="unfreeze", name="base_unfreeze", node=UnfreezeConfig)
    cs.store(group="finetune", name="base_finetune", node=FinetuneConfig)
    cs.store(group="data", name="base_data_digits", node=DigitsData)
    cs.store(group="data", name="base_data_tabular", node=TabularData)
    cs.store(group="data", name="base_data_image_folder", node=ImageFolderData)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
    cs.store(group="paths", name="base_paths", node=PathsConfig)


register_configs()
