"""The layer contract: every registered type declares its role and sizes; surgery and fine-tuning
read the declarations (no name tables), so a resize goes through every type that passes sizes
through or follows them, whichever source brought it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlexp.errors import ConfigError
from tlexp.graph import GraphInput, LayerGraph, Node, Role, build_layer, get_layer_type, list_layers, register_layer
from tlexp.surgery import apply_ops

TYPES = list_layers()


@pytest.mark.parametrize("lt", TYPES, ids=lambda lt: lt.name)
def test_every_registered_type_declares_its_role_and_sizes(lt):
    assert isinstance(lt.role, Role), f"{lt.name} declares no role"
    for arg in (lt.n_in, lt.n_out, lt.follow):
        assert arg is None or arg in lt.params
    if lt.role is Role.WEIGHTS:
        assert lt.n_in or lt.n_out
    if lt.role is Role.FOLLOW:
        assert lt.follow
    assert lt.size_axis in (0, -1)


def test_list_layers_returns_layer_types_once_each_with_sources_layers():
    names = [lt.name for lt in TYPES]
    assert names == sorted(set(names))
    providers = {lt.provider for lt in TYPES}
    assert {"tlexp.graph._layers", "tlexp.sources.keras._layers", "tlexp.sources.zoo._layers"} <= providers
    assert not any(lt.provider.startswith("tlexp.graph") for lt in TYPES if lt.name.startswith(("keras_", "timm_")))


def test_registering_without_a_role_or_twice_is_refused():
    def builder(x: int = 1) -> nn.Module:
        return nn.Identity()

    with pytest.raises(TypeError):
        register_layer("contract_test_no_role")(builder)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="role must be"):
        register_layer("contract_test_bad_role", role="pass")(builder)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="does not take"):
        register_layer("contract_test_bad_arg", role=Role.WEIGHTS, n_out="units")(builder)
    with pytest.raises(RuntimeError, match="registered twice"):
        register_layer("dense", role=Role.PASS)(builder)


def test_leaky_relu_slopes_are_each_sources_own():
    x = torch.tensor([-1.0])
    assert build_layer("activation", {"name": "leaky_relu"})(x).item() == pytest.approx(-0.01)
    assert build_layer("keras_activation", {"name": "leaky_relu"})(x).item() == pytest.approx(-0.2)
    assert build_layer("activation", {"name": "leaky_relu", "alpha": 0.3})(x).item() == pytest.approx(-0.3)


# ---- n_out_replace through every type that passes or follows sizes ---------------------------


def _producer(shape: tuple[int, ...], channels: int) -> tuple[str, dict]:
    """A layer with weights giving ``channels`` on the size axis of ``shape`` (same other axes)."""
    if len(shape) == 1:
        return "dense", {"out_features": channels}
    return {2: "conv1d", 3: "conv2d", 4: "conv3d"}[len(shape)], {"out_channels": channels, "kernel_size": 1}


def _through(lt) -> LayerGraph:
    """inputs -> producer(s) -> the type -> flatten -> dense: the producer of input 0 is 'src'."""
    shapes = [tuple(s) for s in lt.example_inputs]
    inputs, nodes = [], []
    for i, shape in enumerate(shapes):
        inputs.append(GraphInput(f"x{i}", (2, *shape[1:]) if len(shape) > 1 else (2,)))
        t, args = _producer(shape, shape[0])
        nodes.append({"name": "src" if i == 0 else f"src{i}", "type": t, "args": args, "inputs": [f"x{i}"]})
    nodes.append({"name": "layer", "type": lt.name, "args": dict(lt.example),
                  "inputs": [n["name"] for n in nodes]})
    nodes.append({"name": "flat", "type": "flatten", "inputs": ["layer"]})
    nodes.append({"name": "head", "type": "dense", "args": {"out_features": 3}, "inputs": ["flat"]})
    cfg = {"inputs": [{"name": g.name, "shape": list(g.shape)} for g in inputs], "nodes": nodes, "outputs": ["head"]}
    return LayerGraph.from_config(cfg)


SIZED = [lt for lt in TYPES if lt.role in (Role.PASS, Role.FOLLOW, Role.CONCAT) and lt.name != "flatten"]


@pytest.mark.parametrize("lt", SIZED, ids=lambda lt: lt.name)
def test_n_out_replace_goes_through_every_pass_follow_and_concat_type(lt):
    torch.manual_seed(0)
    graph = _through(lt).eval()
    before = graph.trace_shapes()["src"][0][0 if len(graph.trace_shapes()["src"][0]) > 1 else -1]
    out = apply_ops(graph, [{"op": "n_out_replace", "layer": "src", "n_out": before + 3}]).eval()
    assert out.module("head") is not graph.module("head")  # the next layer with weights was resized
    assert out.module("head").in_features != graph.module("head").in_features
    if lt.role is Role.FOLLOW:
        assert out.module("layer") is not graph.module("layer")
    with torch.no_grad():
        y = out(*out.example_inputs(2))
    assert y.shape == (2, 3) and torch.isfinite(y).all()


@pytest.mark.parametrize("lt", [lt for lt in TYPES if lt.role is Role.ELEMENTWISE], ids=lambda lt: lt.name)
def test_n_out_replace_into_an_elementwise_merge_with_an_unchanged_input_is_refused(lt):
    graph = _through(lt)
    with pytest.raises(ConfigError, match="element-wise"):
        apply_ops(graph, [{"op": "n_out_replace", "layer": "src", "n_out": 7}])


def test_n_out_replace_into_a_fixed_type_is_refused_naming_it():
    assert all(get_layer_type(n).role is Role.FIXED for n in ("reshape", "time_distributed", "timm_module"))
    graph = LayerGraph(["x"], [Node("src", build_layer("dense", {"in_features": 4, "out_features": 4}), ["x"]),
                               Node("r", build_layer("reshape", {"shape": [2, 2]}), ["src"])], ["r"])
    with pytest.raises(ConfigError, match=r"'r' \(reshape\) takes the output of 'src'"):
        apply_ops(graph, [{"op": "n_out_replace", "layer": "src", "n_out": 6}])


def test_n_out_replace_on_an_imported_keras_rnn_resizes_the_next_dense():
    graph = LayerGraph.from_config({
        "inputs": [{"name": "x", "shape": [5, 4]}],
        "nodes": [{"name": "rnn", "type": "keras_rnn", "args": {"cell": "gru", "units": 3, "bidirectional": True}},
                  {"name": "fc", "type": "dense", "args": {"out_features": 2}}],
        "outputs": ["fc"],
    })
    out = apply_ops(graph, [{"op": "n_out_replace", "layer": "rnn", "n_out": 5}])
    assert out.module("fc").in_features == 10


# ---- declared state: a node's spec and marks are data of the Node; meta is given when the graph is made


def test_spec_and_reinit_marks_are_node_data_never_module_attributes():
    from tlexp.finetune import apply_graph_overrides
    from tlexp.graph import LayerSpec

    cfg = {"inputs": [{"name": "x", "shape": [4]}], "outputs": ["out"], "nodes": [
        {"name": "fc1", "type": "dense", "args": {"out_features": 6}},
        {"name": "act", "type": "activation", "args": {"name": "relu"}},
        {"name": "out", "type": "dense", "args": {"out_features": 2}}]}
    graph = LayerGraph.from_config(cfg, meta={"source": "test"})
    assert graph.meta == {"source": "test"} and graph.node("fc1").spec == LayerSpec("dense", graph.node("fc1").args)
    out = apply_ops(graph, [{"op": "n_out_replace", "layer": "fc1", "n_out": 9, "weight_init": "zeros"}])
    assert out.meta == {"source": "test"}  # surgery keeps meta (LayerGraph.rebuilt)
    assert [n.name for n in out if n.reinit] == ["fc1", "out"] and not graph.node("fc1").reinit
    assert out.node("fc1").args["out_features"] == 9 and graph.node("fc1").args["out_features"] == 6
    assert out.node("fc1").weight_init == "zeros" and out.node("out").weight_init == "zeros"
    apply_graph_overrides(out, {"activation": "tanh"})
    assert out.node("act").args["name"] == "tanh" and out.to_config()["nodes"][1]["args"]["name"] == "tanh"
    for g in (graph, out):
        for m in g.modules():
            assert not [k for k in vars(m) if k.startswith("tlexp_")], type(m).__name__
    # a module from outside the registry runs and says it cannot be saved; given a spec, it saves that
    plain = LayerGraph(["x"], [Node("lin", nn.Linear(4, 2), ["x"])], ["lin"])
    with pytest.raises(ConfigError, match="not a registry layer"):
        plain.to_config()
    spec = LayerSpec("dense", {"in_features": 4, "out_features": 2})
    named = LayerGraph(["x"], [Node("lin", nn.Linear(4, 2), ["x"], spec=spec)], ["lin"], meta={"a": 1})
    assert named.to_config()["nodes"][0]["args"]["out_features"] == 2
    assert named.rebuilt().meta == {"a": 1} and named.rebuilt(meta={"b": 2}).meta == {"b": 2}


def test_no_code_sets_graph_meta_or_module_marks_after_the_fact():
    """Static: sources give ``meta=`` when a graph is made; nothing stores tlexp state on modules."""
    import ast
    from pathlib import Path

    import tlexp

    bad = []
    for path in sorted(Path(tlexp.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                while isinstance(t, ast.Subscript):  # graph.meta["x"] = …
                    t = t.value
                if not isinstance(t, ast.Attribute):
                    continue
                on_self = isinstance(t.value, ast.Name) and t.value.id == "self"
                if (t.attr == "meta" and not on_self) or t.attr.startswith("tlexp_"):
                    bad.append(f"{path.name}:{node.lineno}: {ast.unparse(t)}")
    assert bad == []
