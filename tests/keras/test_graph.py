"""An imported Keras model is a native LayerGraph: names, layouts, registry layers, save/reload, freeze."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import tlexp
from tests.keras._util import FIXTURES, data, files, max_diff, run
from tlexp.freeze import freeze
from tlexp.graph import (
    build_layer,
    build_layer_and_spec,
    get_layer_type,
    list_layers,
)
from tlexp.sources import load_source
from tlexp.sources.keras import _layers as keras_layers
from tlexp.sources.keras import load_keras


def _load(version: str, name: str, fmt: str = "h5", **kw):
    path, weights = files(version, name, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_keras(path, weights, **kw)


def _types(graph) -> dict[str, str]:
    return {n.name: n.type for n in graph}


@pytest.mark.parametrize(("version", "name", "layout"), [
    ("k3", "rnn", "channels_first"), ("k2", "rnn", "channels_last"), ("k3", "conv2d_b", "channels_first"),
    ("k2", "conv2d_b", "channels_last"), ("k3", "timedist", "channels_first"), ("k2", "norm_act", "channels_first"),
    ("k3", "norm_act", "channels_last"), ("k2", "activations", "channels_first"), ("k3", "mobilenet", "channels_last"),
    ("k3", "nested", "channels_first"), ("k2", "conv1d", "channels_first"), ("k3", "merge", "channels_first"),
])
def test_saves_and_reloads_with_source_saved(version: str, name: str, layout: str, tmp_path: Path) -> None:
    graph = _load(version, name, input_layout=layout)
    tlexp.save_model(graph, tmp_path / "model")
    again = load_source({"type": "saved", "path": str(tmp_path / "model")})
    xs, ys = data(version, name)
    assert max_diff(run(again, xs, layout), ys) <= 1e-4
    assert again.node_names == graph.node_names


def test_node_names_are_keras_names() -> None:
    g = _load("k3", "nested")
    names = set(g.node_names)
    assert {"inner_seq/id1", "inner_seq/ibn", "inner_fun/fa", "inner_fun/fadd", "cat", "out"} <= names
    # the nested model called a second time: the same layers (one module used at two nodes)
    assert "inner_seq:1/id1" in names
    assert g.module("inner_seq/id1") is g.module("inner_seq:1/id1")
    assert g.shares("inner_seq:1/id1") == "inner_seq/id1"
    m = _load("k2", "merge")  # written by tf-keras 2: the Dense 'shared' applied twice is one module
    assert {"shared", "shared:1"} <= set(m.node_names)
    assert m.module("shared") is m.module("shared:1") and m.shares("shared:1") == "shared"


def test_flatten_keeps_keras_channel_last_order() -> None:
    """The classic bug: Flatten after a conv must flatten H, W, C as Keras does."""
    for layout in ("channels_first", "channels_last"):
        g = _load("k3", "digits", input_layout=layout)
        flat = g.node("flat")
        assert flat.inputs == ["pool/channels_last"]
        assert _types(g)["pool/channels_last"] == "permute"
        assert g.graph_inputs[0].shape == ((1, 8, 8) if layout == "channels_first" else (8, 8, 1))
    cl = _load("k3", "digits", input_layout="channels_last")
    assert cl.node("conv").inputs == [f"{cl.inputs[0]}/channels_first"]


def test_image_outputs_follow_the_layout() -> None:
    xs, _ = data("k3", "conv2d_b")
    cf = _load("k3", "conv2d_b")
    cl = _load("k3", "conv2d_b", input_layout="channels_last")
    with torch.no_grad():
        y_cf = cf.eval()(torch.from_numpy(xs[0]).permute(0, 3, 1, 2))
        y_cl = cl.eval()(torch.from_numpy(xs[0]))
    assert y_cf[0].shape[1] == y_cl[0].shape[-1] == 2  # channels first vs last
    assert torch.allclose(y_cf[0].permute(0, 2, 3, 1), y_cl[0], atol=1e-6)
    assert y_cf[2].shape[1:] == (2, 1, 1)  # GlobalMaxPooling2D(keepdims=True)


def test_hard_sigmoid_follows_keras_version() -> None:
    k2, k3 = _load("k2", "activations"), _load("k3", "activations")
    assert k2.node("act_hard_sigmoid").args["name"] == "hard_sigmoid_keras2"
    assert k3.node("act_hard_sigmoid").args["name"] == "hard_sigmoid"
    assert k2.node("dense_hard_sigmoid").args["activation"] == "hard_sigmoid_keras2"
    x = torch.tensor([[2.0]])
    assert torch.allclose(k2.module("act_hard_sigmoid")(x), torch.tensor([[0.9]]))
    assert torch.allclose(k3.module("act_hard_sigmoid")(x), torch.tensor([[5 / 6]]))


def test_recurrent_layers_use_torch_where_exact() -> None:
    t = _types(_load("k3", "rnn"))
    assert t["lstm"] == "lstm" and t["bi_concat"] == "lstm" and t["gru_last"] == "gru"
    # torch's GRU cannot compute reset_after=False; go_backwards and other activations neither
    for n in ("gru_before", "gru_back", "srnn", "lstm_back", "lstm_hard", "bi_sum", "bi_none"):
        assert t[n] == "keras_rnn", n
    assert t["bi_none/0"] == "getitem"


def test_freeze_split_at_a_keras_layer_name() -> None:
    g = _load("k2", "digits")
    cut = freeze(g, "hidden", "featurize")
    assert cut == {"conv", "pool", "pool/channels_last", "flat", "hidden"}
    prefix, suffix = g.split(cut)
    xs, ys = data("k2", "digits")
    x = torch.from_numpy(xs[0]).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = suffix.eval()(prefix.eval()(x))
    assert np.abs(out.numpy() - ys[0]).max() <= 1e-4


def test_summary_and_input_shape_override() -> None:
    g = _load("k3", "fully_conv")
    assert g.graph_inputs[0].shape == (3, None, None)
    g2 = _load("k3", "fully_conv", input_shape=[6, 5, 3])
    assert g2.graph_inputs[0].shape == (3, 6, 5)
    rows = g2.summary()
    assert [r.name for r in rows] == ["conv", "gap"] and rows[-1].output_shape == ((2,),)


def test_from_config_reads_the_source_node(tmp_path: Path) -> None:
    g = load_source({"type": "keras", "path": str(FIXTURES / "k3" / "conv2d.json"),
                     "weights_path": str(FIXTURES / "k3" / "conv2d.weights.h5"), "input_shape": None,
                     "enforce_training_config": False, "input_layout": "channels_last"})
    xs, ys = data("k3", "conv2d")
    assert max_diff(run(g, xs, "channels_last"), ys) <= 1e-4
    assert g.meta["keras_version"] == 3 and g.meta["input_layout"] == "channels_last"


KERAS_TYPES = sorted(lt.name for lt in list_layers() if lt.provider.startswith(keras_layers.__name__))


@pytest.mark.parametrize("type_name", KERAS_TYPES)
def test_keras_layer_types_rebuild_from_their_spec(type_name: str) -> None:
    lt = get_layer_type(type_name)
    layer, spec = build_layer_and_spec(type_name, lt.example, lt.example_inputs)
    t, args = spec.type, spec.args
    again = build_layer(t, args)
    again.load_state_dict(layer.state_dict())
    xs = [torch.randn(2, *s) for s in lt.example_inputs]
    layer.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(layer(*xs), again(*xs))


def test_keras_rnn_gradients_flow() -> None:
    """Imported recurrent layers fine-tune like any other."""
    rnn = build_layer("keras_rnn", {"cell": "gru", "units": 3, "reset_after": False}, [(5, 4)])
    rnn(torch.randn(2, 5, 4)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rnn.parameters())
