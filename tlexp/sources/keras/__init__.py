"""``source=keras``: Keras 2 and Keras 3 model files imported as a native LayerGraph.

tlexp reads the files itself (h5py and JSON; neither TensorFlow nor Keras is needed or imported)
and converts every Keras layer to registry layers with the same numbers, so freeze, featurize,
surgery and fine-tuning work on the result as on any other model, and it saves and reloads with
``source=saved``.

Formats: a full-model HDF5 file (Keras 2 tf.keras, or Keras 3 ``model.save("m.h5")``); an
architecture JSON (``model.to_json()``) with ``weights_path`` (Keras 2 ``save_weights`` HDF5 or
Keras 3 ``*.weights.h5``); Keras 3's ``.keras`` zip. A Lambda layer is refused (its marshalled
code is never unmarshalled, let alone run).

Layout: by default the model takes torch's channels-first images (N, C, H, W) -- sequences and
vectors as Keras takes them -- and returns image outputs channels-first too; with
``input_layout="channels_last"`` it takes and returns exactly what Keras's ``model.predict``
does. Node names are the Keras layer names (``outer/inner`` inside nested models).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tlexp.errors import ConfigError, SourceError, TlexpError, warn
from tlexp.graph import LayerGraph
from tlexp.sources.keras._convert import supported_classes
from tlexp.sources.keras._model import LAYOUTS
from tlexp.sources.keras._model import build_graph as _build_graph
from tlexp.sources.keras._read import read_keras
from tlexp.sources.keras._terms import KerasTerms
from tlexp.sources.keras._training import map_training_config

__all__ = ["load_keras", "from_config", "supported_classes", "LAYOUTS", "KerasTerms"]


def _shapes(input_shape: Any) -> list[list[int]] | None:
    if input_shape is None:
        return None
    shape = list(input_shape)
    if not shape:
        raise ConfigError("source.input_shape: an empty shape; give the per-sample shape, e.g. [32,32,3]")
    if all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return [shape]
    if all(isinstance(s, (list, tuple)) for s in shape):
        return [list(s) for s in shape]
    raise ConfigError(f"source.input_shape: {input_shape!r} is not a shape (a list of ints, or one list per input)")


def load_keras(
    path: str | Path,
    weights_path: str | Path | None = None,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    enforce_training_config: bool = False,
    input_layout: str = "channels_first",
) -> LayerGraph:
    """Import a Keras model file as a :class:`LayerGraph` (a torch module).

    ``input_shape`` (per sample, Keras's order, e.g. ``[32, 32, 3]``; one list per input for
    several) fills in a shape the file does not store. With ``enforce_training_config`` the
    stored optimizer and loss become ``graph.meta["finetune_overrides"]``, or a ConfigError if
    they have no tlexp equivalent, and the regularizers and constraints
    ``graph.meta["training_terms"]`` (JSON data, applied in training by :class:`KerasTerms`);
    without it a stored training config is ignored with a warning.
    """
    if input_layout not in LAYOUTS:
        raise ConfigError(f"source.input_layout: {input_layout!r} is not a layout; valid: {', '.join(LAYOUTS)}")
    kf = read_keras(path, weights_path)
    meta: dict[str, Any] = {"source": "keras", "keras_version": kf.keras_version, "input_layout": input_layout}
    if enforce_training_config:
        meta["finetune_overrides"] = map_training_config(kf.training_config)
    elif kf.training_config and kf.training_config.get("optimizer_config"):
        warn(
            f"{Path(path).name}: the stored Keras training config (optimizer, loss) is ignored; the run's finetune "
            "config applies (set source.enforce_training_config=true to use the stored one)"
        )
    try:
        graph, imported = _build_graph(kf, input_layout, _shapes(input_shape))
    except TlexpError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        # a config missing a field, or holding a value of the wrong kind: a damaged or foreign file
        raise SourceError(f"source.path: {path}: malformed Keras model config ({type(e).__name__}: {e})") from None
    terms, labels, unsupported = imported.terms, imported.labels, imported.unsupported
    if enforce_training_config:
        if unsupported:
            raise ConfigError(
                "source.enforce_training_config: regularizers/constraints tlexp cannot apply: "
                f"{'; '.join(unsupported)} (supported: L1, L2, L1L2 on kernels, biases, embeddings and "
                "outputs; MaxNorm, NonNeg, UnitNorm, MinMaxNorm on kernels and biases)"
            )
        if terms:
            meta["training_terms"] = terms  # JSON data; KerasTerms(terms) applies them in training
    elif labels or unsupported:
        warn(
            f"{Path(path).name}: Keras regularizers/constraints are not applied (set source.enforce_training_config=true "
            f"to apply them): {'; '.join(labels + unsupported)}"
        )
    return graph.rebuilt(meta=meta).eval()  # every loader returns inference mode


def from_config(cfg: Mapping[str, Any]) -> LayerGraph:
    """The ``source`` config node (type=keras) -> LayerGraph."""
    path = cfg.get("path")
    if not path or path == "???":
        raise ConfigError("source.path: a Keras source needs source.path=FILE (.h5, .keras, or .json with source.weights_path)")
    from tlexp._resources import resolve_path

    weights = cfg.get("weights_path")
    return load_keras(
        resolve_path(str(path)),
        weights_path=resolve_path(str(weights)) if weights else None,
        input_shape=cfg.get("input_shape"),
        enforce_training_config=bool(cfg.get("enforce_training_config", False)),
        input_layout=str(cfg.get("input_layout", "channels_first")),
    )
