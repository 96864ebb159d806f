"""``TransferLearningHelper``: featurize and fit from Python, as DL4J's helper of that name does.

For people who drive tlexp from a notebook rather than the command line. From a model (a
:class:`~tlexp.graph.LayerGraph`) and a cut (``up_to``, as ``freeze.up_to``):

- :meth:`~TransferLearningHelper.featurize` runs the frozen prefix: over a data module it fills
  the same HDF5 feature cache a ``tlexp`` run uses (same key, so runs and notebooks share it);
  over a tensor or a loader it returns the boundary tensors;
- :attr:`~TransferLearningHelper.unfrozen` is the trainable suffix, a module taking them;
- :meth:`~TransferLearningHelper.output_from_featurized` is the model's output from them;
- :meth:`~TransferLearningHelper.fit_featurized` trains the suffix on cached features through
  the very path a run takes (:func:`tlexp.phases.fit_phase`: ``TransferModule``, Lightning's
  ``Trainer``, the run's callbacks and best-epoch restore), with the run's defaults.

::

    helper = TransferLearningHelper(tlexp.load_model("out/src/model"), up_to="dense1", cache_dir="cache")
    helper.featurize(data)                      # data: a tlexp data module (tlexp.data.build_datamodule)
    helper.fit_featurized(data, epochs=20, finetune={"lr": 0.01})
    y = helper.output_from_featurized(helper.featurize(x))   # == helper.model(x)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tlexp.errors import ConfigError
from tlexp.graph import LayerGraph

__all__ = ["TransferLearningHelper"]

Tensors = torch.Tensor | tuple[torch.Tensor, ...]


def _one_or_tuple(ts: Sequence[torch.Tensor]) -> Tensors:
    return ts[0] if len(ts) == 1 else tuple(ts)


def _as_tuple(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class TransferLearningHelper:
    """The frozen prefix computed once, the suffix trained on its outputs.

    ``model`` is frozen in place up to ``up_to`` (a layer name or index, or a list; as
    ``freeze.up_to``). ``cache_dir``: the feature cache (default ``$TLEXP_CACHE`` or
    ``outputs/cache``, as a run's ``paths.cache_dir``). The prefix and suffix share their modules
    with ``model``: after :meth:`fit_featurized`, ``model`` is the fine-tuned whole.
    """

    def __init__(self, model: LayerGraph, up_to: Any, *, cache_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu", dtype: str = "float32", batch_size: int = 256) -> None:
        from tlexp.featurize._store import check_dtype
        from tlexp.freeze import freeze

        if not isinstance(model, LayerGraph):
            raise ConfigError(f"TransferLearningHelper: model must be a tlexp LayerGraph, not {type(model).__name__}")
        check_dtype(dtype)
        self.model = model
        self.up_to = up_to
        self.cut = freeze(model, up_to, "featurize")
        if not self.cut:
            raise ConfigError("TransferLearningHelper: up_to freezes nothing; name the last frozen layer")
        self.boundary = model.boundary(self.cut)
        self.prefix, self.suffix = model.split(self.cut)
        self.cache_dir = Path(cache_dir if cache_dir is not None else os.environ.get("TLEXP_CACHE", "outputs/cache"))
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = int(batch_size)

    # ---- the parts ---------------------------------------------------------------------------

    @property
    def unfrozen(self) -> LayerGraph:
        """The trainable suffix: a module taking the boundary tensors (``self.boundary``, in order)."""
        return self.suffix

    @property
    def frozen(self) -> LayerGraph:
        """The frozen prefix: a module from the model's inputs to the boundary tensors."""
        return self.prefix

    # ---- featurize ---------------------------------------------------------------------------

    def featurize(self, data: Any) -> Any:
        """The prefix's outputs.

        - a tlexp data module: every featurized split (train, val) computed into the HDF5 cache,
          keyed as a run keys it (a hit when a run or an earlier call made them); returns the
          :class:`~tlexp.featurize.FeaturizeResult` (:meth:`load_featurized` reads a split back);
        - a tensor (or a tuple of tensors, one per model input): the boundary tensor(s);
        - a loader (any iterable of ``(x, y)`` batches): ``(features, labels)`` over all batches.
        """
        from tlexp.data import TlexpDataModule

        if isinstance(data, TlexpDataModule):
            from tlexp.featurize import featurize

            data.setup()
            return featurize(self.prefix, self.boundary, data, self.cache_dir, dtype=self.dtype,
                             batch_size=self.batch_size, device=self.device,
                             info={"up_to": self.up_to, "source": "TransferLearningHelper", "data": data.identity()})
        if isinstance(data, torch.Tensor) or (isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data)):
            return _one_or_tuple(self._prefix_out(_as_tuple(data)))
        if isinstance(data, Iterable):
            feats: list[tuple[torch.Tensor, ...]] = []
            labels: list[torch.Tensor] = []
            for batch in data:
                *xs, y = batch
                feats.append(self._prefix_out(tuple(xs)))
                labels.append(torch.as_tensor(y))
            if not feats:
                raise ConfigError("TransferLearningHelper.featurize: the loader gave no batches")
            cols = [torch.cat([f[i] for f in feats]) for i in range(len(feats[0]))]
            return _one_or_tuple(cols), torch.cat(labels)
        raise ConfigError(f"TransferLearningHelper.featurize: a data module, a tensor or a loader is needed, not {type(data).__name__}")

    @torch.no_grad()
    def _prefix_out(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        was = self.prefix.training
        self.prefix.eval().to(self.device)  # frozen layers always run in inference mode
        try:
            out = self.prefix(*(x.to(self.device) for x in xs))
        finally:
            self.prefix.train(was)
        return tuple(o.float() if o.is_floating_point() else o for o in _as_tuple(out))

    def load_featurized(self, result: Any, split: str = "train") -> tuple[Tensors, torch.Tensor]:
        """``(features, labels)`` of one cached split of a :meth:`featurize` result."""
        from tlexp.featurize._sampling import TensorBatches

        if split not in result.files:
            raise ConfigError(f"TransferLearningHelper.load_featurized: split {split!r} is not cached; valid: {', '.join(result.files)}")
        batches = TensorBatches.from_file(result.files[split], torch.device("cpu"))
        return _one_or_tuple([t.float() for t in batches.feats]), batches.y

    # ---- output and fit ------------------------------------------------------------------------

    @torch.no_grad()
    def output_from_featurized(self, features: Any) -> Tensors:
        """The model's output from boundary tensors (as :meth:`featurize` returns them), in inference mode."""
        was = self.suffix.training
        self.suffix.eval().to(self.device)
        try:
            return self.suffix(*(t.to(self.device) for t in _as_tuple(features)))  # type: ignore[no-any-return]
        finally:
            self.suffix.train(was)

    def fit_featurized(self, data: Any, *, epochs: int = 10, seed: int | None = None,
                       finetune: Mapping[str, Any] | None = None, overrides: Sequence[str] = (),
                       output_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Train the suffix on the cached features of ``data`` (a tlexp data module).

        The run's path and defaults: the package config composed with ``overrides`` (Hydra
        syntax, e.g. ``["train.monitor=val/auroc", "callbacks=none"]``), ``finetune`` on top of
        its ``finetune`` group, the best epoch's weights restored. Returns what a run's
        ``metrics.json`` says of its phase (epochs, best epoch, monitor, cache key and hit).
        """
        import pytorch_lightning as pl

        from tlexp import finetune as ft
        from tlexp.config import plain, typed_config
        from tlexp.data import TlexpDataModule
        from tlexp.phases import fit_phase

        if not isinstance(data, TlexpDataModule):
            raise ConfigError("TransferLearningHelper.fit_featurized: data must be a tlexp data module "
                              "(tlexp.data.build_datamodule); it gives the train and val splits")
        data.setup()
        with tempfile.TemporaryDirectory(prefix="tlexp-helper-") as tmp:
            out_dir = Path(output_dir) if output_dir is not None else Path(tmp)
            cfg = typed_config(_compose([
                "experiment=none", "freeze=featurize", "logger=none",
                f"paths.output_dir={out_dir}", f"paths.cache_dir={self.cache_dir}",
                f"featurize.dtype={self.dtype}", f"featurize.batch_size={self.batch_size}",
                f"trainer.max_epochs={int(epochs)}",
                f"trainer.accelerator={'gpu' if self.device.type == 'cuda' else 'cpu'}",
                *([f"seed={int(seed)}"] if seed is not None else []),
                *overrides,
            ]))
            cfg.freeze.up_to = list(self.up_to) if isinstance(self.up_to, (list, tuple)) else self.up_to
            settings = {**plain(cfg.finetune), **dict(finetune or {})}
            ft.validate_finetune(settings)
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
            ft.apply_graph_overrides(self.model, settings)  # as a run does, before it splits the model
            class_weights = data.class_weights() if settings.get("class_weights") else None
            result = fit_phase(cfg, self.model, data, self.cut, self.device, False, out_dir, phase=1,
                               max_epochs=int(epochs), finetune=settings, optimizer_state=None,
                               class_weights=class_weights)
            self.model.cpu()
            self.prefix, self.suffix = self.model.split(self.cut)  # the same modules, now trained
            return result.summary(self.model)


def _compose(overrides: list[str]) -> Any:
    """The package's run config with ``overrides``, as the ``tlexp`` command composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import tlexp.config  # noqa: F401  (registers the structured configs)
    from tlexp._resources import CONF_DIR

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or an open compose context
        return compose("config", overrides=overrides)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)
