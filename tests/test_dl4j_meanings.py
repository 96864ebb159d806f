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
    assert g.node("h").args["dropout"] == pytest.approx(0.2)
    assert g.node("out").args["dropout"] == 0.0  # the output layer is left alone
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


# ---- DL4J's surgery idioms ---------------------------------------------------------------------


def _vgg_tail() -> LayerGraph:
    nodes = [
        Node("fc2", build_layer("dense", {"in_features": 4, "out_features": 5, "activation": "relu"}), ["x"]),
        Node("predictions", build_layer("dense", {"in_features": 5, "out_features": 2}), ["fc2"]),
        Node("probs", build_layer("activation", {"name": "softmax"}), ["predictions"]),
    ]
    return LayerGraph([GraphInput("x", (4,))], nodes, ["probs", "predictions"])


def test_remove_vertex_keep_connections_then_add_layer_restores_consumers_and_outputs() -> None:
    from tlexp.surgery import apply_ops

    g = apply_ops(_vgg_tail(), [
        {"op": "remove_vertex_keep_connections", "name": "predictions"},
        {"op": "add_layer", "name": "predictions", "type": "dense", "out_features": 3, "inputs": ["fc2"]},
    ])
    assert g.outputs == ["probs", "predictions"]
    assert g.node("probs").inputs == ["predictions"] and g.node("predictions").inputs == ["fc2"]
    assert g(torch.rand(2, 4))[0].shape == (2, 3)


def test_add_inputs_and_a_layer_with_several_inputs_needs_a_merge() -> None:
    from tlexp.surgery import apply_ops

    g = apply_ops(_vgg_tail(), [{"op": "add_inputs", "inputs": ["aux"], "shapes": [[5]]}])
    assert g.inputs == ["x", "aux"]
    with pytest.raises(ConfigError, match="without a merge.*concat"):
        apply_ops(g, [{"op": "add_layer", "name": "both", "type": "dense", "out_features": 2,
                       "inputs": ["fc2", "aux"]}, {"op": "set_outputs", "outputs": ["both"]}])
    g2 = apply_ops(g, [{"op": "add_vertex", "name": "cat", "type": "concat", "inputs": ["fc2", "aux"]},
                       {"op": "add_layer", "name": "both", "type": "dense", "out_features": 2, "inputs": ["cat"]},
                       {"op": "set_outputs", "outputs": ["both"]}])
    assert g2.node("both").inputs == ["cat"]
    assert g2(torch.rand(2, 4), torch.rand(2, 5)).shape == (2, 2)


@pytest.mark.parametrize("name", [s for s in ft.SCHEDULES if s != "none"])
def test_every_schedule_continues_from_its_saved_state(name: str) -> None:
    """What a continued run does with the saved scheduler (JSON) and optimizer groups: the lrs
    after the restore are those of the same scheduler stepped on without a break."""
    import json

    args = {"multistep": {"milestones": [3, 5]}, "step": {"step_size": 2, "interval": "step"},
            "dl4j": {"schedule": {"@class": "org.nd4j.linalg.schedule.StepSchedule", "scheduleType": "ITERATION",
                                  "initialValue": 0.1, "decayRate": 0.5, "step": 3.0}}}.get(name, {})
    cfg = {"schedule": name, "schedule_args": args, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9}

    def fresh():
        g = _net()
        opt = ft.build_optimizer(g, cfg)
        return opt, ft.build_scheduler(opt, cfg, max_epochs=4, steps_per_epoch=3)["scheduler"]

    opt, sched = fresh()
    for _ in range(5):
        opt.step()
        sched.step()
    saved_state = json.loads(json.dumps(ft.scheduler_state(sched)))
    saved_groups = json.loads(json.dumps(opt.state_dict()["param_groups"]))
    want = []
    for _ in range(4):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    opt2, sched2 = fresh()
    ft.restore_scheduler(opt2, sched2, saved_state, saved_groups)
    got = []
    for _ in range(4):
        got.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert got == pytest.approx(want)
    assert got[0] != pytest.approx(0.1)  # not restarted: a fresh schedule's first lr
