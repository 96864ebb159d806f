"""The finetune part: every option changes what it claims, and bad values fail with one clear line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tlexp.errors import ConfigError
from tlexp.finetune import (
    GRADIENT_NORMALIZATIONS,
    OPTIMIZERS,
    SCHEDULES,
    WEIGHT_INITS,
    apply_graph_overrides,
    build_optimizer,
    build_scheduler,
    load_optimizer_state,
    normalize_gradients,
    parse_finetune,
    regularization_loss,
    validate_finetune,
)
from tlexp.sources.saved import load_model, save_model
from tlexp.sources.saved import load_optimizer_state as read_optimizer_state
from tlexp.sources.spec import build_spec

# ---- helpers -------------------------------------------------------------------------------


def mlp(frozen=("fc1",), out_act="softmax"):
    """input(6) -> fc1(relu) -> bn -> drop -> fc2(tanh) -> lin(identity) -> fc3(relu) -> out(softmax)."""
    torch.manual_seed(0)
    g = build_spec(
        [
            {"name": "fc1", "type": "dense", "out_features": 8, "activation": "relu", "dropout": 0.1},
            {"name": "bn", "type": "batchnorm1d"},
            {"name": "drop", "type": "dropout", "p": 0.2},
            {"name": "fc2", "type": "dense", "out_features": 7, "activation": "tanh"},
            {"name": "lin", "type": "dense", "out_features": 7},
            {"name": "fc3", "type": "dense", "out_features": 5, "activation": "relu"},
            {"name": "out", "type": "dense", "out_features": 3, "activation": out_act},
        ],
        input_shape=[6],
    )
    g.set_frozen(frozen)
    return g


def spec_of(g, name):
    return g.node(name).args


def backward(g, seed=1):
    torch.manual_seed(seed)
    g.train()
    y = g(torch.randn(16, 6))
    (y * torch.randn_like(y)).sum().backward()


def node_grad_norm(g, name):
    grads = [p.grad.flatten() for p in g.module(name).parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.cat(grads)).item()


def trainable(g):
    return [p for p in g.parameters() if p.requires_grad]


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, field, valid",
    [
        ({"optimizer": "adamx"}, "finetune.optimizer", "sgd, nesterov, adam, adamw, rmsprop, adagrad"),
        ({"optimizer": 3}, "finetune.optimizer", "sgd, nesterov"),
        ({"optimizer": {"lr": 0.1}}, "finetune.optimizer", "_target_"),
        ({"optimizer": {"_target_": "torch.optim.NoSuchThing"}}, "finetune.optimizer._target_", "cannot import"),
        ({"optimizer": {"_target_": "torch.nn.Linear"}}, "finetune.optimizer._target_", "not a torch.optim.Optimizer"),
        ({"optimizer": {"_target_": "torch.optim.SGD", "weight_decay": 0.1}}, "finetune.optimizer.weight_decay", "finetune.weight_decay"),
        ({"optimizer": {"_target_": "torch.optim.SGD", "params": []}}, "finetune.optimizer.params", "tlexp passes"),
        ({"lr": -0.1}, "finetune.lr", ">= 0"),
        ({"lr": "fast"}, "finetune.lr", "not a number"),
        ({"momentum": 1.5}, "finetune.momentum", "[0, 1)"),
        ({"optimizer": "nesterov", "momentum": 0.0}, "finetune.momentum", "(0, 1)"),
        ({"betas": [0.9]}, "finetune.betas", "pair"),
        ({"eps": 0}, "finetune.eps", "> 0"),
        ({"weight_decay": -1}, "finetune.weight_decay", ">= 0"),
        ({"l2": -1}, "finetune.l2", ">= 0"),
        ({"schedule": "cosin"}, "finetune.schedule", "none, step, multistep, exponential, cosine, warmup_cosine, onecycle"),
        ({"schedule": "step", "schedule_args": {"stepsize": 2}}, "finetune.schedule_args.stepsize", "step_size, gamma, interval"),
        ({"schedule": "multistep"}, "finetune.schedule_args.milestones", "needs it"),
        ({"schedule": "multistep", "schedule_args": {"milestones": [5, 2]}}, "finetune.schedule_args.milestones", "increasing"),
        ({"schedule": "cosine", "schedule_args": {"interval": "batch"}}, "finetune.schedule_args.interval", "epoch, step"),
        ({"dropout": 1.0}, "finetune.dropout", "[0, 1)"),
        ({"activation": "relux"}, "finetune.activation", "relu"),
        ({"weight_init": "he"}, "finetune.weight_init", "xavier_uniform"),
        ({"bias_init": "x"}, "finetune.bias_init", "not a number"),
        ({"gradient_normalization": "clip"}, "finetune.gradient_normalization", "renormalize_l2_per_layer"),
        ({"gradient_normalization_threshold": 0}, "finetune.gradient_normalization_threshold", "> 0"),
        ({"seed": 1.5}, "finetune.seed", "integer"),
        ({"apply_to_output": "yes"}, "finetune.apply_to_output", "bool"),
        ({"groups": [{"pattern": "fc*", "rate": 1}]}, "finetune.groups[0].rate", "pattern, lr, lr_scale, weight_decay, l2"),
        ({"groups": [{"lr": 1}]}, "finetune.groups[0].pattern", "fnmatch"),
        ({"groups": [{"pattern": "a", "lr": -1}]}, "finetune.groups[0].lr", ">= 0"),
        ({"groups": [{"pattern": "a", "lr": 1, "lr_scale": 2}]}, "finetune.groups[0]", "not both"),
    ],
)
def test_invalid_values_name_field_and_choices(cfg, field, valid):
    with pytest.raises(ConfigError) as e:
        validate_finetune(cfg)
    msg = str(e.value)
    assert msg.startswith(field + ":"), msg
    assert valid in msg
    assert "\n" not in msg


def test_defaults_and_config_objects_are_accepted():
    validate_finetune({})
    validate_finetune(None)
    node = OmegaConf.create(
        {"optimizer": "sgd", "lr": 1e-2, "betas": [0.9, 0.99], "schedule_args": {},
         "groups": [{"pattern": "fc3", "lr": None, "weight_decay": 0.0}], "save_optimizer_state": True}
    )
    validate_finetune(node)  # an OmegaConf node, with a key this part does not own and None group values
    opt = build_optimizer(mlp(), node)
    assert isinstance(opt, torch.optim.SGD)
    settings = parse_finetune(node)  # parsed once, then passed to the per-step calls
    assert parse_finetune(settings) is settings and settings.lr == 1e-2
    assert regularization_loss(mlp(), settings).item() == 0.0
    validate_finetune({"lr": "1e-3"})  # YAML 1.1 reads 1e-3 as text
    validate_finetune({"optimizer": {"_target_": "torch.optim.RAdam", "_partial_": True, "lr": 0.01}})


# ---- optimizers ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_named_optimizer_builds_with_its_options(name):
    cfg = {"optimizer": name, "lr": 0.05, "momentum": 0.7, "betas": [0.8, 0.9], "eps": 1e-6}
    opt = build_optimizer(mlp(), cfg)
    cls = {"sgd": torch.optim.SGD, "nesterov": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}[name]
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.05
    if name in ("sgd", "nesterov", "rmsprop"):
        assert group["momentum"] == 0.7
    if name in ("sgd", "nesterov"):
        assert group["nesterov"] is (name == "nesterov")
    if name in ("adam", "adamw"):
        assert tuple(group["betas"]) == (0.8, 0.9)
    if name != "sgd" and name != "nesterov":
        assert group["eps"] == 1e-6


def test_only_trainable_params_in_graph_order():
    g = mlp(frozen=("fc1", "bn"))
    opt = build_optimizer(g, {"optimizer": "sgd"})
    got = {id(p) for grp in opt.param_groups for p in grp["params"]}
    want = [p for p in g.parameters() if p.requires_grad]
    assert got == {id(p) for p in want}
    assert not any(id(p) in got for p in g.module("fc1").parameters())
    # within each group, the order is graph.parameters() order
    order = {id(p): i for i, p in enumerate(want)}
    for grp in opt.param_groups:
        idx = [order[id(p)] for p in grp["params"]]
        assert idx == sorted(idx)


def _run(g, cfg, steps=2, seed=3):
    opt = build_optimizer(g, cfg)
    for i in range(steps):
        opt.zero_grad()
        backward(g, seed + i)
        opt.step()
    return [p.detach().clone() for p in trainable(g)]


def test_nesterov_is_torch_nesterov_and_differs_from_momentum():
    nesterov = _run(mlp(), {"optimizer": "nesterov", "lr": 0.1, "momentum": 0.9})
    plain = _run(mlp(), {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9})
    g = mlp()
    ref = torch.optim.SGD(trainable(g), lr=0.1, momentum=0.9, nesterov=True)
    for i in range(2):
        ref.zero_grad()
        backward(g, 3 + i)
        ref.step()
    assert all(torch.allclose(a, b) for a, b in zip(nesterov, trainable(g)))
    assert any(not torch.allclose(a, b) for a, b in zip(nesterov, plain))


@pytest.mark.parametrize("name", [*OPTIMIZERS, "radam"])
def test_weight_decay_is_decoupled_for_every_optimizer(name):
    g = mlp(frozen=())
    optimizer = {"_target_": "torch.optim.RAdam", "_partial_": True} if name == "radam" else name
    opt = build_optimizer(g, {"optimizer": optimizer, "lr": 0.1, "weight_decay": 0.5})
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    for p in g.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in g.named_parameters():
        if p.dim() >= 2:  # weights shrink by exactly 1 - lr * wd
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5), rtol=1e-6, atol=0)
        else:  # biases and batchnorm scale/shift are not decayed
            assert torch.equal(p.detach(), before[n]), n


def test_decoupled_decay_uses_the_gradient_at_the_undecayed_weight():
    # loss 0.5 * ||w||^2 has gradient w; with the closure (as Lightning calls step), the update is
    # w * (1 - lr * wd) - lr * w_old: decay after backward, before the step (AdamW's order).
    lin = build_spec([{"name": "fc", "type": "dense", "out_features": 3, "bias": False}], input_shape=[4])
    opt = build_optimizer(lin, {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "weight_decay": 0.5})
    w0 = lin.module("fc").weight.detach().clone()

    def closure():
        opt.zero_grad()
        loss = 0.5 * lin.module("fc").weight.pow(2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(0.5 * w0.pow(2).sum().item())
    torch.testing.assert_close(lin.module("fc").weight.detach(), w0 * (1 - 0.05) - 0.1 * w0)


def test_adam_weight_decay_matches_torch_adamw():
    ours = _run(mlp(), {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.3}, steps=3)
    g = mlp()
    weights = [p for p in trainable(g) if p.dim() >= 2]
    others = [p for p in trainable(g) if p.dim() < 2]
    ref = torch.optim.AdamW([{"params": weights, "weight_decay": 0.3}, {"params": others, "weight_decay": 0.0}], lr=0.01)
    for i in range(3):
        ref.zero_grad()
        backward(g, 3 + i)
        ref.step()
    for a, b in zip(ours, trainable(g)):
        torch.testing.assert_close(a, b.detach())


def test_l2_and_weight_decay_have_different_effects():
    wd = _run(mlp(), {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.5}, steps=3)
    g = mlp()
    cfg = {"optimizer": "adam", "lr": 0.01, "l2": 0.5}
    opt = build_optimizer(g, cfg)
    for i in range(3):
        opt.zero_grad()
        backward(g, 3 + i)
        regularization_loss(g, cfg).backward()
        opt.step()
    plain = _run(mlp(), {"optimizer": "adam", "lr": 0.01}, steps=3)
    l2 = [p.detach() for p in trainable(g)]
    assert any(not torch.allclose(a, b) for a, b in zip(wd, l2))
    assert any(not torch.allclose(a, b) for a, b in zip(plain, l2))


def test_target_optimizer_with_partial():
    g = mlp()
    cfg = {"optimizer": {"_target_": "torch.optim.RAdam", "_partial_": True, "betas": [0.5, 0.6]}, "lr": 0.02}
    opt = build_optimizer(g, cfg)
    assert type(opt) is torch.optim.RAdam
    assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["betas"] == [0.5, 0.6]
    json.dumps([{k: v for k, v in grp.items() if k != "params"} for grp in opt.param_groups])  # saveable
    backward(g)
    before = [p.detach().clone() for p in trainable(g)]
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable(g)))
    # the mapping's own lr wins over finetune.lr; _partial_ may be left out
    opt = build_optimizer(mlp(), {"optimizer": {"_target_": "torch.optim.RAdam", "lr": 0.3}, "lr": 0.02})
    assert {grp["lr"] for grp in opt.param_groups} == {0.3}


def test_target_optimizer_bad_arguments_fail_clearly():
    with pytest.raises(ConfigError, match=r"^finetune.optimizer: cannot"):
        build_optimizer(mlp(), {"optimizer": {"_target_": "torch.optim.RAdam", "betaz": [0.5, 0.6]}})


def test_no_trainable_parameters_is_a_config_error():
    g = mlp(frozen=("fc1", "bn", "drop", "fc2", "lin", "fc3", "out"))
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(g, {})


# ---- groups --------------------------------------------------------------------------------


def test_groups_set_lr_and_weight_decay_first_match_wins():
    g = mlp(frozen=())
    cfg = {
        "lr": 0.01,
        "weight_decay": 0.1,
        "groups": [
            {"pattern": "fc3", "lr": 0.5},
            {"pattern": "fc*", "lr_scale": 0.1, "weight_decay": 0.0},
            {"pattern": ["out", "lin"], "lr": 0.2},
        ],
    }
    opt = build_optimizer(g, cfg)
    lr_of, wd_of = {}, {}
    for grp in opt.param_groups:
        for p in grp["params"]:
            lr_of[id(p)], wd_of[id(p)] = grp["lr"], grp["weight_decay"]
    m = g.module
    assert lr_of[id(m("fc3").weight)] == 0.5 and wd_of[id(m("fc3").weight)] == 0.1
    assert lr_of[id(m("fc1").weight)] == pytest.approx(0.001) and wd_of[id(m("fc1").weight)] == 0.0
    assert lr_of[id(m("fc2").bias)] == pytest.approx(0.001)
    assert lr_of[id(m("out").weight)] == 0.2 and lr_of[id(m("lin").weight)] == 0.2
    assert lr_of[id(m("bn").weight)] == 0.01 and wd_of[id(m("bn").weight)] == 0.0
    assert wd_of[id(m("out").bias)] == 0.0  # biases never decay
    names = [grp["name"] for grp in opt.param_groups]
    assert names[0] == "default/no_decay" or names[0] == "default"


def test_group_lr_changes_the_update():
    g = mlp(frozen=())
    opt = build_optimizer(g, {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "groups": [{"pattern": "out", "lr": 0.0}]})
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    backward(g)
    opt.step()
    after = dict(g.named_parameters())
    assert torch.equal(after["layers.out.weight"], before["layers.out.weight"])
    assert not torch.equal(after["layers.fc3.weight"], before["layers.fc3.weight"])


def test_group_pattern_typo_fails_early_and_frozen_only_warns():
    with pytest.raises(ConfigError, match=r"^finetune.groups\[0\].pattern: 'layer4\.\*' matches no layer; layers: fc1"):
        apply_graph_overrides(mlp(), {"groups": [{"pattern": "layer4.*", "lr": 0.1}]})
    with pytest.warns(UserWarning, match="matches no trainable parameter"):
        build_optimizer(mlp(), {"groups": [{"pattern": "fc1", "lr": 0.1}]})


# ---- l2 ------------------------------------------------------------------------------------


def test_l2_value_excludes_biases_norms_and_frozen_layers():
    g = mlp(frozen=("fc1",))
    got = regularization_loss(g, {"l2": 0.3})
    weights = [g.module(n).weight for n in ("fc2", "lin", "fc3", "out")]
    want = 0.3 / 2 * sum(w.pow(2).sum() for w in weights)
    torch.testing.assert_close(got, want)
    got.backward()
    torch.testing.assert_close(g.module("fc2").weight.grad, 0.3 * g.module("fc2").weight.detach())
    assert g.module("fc2").bias.grad is None and g.module("bn").weight.grad is None


def test_l2_zero_and_group_l2():
    g = mlp()
    zero = regularization_loss(g, {})
    assert zero.shape == () and zero.item() == 0.0
    got = regularization_loss(g, {"l2": 0.0, "groups": [{"pattern": "out", "l2": 2.0}]})
    torch.testing.assert_close(got, g.module("out").weight.pow(2).sum())


# ---- gradient normalization ----------------------------------------------------------------


def _grads(g):
    return {n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None}


def test_gradient_normalization_names_are_all_handled():
    for mode in GRADIENT_NORMALIZATIONS:
        g = mlp()
        backward(g)
        normalize_gradients(g, {"gradient_normalization": mode, "gradient_normalization_threshold": 1e-3})
        changed = any(not torch.equal(a, b) for a, b in zip(_grads(g).values(), _grads(_with_grads()).values()))
        assert changed == (mode != "none"), mode


def _with_grads():
    g = mlp()
    backward(g)
    return g


def test_renormalize_l2_per_layer_gives_unit_norm_per_layer():
    g = _with_grads()
    normalize_gradients(g, {"gradient_normalization": "renormalize_l2_per_layer"})
    for name in ("bn", "fc2", "lin", "fc3", "out"):
        assert node_grad_norm(g, name) == pytest.approx(1.0, abs=1e-6)
    assert g.module("fc1").weight.grad is None  # frozen


def test_renormalize_l2_per_param_type_gives_unit_norm_per_tensor():
    g = _with_grads()
    normalize_gradients(g, {"gradient_normalization": "renormalize_l2_per_param_type"})
    for n, grad in _grads(g).items():
        assert torch.linalg.vector_norm(grad).item() == pytest.approx(1.0, abs=1e-6), n


def test_clip_l2_per_layer_caps_large_layers_and_leaves_small_ones():
    ref = _with_grads()
    norms = {n: node_grad_norm(ref, n) for n in ("bn", "fc2", "lin", "fc3", "out")}
    t = sorted(norms.values())[2]  # some layers above, some at or below
    g = _with_grads()
    normalize_gradients(g, {"gradient_normalization": "clip_l2_per_layer", "gradient_normalization_threshold": t})
    for n, before in norms.items():
        if before > t:
            assert node_grad_norm(g, n) == pytest.approx(t, rel=1e-6)
        else:
            for (k, a), b in zip(g.module(n).named_parameters(), ref.module(n).parameters()):
                assert torch.equal(a.grad, b.grad), (n, k)


def test_clip_l2_per_param_type():
    ref = _with_grads()
    g = _with_grads()
    normalize_gradients(g, {"gradient_normalization": "clip_l2_per_param_type", "gradient_normalization_threshold": 0.05})
    for (n, a), b in zip(_grads(g).items(), _grads(ref).values()):
        nb = torch.linalg.vector_norm(b).item()
        assert torch.linalg.vector_norm(a).item() == pytest.approx(min(nb, 0.05), rel=1e-5), n


@pytest.mark.parametrize("mode", ["clip_value", "clip_element_wise_absolute_value"])
def test_clip_value(mode):
    ref = _with_grads()
    g = _with_grads()
    normalize_gradients(g, {"gradient_normalization": mode, "gradient_normalization_threshold": 0.01})
    for a, b in zip(_grads(g).values(), _grads(ref).values()):
        torch.testing.assert_close(a, b.clamp(-0.01, 0.01))
    assert any((b.abs() > 0.01).any() for b in _grads(ref).values())


def test_clip_norm_is_global():
    ref = _with_grads()
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in _grads(ref).values()])).item()
    g = _with_grads()
    normalize_gradients(g, {"gradient_normalization": "clip_norm", "gradient_normalization_threshold": total / 4})
    for a, b in zip(_grads(g).values(), _grads(ref).values()):
        torch.testing.assert_close(a, b / 4, rtol=1e-5, atol=1e-8)  # one factor for all layers
    g = _with_grads()
    normalize_gradients(g, {"gradient_normalization": "clip_norm", "gradient_normalization_threshold": total * 2})
    assert all(torch.equal(a, b) for a, b in zip(_grads(g).values(), _grads(ref).values()))


# ---- dropout / activation overrides --------------------------------------------------------


def test_overrides_apply_to_unfrozen_hidden_layers_only():
    g = mlp(frozen=("fc1", "bn"))
    weights = {k: v.clone() for k, v in g.state_dict().items()}
    apply_graph_overrides(g, {"dropout": 0.3, "activation": "elu"})
    assert torch.equal(torch.cat([v.flatten().float() for v in weights.values()]),
                       torch.cat([v.flatten().float() for v in g.state_dict().values()]))
    # frozen: untouched
    assert spec_of(g, "fc1")["dropout"] == 0.1 and spec_of(g, "fc1")["activation"] == "relu"
    assert g.module("fc1").drop.p == 0.1 and isinstance(g.module("fc1").act, nn.ReLU)
    # the dropout node gets the rate; fc2 (fed by that node) does not stack a second dropout
    assert spec_of(g, "drop")["p"] == 0.3 and g.module("drop").p == 0.3
    assert spec_of(g, "fc2")["dropout"] == 0.0 and isinstance(g.module("fc2").drop, nn.Identity)
    assert spec_of(g, "fc2")["activation"] == "elu" and isinstance(g.module("fc2").act, nn.ELU)
    # a hidden layer without a nonlinearity stays linear, but gets dropout
    assert spec_of(g, "lin")["activation"] == "identity" and isinstance(g.module("lin").act, nn.Identity)
    assert spec_of(g, "lin")["dropout"] == 0.3 and g.module("lin").drop.p == 0.3
    assert spec_of(g, "fc3") == {**spec_of(g, "fc3"), "activation": "elu", "dropout": 0.3}
    # the output layer: untouched
    assert spec_of(g, "out")["activation"] == "softmax" and isinstance(g.module("out").act, nn.Softmax)
    assert spec_of(g, "out")["dropout"] == 0.0


def test_override_behaviour_matches_spec_and_survives_save(tmp_path):
    g = mlp()
    apply_graph_overrides(g, {"dropout": 0.5, "activation": "tanh", "apply_to_output": True})
    assert spec_of(g, "out")["activation"] == "tanh" and isinstance(g.module("out").act, nn.Tanh)
    fc3 = g.module("fc3")
    x = torch.randn(5, 7)
    g.eval()
    torch.testing.assert_close(fc3(x), torch.tanh(x @ fc3.weight.T + fc3.bias))
    g.train()
    torch.manual_seed(0)
    assert (fc3.drop(torch.ones(1000)) == 0).float().mean().item() == pytest.approx(0.5, abs=0.07)
    save_model(g, tmp_path / "m")
    h = load_model(tmp_path / "m")
    assert h.to_config() == g.to_config()
    g.eval(), h.eval()
    x = torch.randn(4, 6)
    torch.testing.assert_close(g(x), h(x))


def test_override_keeps_module_mode():
    g = mlp(frozen=())
    g.eval()
    apply_graph_overrides(g, {"dropout": 0.4})
    assert not g.module("lin").drop.training
    x = torch.randn(3, 6)
    torch.testing.assert_close(g(x), g(x))  # inference mode: no dropout


def test_output_head_includes_layer_behind_a_separate_softmax():
    g = build_spec(
        [
            {"name": "conv", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "activation": "relu"},
            {"name": "pool", "type": "global_avg_pool"},
            {"name": "relu", "type": "activation", "args": {"name": "relu"}},
            {"name": "logits", "type": "dense", "out_features": 3, "activation": "relu"},
            {"name": "prob", "type": "activation", "args": {"name": "softmax"}},
        ],
        input_shape=[2, 6, 6],
    )
    apply_graph_overrides(g, {"activation": "gelu", "dropout": 0.2})
    assert spec_of(g, "prob")["name"] == "softmax" and isinstance(g.module("prob").fn, nn.Softmax)
    assert spec_of(g, "logits")["activation"] == "relu" and spec_of(g, "logits")["dropout"] == 0.0
    assert spec_of(g, "relu")["name"] == "gelu" and isinstance(g.module("relu").fn, nn.GELU)
    assert spec_of(g, "conv")["activation"] == "gelu" and isinstance(g.module("conv").act, nn.GELU)
    assert isinstance(g.module("conv").drop, nn.Dropout2d) and g.module("conv").drop.p == 0.2
    apply_graph_overrides(g, {"dropout": 0.0})
    assert isinstance(g.module("conv").drop, nn.Identity) and spec_of(g, "conv")["dropout"] == 0.0


# ---- init of new layers --------------------------------------------------------------------


def _fresh(seed_global=0):
    g = mlp(frozen=("fc1",))
    g.node("fc3").reinit = True
    g.node("out").reinit = True
    torch.manual_seed(seed_global)
    return g


@pytest.mark.parametrize("init", WEIGHT_INITS)
def test_weight_init_only_touches_reinit_modules(init):
    g = _fresh()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    apply_graph_overrides(g, {"weight_init": init, "bias_init": 0.25})
    after = g.state_dict()
    for k, v in before.items():
        new = k.startswith(("layers.fc3.", "layers.out."))
        if not new:
            assert torch.equal(v, after[k]), k
        elif k.endswith("bias"):
            assert torch.all(after[k] == 0.25), k
        else:
            assert not torch.equal(v, after[k]), k
    w = after["layers.fc3.weight"]
    if init == "zeros":
        assert torch.all(w == 0)
    if init == "ones":
        assert torch.all(w == 1)


def test_weight_init_distributions():
    g = build_spec([{"name": "big", "type": "dense", "out_features": 400}], input_shape=[300])
    g.node("big").reinit = True
    fan_in, fan_out = 300, 400
    expect_std = {
        "xavier_uniform": math.sqrt(2 / (fan_in + fan_out)),
        "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
        "kaiming_uniform": math.sqrt(2 / fan_in),
        "kaiming_normal": math.sqrt(2 / fan_in),
        "normal": 1 / math.sqrt(fan_in),
        "uniform": 1 / math.sqrt(fan_in) / math.sqrt(3),
    }
    for init, std in expect_std.items():
        apply_graph_overrides(g, {"weight_init": init, "seed": 1})
        assert g.module("big").weight.std().item() == pytest.approx(std, rel=0.03), init


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    a, b, c = _fresh(1), _fresh(2), _fresh(3)
    torch.manual_seed(42)
    apply_graph_overrides(a, {"weight_init": "xavier_normal", "seed": 7})
    after_call = torch.rand(3)
    torch.manual_seed(42)
    assert torch.equal(after_call, torch.rand(3))  # the global stream is where it was
    apply_graph_overrides(b, {"weight_init": "xavier_normal", "seed": 7})
    apply_graph_overrides(c, {"weight_init": "xavier_normal", "seed": 8})
    for k in a.state_dict():
        if k.startswith(("layers.fc3.", "layers.out.")):
            assert torch.equal(a.state_dict()[k], b.state_dict()[k]), k
    assert not torch.equal(a.module("out").weight, c.module("out").weight)
    # seed alone re-runs the layers' own init, reproducibly (biases too)
    d, e = _fresh(), _fresh()
    with torch.no_grad():
        e.module("out").bias.add_(1.0)
        e.module("out").weight.add_(1.0)
    apply_graph_overrides(d, {"seed": 3})
    apply_graph_overrides(e, {"seed": 3})
    assert torch.equal(d.module("out").bias, e.module("out").bias)
    assert torch.equal(d.module("out").weight, e.module("out").weight)


def test_no_init_options_change_nothing():
    g = _fresh()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    apply_graph_overrides(g, {})
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in before.items())


def test_bias_init_alone_keeps_weights():
    g = _fresh()
    w = g.module("out").weight.detach().clone()
    apply_graph_overrides(g, {"bias_init": -1.0})
    assert torch.equal(g.module("out").weight, w) and torch.all(g.module("out").bias == -1.0)
    assert not torch.all(g.module("fc2").bias == -1.0)


# ---- schedules -----------------------------------------------------------------------------


def _lrs(cfg, max_epochs, steps_per_epoch, group=0):
    g = mlp()
    opt = build_optimizer(g, {"optimizer": "sgd", **cfg})
    sched = build_scheduler(opt, {"optimizer": "sgd", **cfg}, max_epochs, steps_per_epoch)
    out = []
    for _ in range(max_epochs):
        for _ in range(steps_per_epoch):
            out.append(opt.param_groups[group]["lr"])
            opt.step()
            if sched["interval"] == "step":
                sched["scheduler"].step()
        if sched["interval"] == "epoch":
            sched["scheduler"].step()
    return out, sched


def test_no_schedule():
    opt = build_optimizer(mlp(), {})
    assert build_scheduler(opt, {}, 10, 5) is None


def test_step_schedule_per_epoch():
    lrs, sched = _lrs({"lr": 1.0, "schedule": "step", "schedule_args": {"step_size": 2, "gamma": 0.5}}, 5, 2)
    assert sched["interval"] == "epoch" and sched["frequency"] == 1
    assert lrs == pytest.approx([1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_multistep_and_exponential():
    lrs, _ = _lrs({"lr": 1.0, "schedule": "multistep", "schedule_args": {"milestones": [1, 3], "gamma": 0.1}}, 4, 1)
    assert lrs == pytest.approx([1, 0.1, 0.1, 0.01])
    lrs, _ = _lrs({"lr": 1.0, "schedule": "exponential", "schedule_args": {"gamma": 0.5, "interval": "step"}}, 2, 2)
    assert lrs == pytest.approx([1, 0.5, 0.25, 0.125])


def test_cosine_per_step():
    lrs, sched = _lrs({"lr": 1.0, "schedule": "cosine", "schedule_args": {"min_lr": 0.1}}, 2, 4)
    assert sched["interval"] == "step"
    assert lrs == pytest.approx([0.1 + 0.9 * (1 + math.cos(math.pi * t / 8)) / 2 for t in range(8)])


def test_warmup_cosine():
    lrs, _ = _lrs({"lr": 1.0, "schedule": "warmup_cosine", "schedule_args": {"warmup_epochs": 0.5, "warmup_start_factor": 0.1}}, 3, 4)
    want = [0.1 + 0.9 * t / 2 for t in range(2)] + [(1 + math.cos(math.pi * t / 10)) / 2 for t in range(10)]
    assert lrs == pytest.approx(want)


def test_onecycle_keeps_group_ratios():
    cfg = {"lr": 1.0, "schedule": "onecycle", "groups": [{"pattern": "out", "lr": 0.1}],
           "schedule_args": {"pct_start": 0.25, "div_factor": 10, "final_div_factor": 100, "anneal_strategy": "linear"}}
    a, sched = _lrs(cfg, 2, 4, group=0)
    b, _ = _lrs(cfg, 2, 4, group=-1)
    assert sched["interval"] == "step"
    assert a[0] == pytest.approx(0.1) and max(a) == pytest.approx(1.0) and a.index(max(a)) == 1
    assert a[-1] == pytest.approx(0.1 / 100, rel=0.0, abs=0.2)  # annealing towards initial / final_div_factor
    assert a[-1] < a[-2] < a[2]
    assert b == pytest.approx([x / 10 for x in a])


def test_schedules_that_need_the_run_length_say_so():
    opt = build_optimizer(mlp(), {})
    for name in ("cosine", "warmup_cosine", "onecycle"):
        with pytest.raises(ConfigError, match=r"^finetune.schedule: .*trainer\.max_epochs"):
            build_scheduler(opt, {"schedule": name}, -1, 10)
    with pytest.raises(ConfigError, match=r"^finetune.schedule_args.warmup_epochs"):
        build_scheduler(opt, {"schedule": "warmup_cosine", "schedule_args": {"warmup_epochs": 3}}, 3, 10)
    with pytest.raises(ConfigError, match=r"^finetune.schedule_args.cycle_momentum"):
        build_scheduler(build_optimizer(mlp(), {"optimizer": "adagrad"}), {"schedule": "onecycle", "schedule_args": {"cycle_momentum": True}}, 2, 2)


def test_every_schedule_builds():
    for name in SCHEDULES:
        opt = build_optimizer(mlp(), {})
        args = {"milestones": [1]} if name == "multistep" else {}
        if name == "dl4j":  # DL4J's learningRateSchedule JSON
            args = {"schedule": {"@class": "org.nd4j.linalg.schedule.ExponentialSchedule", "scheduleType": "EPOCH",
                                 "initialValue": 0.1, "gamma": 0.5}}
        sched = build_scheduler(opt, {"schedule": name, "schedule_args": args}, 3, 2)
        assert (sched is None) == (name == "none")
        if sched:
            assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.LRScheduler)
            assert sched["interval"] in ("epoch", "step")


# ---- optimizer state -----------------------------------------------------------------------


def _trained(cfg, steps=2):
    g = mlp()
    opt = build_optimizer(g, cfg)
    for i in range(steps):
        opt.zero_grad()
        backward(g, 10 + i)
        opt.step()
    return g, opt


def test_optimizer_state_round_trips_through_a_saved_model(tmp_path):
    cfg = {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.1, "groups": [{"pattern": "out", "lr": 0.1}]}
    g, opt = _trained(cfg)
    save_model(g, tmp_path / "m", optimizer_state=opt.state_dict())
    h = load_model(tmp_path / "m")
    h.set_frozen(g.frozen)
    opt2 = build_optimizer(h, {**cfg, "lr": 0.02})
    load_optimizer_state(opt2, read_optimizer_state(tmp_path / "m"))
    assert opt2.param_groups[0]["lr"] == 0.02  # hyperparameters come from the current config
    assert tuple(opt2.param_groups[0]["betas"]) == (0.9, 0.999)
    for p, q in zip(trainable(g), trainable(h)):
        s, t = opt.state[p], opt2.state[q]
        assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(s["exp_avg_sq"], t["exp_avg_sq"])
        assert float(s["step"]) == float(t["step"])
    # the next step continues from the saved moments
    for o in opt2.param_groups:
        o["lr"] = 0.01 if o["name"].startswith("default") else 0.1
    for graph, o in ((g, opt), (h, opt2)):
        o.zero_grad()
        backward(graph, 20)
        o.step()
    for p, q in zip(trainable(g), trainable(h)):
        torch.testing.assert_close(p, q)


def test_optimizer_state_that_does_not_fit_is_a_config_error():
    _, opt = _trained({"optimizer": "adam"})
    state = opt.state_dict()
    with pytest.raises(ConfigError, match=r"^source.load_optimizer_state: the saved state has parameter groups of sizes"):
        load_optimizer_state(build_optimizer(mlp(frozen=("fc1", "bn")), {"optimizer": "adam"}), state)
    with pytest.raises(ConfigError, match="another optimizer"):
        load_optimizer_state(build_optimizer(mlp(), {"optimizer": "sgd"}), state)
    bad = opt.state_dict()
    bad["state"][0] = {**bad["state"][0], "exp_avg": torch.zeros(2, 2)}
    with pytest.raises(ConfigError, match="has shape"):
        load_optimizer_state(build_optimizer(mlp(), {"optimizer": "adam"}), bad)
    with pytest.raises(ConfigError, match="not an optimizer state"):
        load_optimizer_state(build_optimizer(mlp(), {}), {"foo": 1})
    # AdamW's state fits Adam: the same moments
    _, adamw = _trained({"optimizer": "adamw"})
    load_optimizer_state(build_optimizer(mlp(), {"optimizer": "adam"}), adamw.state_dict())


# ---- inside Lightning ----------------------------------------------------------------------


def test_decoupled_decay_and_hooks_inside_lightning(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    cfg = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.5, "schedule": "step",
           "schedule_args": {"step_size": 1, "gamma": 0.5}, "gradient_normalization": "clip_l2_per_layer"}

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.graph = build_spec([{"name": "fc", "type": "dense", "out_features": 2, "bias": False}], input_shape=[3])
            self.w0 = self.graph.module("fc").weight.detach().clone()
            self.lrs = []

        def training_step(self, batch, _):
            self.lrs.append(self.optimizers().param_groups[0]["lr"])
            return (self.graph(batch[0]) * 0).sum() + regularization_loss(self.graph, cfg)

        def on_before_optimizer_step(self, optimizer):
            normalize_gradients(self.graph, cfg)

        def configure_optimizers(self):
            opt = build_optimizer(self.graph, cfg)
            return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, cfg, 2, 2)}

    m = Module()
    data = DataLoader(TensorDataset(torch.randn(4, 3)), batch_size=2)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(m, data)
    assert m.lrs == pytest.approx([0.1, 0.1, 0.05, 0.05])
    shrink = math.prod(1 - lr * 0.5 for lr in m.lrs)  # the gradient is zero: only the decay moves the weights
    torch.testing.assert_close(m.graph.module("fc").weight.detach(), m.w0 * shrink)


def test_scheme_named_by_a_surgery_op_survives_finetune_init():
    """n_out_replace weight_init=zeros keeps its scheme when finetune.seed re-runs the init."""
    from tlexp.sources.spec import build_spec
    from tlexp.surgery import apply_ops

    g = build_spec(
        [{"name": "a", "type": "dense", "out_features": 4}, {"name": "b", "type": "dense", "out_features": 2}],
        input_shape=[3],
    )
    g = apply_ops(g, [{"op": "n_out_replace", "layer": "a", "n_out": 5, "weight_init": "zeros",
                       "weight_init_next": "ones"}])
    apply_graph_overrides(g, {"seed": 7, "weight_init": "xavier_uniform"})
    assert torch.count_nonzero(g.module("a").weight) == 0
    assert torch.equal(g.module("b").weight, torch.ones(2, 5))


def test_settings_take_their_defaults_from_the_one_schema(monkeypatch):
    """finetune's defaults are FinetuneConfig's (tlexp.config), never declared a second time."""
    import dataclasses

    from tlexp.config import FinetuneConfig
    from tlexp.finetune._settings import defaults, parse

    s = parse({})
    schema = FinetuneConfig()
    assert (s.lr, s.momentum, s.eps, list(s.betas), s.schedule) == (
        schema.lr, schema.momentum, schema.eps, schema.betas, str(schema.schedule))
    assert set(defaults()) == {f.name for f in dataclasses.fields(FinetuneConfig)}
    fields = FinetuneConfig.__dataclass_fields__
    monkeypatch.setattr(fields["lr"], "default", 0.25)
    monkeypatch.setattr(fields["gradient_normalization_threshold"], "default", 3.0)
    s = parse({})
    assert s.lr == 0.25 and s.threshold == 3.0


@pytest.mark.parametrize(("cfg", "message"), [
    ({"loss": "mse"}, r"^finetune\.loss: 'mse' is not one of cross_entropy, nll, bce$"),
    ({"validate_output": "no"}, r"^finetune\.validate_output: 'no' is not a bool"),
    ({"save_optimizer_state": 1}, r"^finetune\.save_optimizer_state: 1 is not a bool"),
])
def test_loss_and_run_switches_are_checked_by_the_finetune_schema(cfg, message):
    with pytest.raises(ConfigError, match=message):
        validate_finetune(cfg)


def test_module_and_train_read_loss_and_switches_off_the_schema():
    """tlexp.module and tlexp.train re-declare no finetune default and keep no loss table of their own."""
    import ast
    import dataclasses
    import inspect as pyinspect

    import tlexp.module
    import tlexp.train
    from tlexp.config import FinetuneConfig, Loss
    from tlexp.finetune import finetune_setting

    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    for key in ("loss", "validate_output", "save_optimizer_state", "class_weights"):
        assert finetune_setting({}, key) == defaults[key]
        assert finetune_setting({key: "given"}, key) == "given"
    assert tlexp.module.LOSSES == tuple(m.value for m in Loss)
    for module in (tlexp.module, tlexp.train):
        for node in ast.walk(ast.parse(pyinspect.getsource(module))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                key = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
                assert key not in defaults or "finetune" not in ast.unparse(node.func.value), \
                    f"{module.__name__}: {ast.unparse(node)} re-declares a finetune default"
