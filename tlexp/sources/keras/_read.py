"""Reading Keras files with h5py and json: the model config, the weights, the training config.

Formats: a full-model HDF5 file (Keras 2 or Keras 3 ``model.save("m.h5")``), an architecture
JSON (``model.to_json()``) with a weights file (Keras 2 ``save_weights`` HDF5, whose groups are
named by layer, or Keras 3 ``*.weights.h5``, whose groups are named by numbered snake_case class
names), and Keras 3's ``.keras`` zip (``config.json`` + ``model.weights.h5``).

The weights come out as one list of arrays per layer, keyed by the layer's path of names
(``("inner_model", "dense")`` for a layer inside a nested model), in the order Keras lists that
layer's weights. Converters take them by position, never by variable name: variable names differ
between Keras versions (``dense/kernel:0``, ``seq/dense/kernel``, ``depthwise_kernel`` vs
``kernel``).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tlexp.errors import SourceError

__all__ = ["KerasFile", "read_keras", "MODEL_CLASSES", "is_model", "model_layers", "layer_name"]

#: layer classes that are whole models (flattened into the graph)
MODEL_CLASSES = ("Sequential", "Functional", "Model")

WeightMap = dict[tuple[str, ...], list[np.ndarray]]


@dataclass
class KerasFile:
    path: Path
    model_config: dict[str, Any]
    #: 2 or 3: decides version-dependent semantics (hard_sigmoid)
    keras_version: int
    training_config: dict[str, Any] | None
    weights: WeightMap = field(default_factory=dict)
    weights_path: Path | None = None


# ---- model-config helpers shared with the converter ---------------------------------------


def is_model(layer_cfg: dict[str, Any]) -> bool:
    return layer_cfg.get("class_name") in MODEL_CLASSES and "layers" in (layer_cfg.get("config") or {})


def model_layers(model_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    layers = model_cfg["config"]["layers"]
    if not isinstance(layers, list):
        raise TypeError("'layers' is not a list")
    return layers


def layer_name(layer_cfg: dict[str, Any]) -> str:
    name = layer_cfg.get("name") or (layer_cfg.get("config") or {}).get("name")
    if not isinstance(name, str):
        raise KeyError(f"a {layer_cfg.get('class_name')} layer has no name")
    return name


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _major(version: Any) -> int | None:
    m = re.match(r"\s*(\d+)", _text(version)) if version is not None else None
    return int(m.group(1)) if m else None


def _guess_version(model_config: dict[str, Any]) -> int:
    """Keras 3 writes ``batch_shape`` and ``keras_history``; Keras 2 ``batch_input_shape``."""
    text = json.dumps(model_config)
    if '"batch_shape"' in text or '"keras_history"' in text:
        return 3
    return 2


# ---- weights: legacy HDF5 layout (Keras 2, and Keras 3's model.save("m.h5")) ----------------


def _legacy_layer_arrays(group: h5py.Group, name: str) -> tuple[list[str], list[np.ndarray]]:
    g = group[name]
    names = [_text(n) for n in g.attrs.get("weight_names", [])]
    return names, [np.asarray(g[n]) for n in names]


def _leaves(model_cfg: dict[str, Any], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for lc in model_layers(model_cfg):
        path = (*prefix, layer_name(lc))
        out.extend(_leaves(lc, path) if is_model(lc) else [path])
    return out


def _distribute(model_name: str, names: list[str], arrays: list[np.ndarray], leaves: list[tuple[str, ...]],
                out: WeightMap) -> None:
    """Split a nested model's weight list among its layers by the layer name in each weight name.

    Keras 2 lists a nested model's trainable weights first, then the non-trainable ones
    (``id1/kernel:0 … ibn/moving_mean:0``); Keras 3 prefixes the variable path with the model's
    name (``inner/id1/kernel``). Either way the owning layer's name is a component of the path;
    within one layer the listed order is kept.
    """
    by_name = {leaf[-1]: leaf for leaf in leaves}
    for wname, arr in zip(names, arrays):
        parts = wname.split(":")[0].split("/")[:-1]
        owner = next((by_name[p] for p in parts if p in by_name), None)
        if owner is None:
            raise SourceError(
                f"weights: the nested model {model_name!r} has a weight {wname!r} that names none of its layers"
            )
        out.setdefault(owner, []).append(arr)


def read_legacy_weights(group: h5py.Group, model_cfg: dict[str, Any], where: str) -> WeightMap:
    out: WeightMap = {}
    stored = {_text(n) for n in group.attrs.get("layer_names", [])} or set(group.keys())
    extra = sorted(n for n in stored - {layer_name(lc) for lc in model_layers(model_cfg)}
                   if n in group and len(group[n].attrs.get("weight_names", [])))
    if extra:
        raise SourceError(f"{where}: the weights file has weights for layers the architecture lacks ({', '.join(extra[:5])}); "
                          "the weights do not fit the architecture")
    for lc in model_layers(model_cfg):
        name = layer_name(lc)
        if lc.get("class_name") == "InputLayer":
            continue
        if name not in stored or name not in group:
            out[(name,)] = []  # a layer without weights is not listed by some writers
            continue
        names, arrays = _legacy_layer_arrays(group, name)
        if is_model(lc):
            _distribute(name, names, arrays, _leaves(lc, (name,)), out)
        else:
            out[(name,)] = arrays
    return out


# ---- weights: Keras 3 *.weights.h5 layout -----------------------------------------------------


def snake_case(name: str) -> str:
    """Keras 3's key for an object of class ``name`` (Conv2D -> conv2d, ReLU -> re_lu)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _vars(g: h5py.Group) -> list[np.ndarray]:
    v = g.get("vars")
    if v is None:
        return []
    return [np.asarray(v[k]) for k in sorted(v.keys(), key=int)]


