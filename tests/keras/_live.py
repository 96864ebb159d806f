"""Fixtures written by Keras at test time: save a model in every format, compare the import.

A test builds a small Keras 3 model (torch backend), ``check`` saves it as ``.h5``, as JSON +
``.weights.h5`` and as ``.keras``, asks Keras for its predictions and imports each file in both
input layouts, returning the worst absolute difference. Keras is a test dependency only: tlexp
never imports it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")

FORMATS = ("h5", "json", "keras")
LAYOUTS = ("channels_first", "channels_last")


def keras():
    k = pytest.importorskip("keras")
    if k.backend.backend() != "torch":
        pytest.skip("these fixtures are written with Keras's torch backend")
    return k


def randomize(model, seed: int = 0) -> None:
    """Random weights everywhere (positive variances), so no layer is an accidental identity."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.path.split("/")[-1]
        shape = tuple(w.shape)
        if "variance" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "count":
            continue
        elif "embeddings" in name:
            value = rng.normal(0, 1.0, shape)
        else:
            value = rng.normal(0, 0.4, shape)
        w.assign(value.astype(w.dtype if isinstance(w.dtype, str) else "float32"))


def save(model, out: Path, name: str, formats=FORMATS) -> dict[str, tuple[Path, Path | None]]:
    files: dict[str, tuple[Path, Path | None]] = {}
    if "keras" in formats:
        model.save(out / f"{name}.keras")
        files["keras"] = (out / f"{name}.keras", None)
    if "json" in formats:
        (out / f"{name}.json").write_text(model.to_json())
        model.save_weights(out / f"{name}.weights.h5")
        files["json"] = (out / f"{name}.json", out / f"{name}.weights.h5")
    if "h5" in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras calls HDF5 legacy
            model.save(out / f"{name}.h5")
        files["h5"] = (out / f"{name}.h5", None)
    return files


def _perm(a: np.ndarray, to_torch: bool, volume: bool) -> np.ndarray:
    if a.ndim == 4:
        return a.transpose(0, 3, 1, 2) if to_torch else a.transpose(0, 2, 3, 1)
    if a.ndim == 5 and volume:
        return a.transpose(0, 4, 1, 2, 3) if to_torch else a.transpose(0, 2, 3, 4, 1)
    return a


def run(graph, xs: list[np.ndarray], layout: str, cf_model: bool = False, volume: bool = False,
        mask=None) -> list[np.ndarray]:
    """The imported graph on Keras-layout arrays; outputs back in Keras's layout."""
    torch_cf = layout == "channels_first" and not cf_model
    ins = []
    for x in xs:
        t = torch.from_numpy(np.ascontiguousarray(_perm(x, True, volume) if torch_cf else x))
        ins.append(t if t.is_floating_point() else t.long())
    graph.eval()
    with torch.no_grad():
        out = graph(*ins)
    out = out if isinstance(out, tuple) else (out,)
    return [_perm(o.numpy(), False, volume) if torch_cf else o.numpy() for o in out]


def predict(model, xs: list[np.ndarray]) -> list[np.ndarray]:
    ys = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    ys = ys if isinstance(ys, (list, tuple)) else [ys]
    return [np.asarray(y, dtype=np.float32) for y in ys]


def check(model, xs: list[np.ndarray], out: Path, name: str, *, cf_model: bool = False, volume: bool = False,
          formats=FORMATS, layouts=LAYOUTS) -> float:
    """Worst |tlexp - Keras| over every format and layout (asserting shapes match)."""
    from tlexp.sources.keras import load_keras

    ys = predict(model, xs)
    worst = 0.0
    for fmt, (path, weights) in save(model, out, name, formats).items():
        for layout in layouts:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = load_keras(path, weights, input_layout=layout)
            got = run(graph, xs, layout, cf_model, volume)
            assert len(got) == len(ys), f"{name} ({fmt}, {layout}): {len(got)} outputs, Keras has {len(ys)}"
            for i, (g, y) in enumerate(zip(got, ys)):
                assert g.shape == y.shape, f"{name} ({fmt}, {layout}) output {i}: shape {g.shape}, Keras {y.shape}"
                d = float(np.abs(g - y).max()) if y.size else 0.0
                assert d <= 1e-4, f"{name} ({fmt}, {layout}) output {i}: max abs difference {d:.3g}"
                worst = max(worst, d)
    return worst


def inputs(*shapes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, (3, *s)).astype(np.float32) for s in shapes]
