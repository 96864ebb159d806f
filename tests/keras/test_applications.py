"""keras.applications models (weights=None, Keras's own initialization, small inputs) written by
Keras at test time import with parity: features (include_top=False, average pooling) equal
Keras's predictions in both input layouts. The large ones are marked slow."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.keras._live import inputs, keras, predict, run, save

#: name -> (input size, keyword arguments); the smallest inputs each architecture accepts well
APPS = {
    "MobileNetV2": (32, {"alpha": 0.35}),
    "ResNet50": (32, {}),
    "EfficientNetB0": (32, {}),
    "VGG16": (32, {}),
    "DenseNet121": (32, {}),
    "Xception": (71, {}),
    "ConvNeXtTiny": (32, {}),
}
FAST = {"MobileNetV2"}


def _params():
    for name in APPS:
        marks = () if name in FAST else (pytest.mark.slow,)
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_application_imports_with_parity(tmp_path, name) -> None:
    K = keras()
    from tlexp.sources.keras import load_keras

    size, kwargs = APPS[name]
    K.utils.set_random_seed(0)
    model = getattr(K.applications, name)(weights=None, input_shape=(size, size, 3), include_top=False, pooling="avg",
                                          **kwargs)
    # non-trivial BatchNormalization statistics, so inference-mode normalization is exercised
    rng = np.random.default_rng(0)
    for w in model.weights:
        if w.path.endswith("moving_mean"):
            w.assign(rng.normal(0, 0.1, tuple(w.shape)).astype("float32"))
        elif w.path.endswith("moving_variance"):
            w.assign(rng.uniform(0.8, 1.2, tuple(w.shape)).astype("float32"))
    xs = inputs((size, size, 3), seed=3)
    ys = predict(model, xs)
    scale = max(1.0, float(np.abs(ys[0]).max()))
    formats = ("keras", "h5") if name in FAST else ("keras",)
    for fmt, (path, weights) in save(model, tmp_path, name, formats).items():
        for layout in ("channels_first", "channels_last"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = load_keras(path, weights, input_layout=layout)
            got = run(graph, xs, layout)
            assert got[0].shape == ys[0].shape
            diff = float(np.abs(got[0] - ys[0]).max())
            assert diff <= 1e-4 * scale, f"{name} ({fmt}, {layout}): max abs difference {diff:.3g} (outputs up to {scale:.3g})"
