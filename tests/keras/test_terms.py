"""Keras regularizers and constraints: penalties equal Keras's model.losses on the same weights,
constraints project as Keras's do after an optimizer step (when enforced), one warning listing
them otherwise, and a clear refusal of the ones tlexp cannot apply when enforced."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.keras._live import inputs, keras, randomize
from tlexp.errors import ConfigError


def _model(K):
    L, R, C = K.layers, K.regularizers, K.constraints
    x = K.Input((6, 5, 2), name="img")
    y = L.Conv2D(3, 3, kernel_regularizer=R.L2(0.01), bias_regularizer=R.L1(0.02),
                 kernel_constraint=C.MaxNorm(0.5, axis=[0, 1, 2]), name="conv")(x)
    y = L.Flatten(name="flat")(y)
    y = L.Dense(4, kernel_regularizer=R.L1L2(l1=0.003, l2=0.004), activity_regularizer=R.L2(0.05),
                kernel_constraint=C.UnitNorm(axis=0), bias_constraint=C.NonNeg(), name="hidden")(y)
    y = L.Dense(3, activation="softmax", kernel_constraint=C.MinMaxNorm(0.2, 0.6, rate=0.7, axis=0), name="out")(y)
    m = K.Model(x, y)
    m.compile(optimizer=K.optimizers.SGD(0.1), loss="categorical_crossentropy")
    randomize(m, 21)
    return m


def _penalty_parity(model, x: np.ndarray, path):
    """Keras's ``model.losses`` after a call on ``x`` against tlexp's penalty of the same model
    saved to ``path`` and imported with its terms enforced; the imported graph and its terms."""
    from tlexp.sources.keras import KerasTerms, load_keras

    model(x)  # Keras records the activity penalty of this call
    want = float(sum(float(v) for v in model.losses))
    model.save(path)
    graph = load_keras(path, enforce_training_config=True, input_layout="channels_last")
    terms = KerasTerms(graph.meta["training_terms"])
    terms.attach(graph)
    graph.eval()
    graph(torch.from_numpy(x))
    got = float(terms.penalty(graph))
    assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (got, want)
    return graph, terms


def test_penalties_equal_keras_losses_and_constraints_project_alike(tmp_path) -> None:
    K = keras()
    model = _model(K)
    graph, terms = _penalty_parity(model, inputs((6, 5, 2), seed=4)[0], tmp_path / "m.keras")

    # constraints: tlexp's projection of the imported weights equals Keras's of the same weights
    terms.after_step(graph)
    for lname, node, param, perm in (("conv", "conv", "conv.weight", (3, 2, 0, 1)), ("hidden", "hidden", "weight", (1, 0)),
                                     ("hidden", "hidden", "bias", None), ("out", "out", "weight", (1, 0))):
        layer = model.get_layer(lname)
        w = layer.bias if param == "bias" else layer.kernel
        constraint = layer.bias_constraint if param == "bias" else layer.kernel_constraint
        keras_w = np.asarray(constraint(w.value).detach().cpu())
        keras_w = keras_w.transpose(perm) if perm else keras_w
        obj = graph.node(node).module
        for part in param.split("."):
            obj = getattr(obj, part)
        assert np.abs(obj.detach().numpy() - keras_w).max() <= 1e-6, (lname, param)


def test_constraints_hold_after_each_training_step(tmp_path) -> None:
    K = keras()
    from tlexp.sources.keras import KerasTerms, load_keras

    model = _model(K)
    model.save(tmp_path / "m.keras")
    graph = load_keras(tmp_path / "m.keras", enforce_training_config=True)
    terms = KerasTerms(graph.meta["training_terms"])
    terms.attach(graph)
    opt = torch.optim.SGD(graph.parameters(), lr=1.0)
    x = torch.randn(4, 2, 6, 5)
    for _ in range(2):
        opt.zero_grad()
        loss = graph(x).square().sum() + terms.penalty(graph)
        loss.backward()
        opt.step()
        terms.after_step(graph)
        conv = graph.node("conv").module.conv.weight
        assert conv.square().sum(dim=(1, 2, 3)).sqrt().max() <= 0.5 + 1e-5
        hidden = graph.node("hidden").module
        assert torch.allclose(hidden.weight.square().sum(dim=1).sqrt(), torch.ones(4), atol=1e-5)
        assert (hidden.bias >= 0).all()


def test_not_enforced_is_one_warning_listing_them(tmp_path) -> None:
    K = keras()
    from tlexp.sources.keras import load_keras

    _model(K).save(tmp_path / "m.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = load_keras(tmp_path / "m.keras")
    msgs = [str(w.message) for w in caught if "regularizers/constraints" in str(w.message)]
    assert len(msgs) == 1
    for part in ("conv: kernel_regularizer L2", "hidden: activity_regularizer L2", "out: kernel_constraint MinMaxNorm",
                 "hidden: bias_constraint NonNeg"):
        assert part in msgs[0]
    assert "training_terms" not in graph.meta


def test_enforced_unsupported_term_is_refused(tmp_path) -> None:
    K = keras()
    from tlexp.sources.keras import load_keras

    L = K.layers
    m = K.Sequential([K.Input((5, 3)), L.LSTM(2, recurrent_regularizer=K.regularizers.L2(0.1), name="lstm")])
    m.compile(optimizer="sgd", loss="categorical_crossentropy")
    m.save(tmp_path / "m.keras")
    with pytest.raises(ConfigError, match="lstm: recurrent_regularizer L2"):
        load_keras(tmp_path / "m.keras", enforce_training_config=True)


def test_shared_layer_and_conv_lstm_penalties_equal_keras_losses(tmp_path) -> None:
    """A Dense applied twice: its weight penalty counts once, its activity penalty once per call
    (as in Keras's model.losses); ConvLSTM2D's kernel, recurrent and bias regularizers."""
    K = keras()
    L, R = K.layers, K.regularizers
    v = K.Input((3, 5, 5, 2), name="video")
    y = L.ConvLSTM2D(2, 3, kernel_regularizer=R.L2(0.01), recurrent_regularizer=R.L1(0.02),
                     bias_regularizer=R.L2(0.03), name="clstm")(v)
    h = L.Flatten(name="flat")(y)
    h = L.Dense(6, name="to6")(h)
    shared = L.Dense(6, kernel_regularizer=R.L2(0.04), activity_regularizer=R.L1(0.05), name="shared")
    model = K.Model(v, shared(L.Activation("tanh", name="tanh")(shared(h))))
    model.compile(optimizer=K.optimizers.SGD(0.1), loss="categorical_crossentropy")
    randomize(model, 22)
    _penalty_parity(model, inputs((3, 5, 5, 2), seed=5)[0], tmp_path / "s.keras")