_CHILD_ORDER = {
    "Bidirectional": ("forward_layer", "backward_layer"),
    "MultiHeadAttention": ("query_dense", "key_dense", "value_dense", "output_dense"),
}


def _collect(g: h5py.Group, class_name: str) -> list[np.ndarray]:
    arrays = _vars(g)
    children = [k for k in g.keys() if k != "vars"]
    ordered = _CHILD_ORDER.get(class_name)
    if ordered is not None:
        # Keras lists these layers' weights in this order (the legacy HDF5 layout keeps it); the
        # .weights.h5 groups are sorted by name
        rest = [] if class_name == "Bidirectional" else sorted(k for k in children if k not in ordered)
        children = [k for k in ordered if k in g] + rest
    else:
        children = sorted(children)
    for k in children:
        sub = g[k]
        if isinstance(sub, h5py.Group):
            arrays += _collect(sub, "")
    return arrays


def _group_name(g: h5py.Group) -> str | None:
    v = g.get("vars")
    return _text(v.attrs["name"]) if v is not None and "name" in v.attrs else None


def read_k3_weights(root: h5py.Group, model_cfg: dict[str, Any], prefix: tuple[str, ...] = (),
                    where: str = "weights") -> WeightMap:
    out: WeightMap = {}
    layers_group = root.get("layers")
    if layers_group is None:
        raise SourceError(f"{where}: no 'layers' group; not a Keras 3 weights file")
    used: dict[str, int] = {}
    seen: set[str] = set()
    for lc in model_layers(model_cfg):
        name = layer_name(lc)
        key = snake_case(str(lc.get("class_name")))
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        g = layers_group.get(key)
        # newer Keras 3 versions store the layer's name beside its variables: trust it over the count
        if g is None or (_group_name(g) not in (None, name)):
            g = next((layers_group[k] for k in layers_group if _group_name(layers_group[k]) == name), g)
        path = (*prefix, name)
        if g is None:
            out[path] = []
            continue
        seen.add(g.name)
        if is_model(lc):
            out.update(read_k3_weights(g, lc, path, where))
        else:
            out[path] = _collect(g, str(lc.get("class_name")))
    extra = sorted(k for k in layers_group if layers_group[k].name not in seen and _has_arrays(layers_group[k]))
    if extra:
        raise SourceError(f"{where}: the weights file has weights for layers the architecture lacks ({', '.join(extra[:5])}); "
                          "the weights do not fit the architecture")
    return out


def _has_arrays(g: h5py.Group) -> bool:
    found = []
    g.visititems(lambda _n, obj: found.append(1) if isinstance(obj, h5py.Dataset) else None)
    return bool(found)


def read_weights_file(h5: h5py.File | h5py.Group, model_cfg: dict[str, Any], where: str) -> WeightMap:
    """Weights from any Keras weights layout, chosen by what the file holds."""
    if "model_weights" in h5:
        return read_legacy_weights(h5["model_weights"], model_cfg, where)
    if "layer_names" in h5.attrs:
        return read_legacy_weights(h5, model_cfg, where)
    if "layers" in h5:
        return read_k3_weights(h5, model_cfg, where=where)
    raise SourceError(f"{where}: no Keras weights in this HDF5 file (no model_weights, layer_names or layers/)")


# ---- files ------------------------------------------------------------------------------------


def _json(text: Any, where: str) -> dict[str, Any]:
    try:
        data = json.loads(_text(text))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{where}: expected a JSON object")
    return data


