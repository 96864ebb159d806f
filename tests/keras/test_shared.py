"""Shared layers stay one module: a Keras layer applied at several places is one module used at
several graph nodes, so an optimizer step updates it once and a saved model keeps the tie."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.keras._live import check, inputs, keras, randomize, run
from tlexp.errors import ConfigError
from tlexp.graph import GraphInput, LayerGraph, Node, build_layer
from tlexp.sources.keras import load_keras
from tlexp.sources.saved import load_model, save_model
from tlexp.surgery import apply_ops


def _graph() -> LayerGraph:
    """x -> a -> (dense) -> b -> (same dense) -> out; plus a head."""
    torch.manual_seed(0)
    dense = build_layer("dense", {"in_features": 4, "out_features": 4})
    nodes = [
        Node("d1", dense, ["x"]),
        Node("act", build_layer("activation", {"name": "tanh"}), ["d1"]),
        Node("d2", dense, ["act"]),
        Node("head", build_layer("dense", {"in_features": 4, "out_features": 2}), ["d2"]),
    ]
    return LayerGraph([GraphInput("x", (4,))], nodes, ["head"])


def test_one_module_registered_once_and_saved_once(tmp_path) -> None:
    g = _graph()
    assert g.module("d1") is g.module("d2") and g.shares("d2") == "d1" and g.shares("d1") is None
    assert len(list(g.parameters())) == 4  # the shared dense's weight and bias once, the head's
    assert not any(k.startswith("layers.d2.") for k in g.state_dict())
    cfg = g.to_config()
    assert cfg["nodes"][2] == {"name": "d2", "shares": "d1", "inputs": ["act"]}
    again = LayerGraph.from_config(cfg)
    assert again.module("d1") is again.module("d2")
    rows = g.summary()
    assert [r.params for r in rows] == [20, 0, 0, 10]  # counted at the first use
    save_model(g, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.module("d1") is loaded.module("d2") and loaded.shares("d2") == "d1"
    x = torch.randn(3, 4)
    g.eval()
    assert torch.equal(loaded(x), g(x))


def test_freezing_one_use_freezes_the_module_and_split_keeps_it_frozen() -> None:
    g = _graph()
    g.set_frozen({"d1"})
    assert not any(p.requires_grad for p in g.module("d2").parameters())
    assert g.module("head").weight.requires_grad
    assert [r.frozen for r in g.summary()] == [True, False, True, False]
    prefix, suffix = g.split({"d1"})
    assert "d2" in suffix.frozen and not any(p.requires_grad for p in suffix.parameters() if p.dim() and p.shape[0] == 4)
    x = torch.randn(3, 4)
    g.eval()
    assert torch.allclose(suffix(prefix(x)), g(x))
    g.set_frozen(set())
    assert all(p.requires_grad for p in g.parameters())


def test_removing_one_use_keeps_the_other() -> None:
    g = _graph()
    out = apply_ops(g, [{"op": "remove_vertex_keep_connections", "name": "d1"}])
    assert out.node_names == ["act", "d2", "head"]
    assert out.module("d2") is g.module("d1") and out.shares("d2") is None
    assert any(k.startswith("layers.d2.") for k in out.state_dict())


@pytest.mark.parametrize(("op", "node", "others"), [
    ({"op": "replace_layer", "name": "d2", "type": "dense", "args": {"in_features": 4, "out_features": 4}}, "d2", "d1"),
    ({"op": "replace_layer", "name": "d1", "type": "dense", "args": {"in_features": 4, "out_features": 4}}, "d1", "d2"),
    ({"op": "n_in_replace", "layer": "d1", "n_in": 3}, "d1", "d2"),
    # d1 resized: d2 (the same layer) would take the new size at its one use only
    ({"op": "n_out_replace", "layer": "d1", "n_out": 6}, "d1", "d2"),
])
def test_changing_one_use_of_a_shared_layer_is_refused(op: dict, node: str, others: str) -> None:
    g = _graph()
    with pytest.raises(ConfigError, match=rf"layer '{node}' shares its layer with .*'{others}'.*remove the other uses"):
        apply_ops(g, [op])
    # with the other use removed, the layer is no longer shared and can be changed
    out = apply_ops(g, [{"op": "remove_vertex_keep_connections", "name": others}, op])
    assert out.module(node) is not g.module(node) and out.shares(node) is None


def test_a_shared_module_that_is_not_an_earlier_node_is_refused() -> None:
    cfg = _graph().to_config()
    cfg["nodes"][2]["shares"] = "head"
    with pytest.raises(ConfigError, match="shares 'head', which is not an earlier node"):
        LayerGraph.from_config(cfg)


def _step(graph: LayerGraph, x: list[torch.Tensor]) -> None:
    graph.train()
    opt = torch.optim.SGD(graph.parameters(), lr=0.1)
    out = graph(*x)
    loss = sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    opt.step()


def test_keras_shared_dense_and_conv_stay_tied(tmp_path) -> None:
    K = keras()
    L = K.layers
    a = K.Input((6, 6, 2), name="a")
    b = K.Input((6, 6, 2), name="b")
    conv = L.Conv2D(3, 3, padding="same", name="conv")
    ca, cb = conv(a), conv(b)
    dense = L.Dense(3, name="dense")
    fa = dense(L.GlobalAveragePooling2D(name="gap_a")(ca))
    fb = dense(L.GlobalAveragePooling2D(name="gap_b")(cb))
    y = L.Dense(2, name="out")(L.Concatenate(name="cat")([fa, fb]))
    model = K.Model([a, b], [y, fa])
    randomize(model, 3)
    xs = inputs((6, 6, 2), (6, 6, 2))
    check(model, xs, tmp_path, "shared")  # parity in every format and layout

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = load_keras(tmp_path / "shared.keras")
    assert g.module("conv") is g.module("conv:1") and g.module("dense") is g.module("dense:1")
    n_keras = sum(int(np.prod(w.shape)) for w in model.weights)
    assert sum(p.numel() for p in g.parameters()) == n_keras
    x = [torch.from_numpy(v).permute(0, 3, 1, 2).contiguous() for v in xs]
    before = g.module("dense").weight.detach().clone()
    _step(g, x)
    w1, w2 = g.module("dense").weight, g.module("dense:1").weight
    assert w1 is w2 and not torch.equal(w1, before)  # one Parameter, updated once
    assert torch.equal(g.module("conv").conv.weight, g.module("conv:1").conv.weight)

    save_model(g, tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    assert again.module("dense") is again.module("dense:1") and again.module("conv") is again.module("conv:1")
    g.eval()
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(g(*x), again(*x)))
    _step(again, x)
    assert again.module("dense").weight is again.module("dense:1").weight
    assert max(float(np.abs(u - v).max()) for u, v in zip(run(again, xs, "channels_first"),
                                                         run(g, xs, "channels_first"))) > 0


def _digits_model(tmp_path):
    """A digits classifier (8x8x1 in, 10 classes) whose Dense 'mix' is applied twice."""
    K = keras()
    L = K.layers
    x = K.Input((8, 8, 1), name="img")
    h = L.Dense(12, activation="tanh", name="embed")(L.Flatten(name="flat")(x))
    mix = L.Dense(12, activation="tanh", name="mix")
    y = L.Dense(10, name="output")(mix(L.Dropout(0.1, name="drop")(mix(h))))
    model = K.Model(x, y)
    randomize(model, 4)
    path = tmp_path / "shared_digits.keras"
    model.save(path)
    return path


def test_runs_train_save_and_reload_a_shared_layer(compose_cfg, tmp_path) -> None:
    """Through the run: trained with the shared layer tied, saved once, reloaded tied; and with
    the cut between its two uses (freeze.up_to=mix), the module stays frozen at both."""
    import json

    from safetensors import safe_open

    from tlexp.train import run as train_run

    path = _digits_model(tmp_path)
    keras_mix = load_keras(path).module("mix").weight.detach().clone()
    cfg = compose_cfg("source=keras", f"source.path={path}", "experiment=none", "data=digits",
                      "trainer.max_epochs=1", "freeze.up_to=null")
    train_run(cfg)
    model_dir = tmp_path / "run" / "model"
    nodes = json.loads((model_dir / "config.json").read_text())["architecture"]["nodes"]
    assert {"name": "mix:1", "shares": "mix", "inputs": ["drop"]} in nodes
    with safe_open(str(model_dir / "weights.safetensors"), framework="pt") as f:
        assert not any(k.startswith("layers.mix:1.") for k in f.keys())
    saved = load_model(model_dir)
    assert saved.module("mix") is saved.module("mix:1")
    assert not torch.equal(saved.module("mix").weight, keras_mix)  # trained, once, at both uses

    cfg = compose_cfg("source=keras", f"source.path={path}", "experiment=none", "data=digits",
                      "trainer.max_epochs=1", "freeze.up_to=mix", "freeze.mode=featurize", out="cut")
    metrics = train_run(cfg)
    assert "mix" in metrics["freeze"]["frozen"] and "mix:1" not in metrics["freeze"]["frozen"]
    cut = load_model(tmp_path / "cut" / "model")
    assert cut.module("mix") is cut.module("mix:1")
    assert torch.equal(cut.module("mix").weight, keras_mix)  # frozen at its first use: unchanged at both
    assert not torch.equal(cut.module("output").weight, load_keras(path).module("output").weight)


def _saved_shared(tmp_path) -> Path:
    save_model(_graph(), tmp_path / "shared")
    return tmp_path / "shared"


def test_inspect_marks_a_shared_layers_later_use(compose_cfg, tmp_path, capsys) -> None:
    """tlexp-inspect's table says d2 shares d1's weights (not a bare 0 parameters), with d1's
    state; its JSON names the shared node."""
    import json

    from rich.console import Console

    from tlexp.inspect import inspect_config

    model = _saved_shared(tmp_path)
    rows = {r.name: r for r in load_model(model).summary()}
    assert rows["d2"].shares == "d1" and rows["d1"].shares is None and rows["head"].shares is None
    console = Console(record=True, width=200)
    base = ("experiment=none", "source=saved", f"source.path={model}")
    inspect_config(compose_cfg(*base, "freeze.up_to=d1"), console=console)
    text = console.export_text()
    lines = {line.split()[1]: line for line in text.splitlines() if line.split()[:1] in (["1"], ["2"])}
    assert set(lines) == {"act", "d2"}
    assert "shares d1" in lines["d2"] and "frozen" in lines["d2"], lines
    assert "shares" not in lines["act"]
    assert "30 parameters" in text  # the shared dense (20) counted once, the head (10)
    capsys.readouterr()
    inspect_config(compose_cfg(*base, "inspect.format=json"))
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert {"name": "d2", "shares": "d1", "inputs": ["act"]} in nodes


@pytest.mark.slow
def test_inspect_from_the_command_line_marks_a_shared_layer(tmp_path) -> None:
    from tests.conftest import run_cli

    model = _saved_shared(tmp_path)
    res = run_cli(["experiment=none", "source=saved", f"source.path={model}"], cwd=tmp_path, script="tlexp-inspect",
                  env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stderr[-2000:]
    d2 = next(line for line in res.stdout.splitlines() if " d2 " in line)
    assert "shares d1" in d2 and "trainable" in d2
