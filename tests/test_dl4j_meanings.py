"""DL4J's meanings kept: dropout as retain probability, l1/bias regularization, bias lr, constraints."""

from __future__ import annotations

import warnings

import pytest
import torch

from tlexp import finetune as ft
from tlexp.errors import ConfigError
from tlexp.graph import GraphInput, LayerGraph, Node, build_layer


def _net(dropout_hidden: bool = True) -> LayerGraph:
    nodes = [
        Node("h", build_layer("dense", {"in_features": 4, "out_features": 3, "activation": "relu"}), ["x"]),
        Node("out", build_layer("dense", {"in_features": 3, "out_features": 2, "activation": "softmax"}), ["h"]),
    ]
    g = LayerGraph([GraphInput("x", (4,))], nodes, ["out"])
    if not dropout_hidden:
        g.frozen = {"h"}
    return g


def test_dropout_retain_is_dl4j_s_retain_probability() -> None:
    g = _net()
    ft.apply_graph_overrides(g, {"dropout_retain": 0.8})  # DL4J .dropOut(0.8): keep 80%
    assert g.node("h").module.tlexp_args["dropout"] == pytest.approx(0.2)
    assert g.node("out").module.tlexp_args["dropout"] == 0.0  # the output layer is left alone
    with pytest.raises(ConfigError, match="not both"):
        ft.parse_finetune({"dropout": 0.2, "dropout_retain": 0.8})
    with pytest.raises(ConfigError, match="finetune.dropout_retain"):
        ft.parse_finetune({"dropout_retain": 0.0})


def test_dropout_override_that_changes_no_layer_warns() -> None:
    g = _net(dropout_hidden=False)
    with pytest.warns(UserWarning, match="changes no layer"):
        ft.apply_graph_overrides(g, {"dropout": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.apply_graph_overrides(_net(), {"dropout": 0.5})


def test_unknown_finetune_keys_are_refused_from_python() -> None:
    with pytest.raises(ConfigError, match="finetune.l3: unknown key"):
        ft.parse_finetune({"l3": 0.1})


def test_l1_and_bias_regularization() -> None:
    g = _net()
    w, b = g.node("h").module.weight, g.node("h").module.bias
    w2, b2 = g.node("out").module.weight, g.node("out").module.bias
    got = ft.regularization_loss(g, {"l1": 0.1, "l1_bias": 0.2, "l2_bias": 0.3})
    want = (0.1 * (w.abs().sum() + w2.abs().sum()) + 0.2 * (b.abs().sum() + b2.abs().sum())
            + 0.15 * (b.pow(2).sum() + b2.pow(2).sum()))
    torch.testing.assert_close(got, want)


def test_bias_learning_rate_and_bias_weight_decay() -> None:
    opt = ft.build_optimizer(_net(), {"optimizer": "sgd", "lr": 0.1, "bias_lr": 0.01, "weight_decay": 0.5,
                                      "weight_decay_bias": 0.2})
    by_dim = {g["params"][0].dim(): g for g in opt.param_groups}
    assert by_dim[2]["lr"] == 0.1 and by_dim[1]["lr"] == 0.01
    decay = {d: g.get("weight_decay") or g.get(ft._optim.WD_KEY) for d, g in by_dim.items()}
    assert decay == {2: 0.5, 1: 0.2}


def test_constraints_after_a_step() -> None:
    g = _net()
    w = g.node("h").module.weight  # torch [out=3, in=4]; DL4J's [nIn, nOut] norm per input unit
    with torch.no_grad():
        w.copy_(torch.arange(12.0).reshape(3, 4) - 5)
    ft.apply_constraints(g, {"constraints": [{"type": "max_norm", "max": 2.0}]})
    assert float(w.norm(dim=0).max()) <= 2.0 + 1e-5
    ft.apply_constraints(g, {"constraints": [{"type": "unit_norm"}]})
    torch.testing.assert_close(w.norm(dim=0), torch.ones(4), atol=1e-4, rtol=0)
    ft.apply_constraints(g, {"constraints": [{"type": "non_negative", "apply_to": "all"}]})
    assert float(w.min()) >= 0.0 and float(g.node("h").module.bias.min()) >= 0.0
    ft.apply_constraints(g, {"constraints": [{"type": "min_max_norm", "min": 3.0, "max": 4.0}]})
    norms = w.norm(dim=0)
    assert float(norms[norms > 0].min()) >= 3.0 - 1e-4
    with pytest.raises(ConfigError, match="max_norm needs max"):
        ft.parse_finetune({"constraints": [{"type": "max_norm"}]})