def _model_config(data: dict[str, Any], where: str) -> dict[str, Any]:
    if "class_name" not in data or "config" not in data:
        raise SourceError(f"{where}: not a Keras model config (needs 'class_name' and 'config')")
    return data


def _open_h5(source: Any, where: str) -> h5py.File:
    try:
        return h5py.File(source, "r")
    except (OSError, ValueError) as e:
        msg = str(e).split("\n")[0]
        raise SourceError(f"{where}: not a readable HDF5 file, or truncated ({msg})") from None


def _training_from_compile(cc: Any) -> dict[str, Any] | None:
    """Keras 3's ``compile_config`` in the form of a legacy ``training_config``."""
    if not isinstance(cc, dict) or not cc:
        return None
    out = dict(cc)
    if "optimizer" in out:
        out["optimizer_config"] = out.pop("optimizer")
    return out


def _read_h5_model(path: Path, weights_path: Path | None) -> KerasFile:
    where = f"source.path: {path}"
    with _open_h5(path, where) as f:
        if "model_config" not in f.attrs:
            if "layer_names" in f.attrs or "layers" in f:
                raise SourceError(
                    f"{where}: a weights-only file; give the architecture JSON as source.path and this file "
                    "as source.weights_path"
                )
            raise SourceError(f"{where}: not a Keras model file (no model_config attribute)")
        cfg = _model_config(_json(f.attrs["model_config"], where), where)
        version = _major(f.attrs.get("keras_version")) or _guess_version(cfg)
        training = _json(f.attrs["training_config"], where) if "training_config" in f.attrs else None
        weights = None if weights_path is not None else read_weights_file(f, cfg, where)
    kf = KerasFile(path, cfg, version, training)
    kf.weights = weights if weights is not None else _read_weights_path(weights_path, cfg)  # type: ignore[arg-type]
    kf.weights_path = weights_path
    return kf


def _read_weights_path(weights_path: Path, cfg: dict[str, Any]) -> WeightMap:
    where = f"source.weights_path: {weights_path}"
    if not weights_path.is_file():
        raise SourceError(f"{where}: no such file")
    with _open_h5(weights_path, where) as f:
        return read_weights_file(f, cfg, where)


def _read_zip(path: Path, weights_path: Path | None) -> KerasFile:
    where = f"source.path: {path}"
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                raise SourceError(f"{where}: a zip without config.json; not a .keras model file")
            data = _json(z.read("config.json"), where)
            meta = _json(z.read("metadata.json"), where) if "metadata.json" in names else {}
            blob = z.read("model.weights.h5") if "model.weights.h5" in names and weights_path is None else None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise SourceError(f"{where}: not a readable .keras zip, or truncated ({e})") from None
    cfg = _model_config(data, where)
    version = _major(meta.get("keras_version")) or _guess_version(cfg)
    if blob is not None:
        with _open_h5(io.BytesIO(blob), f"{where} (model.weights.h5)") as f:
            weights = read_weights_file(f, cfg, where)
    elif weights_path is not None:
        weights = _read_weights_path(weights_path, cfg)
    else:
        raise SourceError(f"{where}: the .keras zip has no model.weights.h5")
    kf = KerasFile(path, cfg, version, _training_from_compile(data.get("compile_config")), weights, weights_path)
    return kf


def _read_json(path: Path, weights_path: Path | None) -> KerasFile:
    where = f"source.path: {path}"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{where}: cannot be read ({e})") from None
    data = _json(text, where)
    cfg = _model_config(data, where)
    if weights_path is None:
        raise SourceError(
            f"{where}: an architecture JSON holds no weights; set source.weights_path to the weights file "
            "(Keras 2 save_weights .h5 or Keras 3 .weights.h5)"
        )
    version = _major(data.get("keras_version")) or _guess_version(cfg)
    weights = _read_weights_path(weights_path, cfg)
    return KerasFile(path, cfg, version, _training_from_compile(data.get("compile_config")), weights, weights_path)


def read_keras(path: str | Path, weights_path: str | Path | None = None) -> KerasFile:
    """Read any supported Keras file; every failure is one SourceError line."""
    path = Path(path)
    wpath = Path(weights_path) if weights_path is not None else None
    if not path.is_file():
        raise SourceError(f"source.path: {str(path)!r} does not exist or is not a file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    try:
        if head.startswith(b"PK"):
            return _read_zip(path, wpath)
        if head.lstrip()[:1] == b"{":
            return _read_json(path, wpath)
        return _read_h5_model(path, wpath)
    except SourceError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError) as e:
        # h5py raises these for damaged groups and datasets; a malformed config raises them too
        raise SourceError(f"source.path: {path}: damaged or not a Keras model ({type(e).__name__}: {e})") from None
