"""Surgery ops on chains and graphs: structure, numerics, and the errors users see."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests._models import conv_chain, skip_graph
from tlexp.errors import ConfigError, ShapeError
from tlexp.freeze import freeze
from tlexp.graph import LayerGraph
from tlexp.sources.spec import build_spec
from tlexp.surgery import WEIGHT_INITS, _registry, apply_ops, list_ops, register_op

# ---- models ---------------------------------------------------------------------------------


def dense_chain(input_shape: list[int] | None = (16,)) -> LayerGraph:
    torch.manual_seed(1)
    return build_spec(
        [
            {"name": "fc1", "type": "dense", "in_features": 16, "out_features": 8, "activation": "relu"},
            {"name": "fc2", "type": "dense", "in_features": 8, "out_features": 4},
        ],
        input_shape=None if input_shape is None else list(input_shape),
    )


def branch_graph() -> LayerGraph:
    """x -> a -> (b1 -> b2) and (c1), averaged, then a dense output."""
    torch.manual_seed(3)
    return build_spec(
        [
            {"name": "a", "type": "dense", "out_features": 4},
            {"name": "b1", "type": "dense", "out_features": 3, "inputs": ["a"]},
            {"name": "b2", "type": "activation", "args": {"name": "relu"}, "inputs": ["b1"]},
            {"name": "c1", "type": "dense", "out_features": 3, "inputs": ["a"]},
            {"name": "m", "type": "average", "inputs": ["b2", "c1"]},
            {"name": "out", "type": "dense", "out_features": 2, "inputs": ["m"]},
        ],
        input_shape=[5],
    )


def run(graph: LayerGraph, *xs: torch.Tensor):
    graph.eval()
    with torch.no_grad():
        return graph(*xs)


def snapshot(graph: LayerGraph):
    """Everything an op could change in the caller's graph."""
    return (
        [(n.name, list(n.inputs), id(n.module)) for n in graph.nodes],
        list(graph.outputs),
        list(graph.graph_inputs),
        set(graph.frozen),
        {k: v.clone() for k, v in graph.state_dict().items()},
        [p.requires_grad for p in graph.parameters()],
        graph.training,
    )


def assert_same(a, b):
    assert a[:4] == b[:4]
    assert a[4].keys() == b[4].keys() and all(torch.equal(a[4][k], b[4][k]) for k in a[4])
    assert a[5:] == b[5:]


X_IMG = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
X16 = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
AB = (torch.rand(2, 4, generator=torch.Generator().manual_seed(2)), torch.rand(2, 3, generator=torch.Generator().manual_seed(3)))


# ---- the registry and the op list ----------------------------------------------------------------


def test_builtin_ops_are_registered():
    assert set(list_ops()) >= {
        "remove_output_layer", "remove_layers_from_output", "add_layer", "replace_layer", "n_out_replace",
        "n_in_replace", "set_input_preprocessor", "add_vertex", "remove_vertex_keep_connections",
        "remove_vertex_and_connections", "set_outputs",
    }
    assert list_ops() == sorted(list_ops())


def test_unknown_op_lists_valid_ops():
    with pytest.raises(ConfigError, match=r"^surgery\.ops\[1\]\.op: unknown op 'remove_output'; valid: add_inputs, add_layer, add_vertex"):
        apply_ops(conv_chain(), [{"op": "remove_output_layer"}, {"op": "remove_output"}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.op: missing; valid ops: add_inputs, add_layer"):
        apply_ops(conv_chain(), [{"layer": "fc1"}])
    with pytest.raises(ConfigError, match=r"surgery\.ops: expected a list of ops"):
        apply_ops(conv_chain(), {"op": "remove_output_layer"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]: expected a mapping"):
        apply_ops(conv_chain(), [3])


def test_every_op_is_checked_before_the_first_runs():
    # op 0 would fail when run (nothing to remove from a one-layer chain); op 1's typo is found first
    one = build_spec([{"name": "fc", "type": "dense", "out_features": 2}], input_shape=[3])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[1\]\.nn: unknown argument of op 'n_out_replace'; valid: layer, n_out, weight_init"):
        apply_ops(one, [{"op": "remove_output_layer"}, {"op": "n_out_replace", "layer": "fc", "nn": 3}])


def test_unknown_argument_missing_argument_and_wrong_type():
    g = conv_chain()
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.n_out: missing; op 'n_out_replace' needs layer, n_out"):
        apply_ops(g, [{"op": "n_out_replace", "layer": "fc1"}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.n: 'two' is not a int"):
        apply_ops(g, [{"op": "remove_layers_from_output", "n": "two"}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.extra: unknown argument of op 'remove_output_layer'; valid: \(none\)"):
        apply_ops(g, [{"op": "remove_output_layer", "extra": 1}])


def test_field_prefix_is_configurable_and_dictconfig_is_accepted():
    ops = OmegaConf.create([{"op": "n_out_replace", "layer": "fc9", "n_out": 2}])
    with pytest.raises(ConfigError, match=r"^experiment\.ops\[0\]\.layer: no layer named 'fc9'; valid: c, bn, r"):
        apply_ops(conv_chain(), ops, field="experiment.ops")
    out = apply_ops(conv_chain(), OmegaConf.create([{"op": "n_out_replace", "layer": "fc2", "n_out": 5}]))
    assert run(out, X_IMG).shape == (2, 5)


def test_no_ops_returns_the_graph():
    g = conv_chain()
    assert apply_ops(g, []) is g
    assert apply_ops(g, None) is g


def test_register_op_adds_a_custom_op(monkeypatch):
    monkeypatch.setattr(_registry, "_OPS", dict(_registry._OPS))

    @register_op("double_output")
    def double_output(graph, ctx, *, factor: int = 2):
        return apply_ops(graph, [{"op": "add_layer", "name": "times", "type": "normalize", "mean": [0.0],
                                  "std": [1.0 / factor]}], field=ctx.field)

    assert "double_output" in list_ops()
    g = dense_chain()
    out = apply_ops(g, [{"op": "double_output", "factor": 3}])
    assert torch.allclose(run(out, X16), run(g, X16) * 3)
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.factor: 'x' is not a int"):
        apply_ops(g, [{"op": "double_output", "factor": "x"}])
    with pytest.raises(RuntimeError, match="registered twice"):
        register_op("double_output")(double_output)


# ---- remove_output_layer / remove_layers_from_output ------------------------------------------------


def test_remove_output_layer_on_a_chain_keeps_the_rest_exactly():
    g = conv_chain()
    before = snapshot(g)
    out = apply_ops(g, [{"op": "remove_output_layer"}])
    assert_same(snapshot(g), before)  # the caller's graph is untouched
    assert out.node_names == g.node_names[:-1] and out.outputs == ["drop"] and out.is_chain
    prefix, _ = g.split(set(g.node_names[:-1]))
    assert torch.equal(run(out, X_IMG), run(prefix, X_IMG))
    assert all(out.module(n) is g.module(n) for n in out.node_names)


def test_remove_output_layer_on_a_graph_removes_every_output_node():
    g = skip_graph(seed=2)
    out = apply_ops(g, ["remove_output_layer"])  # a bare op name works too
    assert out.outputs == ["r", "hb"]
    assert "o1" not in out and "o2" not in out
    r, hb = run(out, *AB)
    assert r.shape == (2, 11) and hb.shape == (2, 8)


def test_remove_output_layer_errors():
    one = build_spec([{"name": "fc", "type": "dense", "out_features": 2}], input_shape=[3])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]: removing output layer\(s\) fc would leave only graph inputs \(input\)"):
        apply_ops(one, [{"op": "remove_output_layer"}])
    feeding = build_spec(
        [
            {"name": "h0", "type": "dense", "out_features": 2},
            {"name": "h", "type": "dense", "out_features": 2},
            {"name": "o", "type": "dense", "out_features": 2, "inputs": ["h"]},
        ],
        input_shape=[3],
        outputs=["h", "o"],
    )
    out = apply_ops(feeding, [{"op": "remove_output_layer"}])  # both outputs go, o fed by h is removed too
    assert out.node_names == ["h0"] and out.outputs == ["h0"]
    with pytest.raises(ConfigError, match=r"surgery\.ops\[1\]: removing output layer\(s\) h0 would leave only graph inputs"):
        apply_ops(feeding, [{"op": "remove_output_layer"}, {"op": "remove_output_layer"}])


def test_remove_output_layer_refuses_an_output_that_feeds_another_node():
    g = skip_graph(seed=2)
    g2 = apply_ops(g, [{"op": "set_outputs", "outputs": ["h", "o2"]}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]: output layer 'h' also feeds hb; use remove_vertex_and_connections or set_outputs"):
        apply_ops(g2, [{"op": "remove_output_layer"}])


def test_remove_layers_from_output():
    g = conv_chain()
    out = apply_ops(g, [{"op": "remove_layers_from_output", "n": 3}])
    assert out.node_names == ["c", "bn", "r", "p", "f"] and out.outputs == ["f"]
    assert run(out, X_IMG).shape == (2, 64)
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.n: 8 is past the end: the model has 8 layers .* valid: 1\.\.7"):
        apply_ops(g, [{"op": "remove_layers_from_output", "n": 8}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.n: 0 layers cannot be removed; valid: 1\.\.7"):
        apply_ops(g, [{"op": "remove_layers_from_output", "n": 0}])
    # on a graph: output nodes, then their inputs, ...
    sg = apply_ops(skip_graph(seed=2), [{"op": "remove_layers_from_output", "n": 2}])
    assert sg.outputs == ["hn", "fa", "h"]
    # a third step would remove fa, which s still needs
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.n: output layer 'fa' also feeds s"):
        apply_ops(skip_graph(seed=2), [{"op": "remove_layers_from_output", "n": 3}])


# ---- add_layer -------------------------------------------------------------------------------------


def test_remove_then_add_keeps_earlier_weights_and_marks_the_new_layer():
    g = conv_chain()
    freeze(g, "p")
    before = snapshot(g)
    out = apply_ops(g, [
        {"op": "remove_output_layer"},
        {"op": "add_layer", "name": "out", "type": "dense", "out_features": 5, "activation": "softmax"},
    ])
    assert_same(snapshot(g), before)
    assert out.node_names == [*g.node_names[:-1], "out"] and out.outputs == ["out"] and out.is_chain
    for n in g.node_names[:-1]:
        assert out.module(n) is g.module(n)
        assert not out.node(n).reinit
    new = out.module("out")
    assert out.node("out").reinit is True and new.in_features == 8 and new.out_features == 5
    assert not hasattr(new, "tlexp_reinit") and not hasattr(new, "tlexp_type")  # marks are the node's
    assert out.frozen == {"c", "bn", "r", "p"}
    y = run(out, X_IMG)
    assert y.shape == (2, 5) and torch.allclose(y.sum(1), torch.ones(2))
    prefix, _ = g.split(set(g.node_names[:-1]))
    assert torch.equal(y, new(run(prefix, X_IMG)))


def test_add_layer_after_a_node_rewires_its_consumers():
    g = conv_chain()
    out = apply_ops(g, [{"op": "add_layer", "name": "bn1", "type": "batchnorm1d", "after": "fc1"}])
    assert out.node_names == ["c", "bn", "r", "p", "f", "fc1", "bn1", "drop", "fc2"]
    assert out.node("drop").inputs == ["bn1"] and out.is_chain
    assert out.module("bn1").num_features == 8
    assert g.node("drop").inputs == ["fc1"]  # the caller's graph still wired as before
    # after an index, with args under `args`
    out = apply_ops(g, [{"op": "add_layer", "name": "c2", "type": "conv2d", "after": 0,
                         "args": {"out_channels": 4, "kernel_size": 1}}])
    assert out.node_names[:3] == ["c", "c2", "bn"] and out.module("c2").conv.in_channels == 4
    assert run(out, X_IMG).shape == (2, 3)


def test_add_layer_after_a_graph_input_and_on_a_graph():
    g = skip_graph(seed=2)
    out = apply_ops(g, [{"op": "add_layer", "name": "nb", "type": "layernorm", "after": "b"}])
    assert out.node_names[0] == "nb" and out.node("fb").inputs == ["nb"] and out.node("hb").inputs == ["h", "nb"]
    assert out.module("nb").normalized_shape == (3,)
    # after an output node: it is replaced in the outputs list
    out = apply_ops(g, [{"op": "add_layer", "name": "p1", "type": "activation", "args": {"name": "softmax"}, "after": "o1"}])
    assert out.outputs == ["p1", "o2"]
    y1, y2 = run(out, *AB)
    assert torch.allclose(y1, torch.softmax(run(g, *AB)[0], -1)) and torch.equal(y2, run(g, *AB)[1])


def test_add_layer_errors():
    g = conv_chain()
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.name: 'fc1' is already a layer"):
        apply_ops(g, [{"op": "add_layer", "name": "fc1", "type": "dense", "out_features": 2}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.after: no layer or input named 'fc7'; valid: input, c, bn"):
        apply_ops(g, [{"op": "add_layer", "name": "x", "type": "identity", "after": "fc7"}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.after: index 20 is out of range; valid: 0\.\.7"):
        apply_ops(g, [{"op": "add_layer", "name": "x", "type": "identity", "after": 20}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.type: unknown layer type 'dens'; valid: .*dense"):
        apply_ops(g, [{"op": "add_layer", "name": "x", "type": "dens", "out_features": 2}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.units: unknown argument for layer type 'dense'; valid: in_features, out_features"):
        apply_ops(g, [{"op": "add_layer", "name": "x", "type": "dense", "units": 2}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.args\.units: unknown argument for layer type 'dense'"):
        apply_ops(g, [{"op": "add_layer", "name": "x", "type": "dense", "args": {"units": 2}}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.out_features: 'auto' is not an int"):
        apply_ops(g, [{"op": "add_layer", "name": "x", "type": "dense", "out_features": "auto"}])
    # DL4J's addLayer(name, layer, inputs...): a layer on named inputs must still reach an output
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\] \(add_layer 'x'\): node 'x' does not lead to any output"):
        apply_ops(g, [{"op": "add_layer", "name": "x", "type": "dense", "out_features": 2, "inputs": ["fc1"]}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.inputs: give 'after' or 'inputs', not both"):
        apply_ops(g, [{"op": "add_layer", "name": "x", "type": "dense", "out_features": 2, "inputs": ["fc1"],
                       "after": "fc1"}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.after: the model has 2 outputs \(o1, o2\)"):
        apply_ops(skip_graph(seed=2), [{"op": "add_layer", "name": "x", "type": "identity"}])


def test_add_layer_with_an_impossible_shape_names_op_layer_and_shapes():
    g = conv_chain()
    before = snapshot(g)
    with pytest.raises(ShapeError) as e:
        apply_ops(g, [
            {"op": "remove_layers_from_output", "n": 2},
            {"op": "add_layer", "name": "out", "type": "dense", "in_features": 4, "out_features": 2},
        ])
    msg = str(e.value)
    assert msg.startswith("surgery.ops[1] (add_layer 'out'): layer 'out' (dense) does not accept its input (fc1 [8])")
    assert "2x8 and 4x2" in msg and "\n" not in msg
    assert_same(snapshot(g), before)


def test_add_layer_without_declared_shapes_needs_explicit_sizes():
    g = dense_chain(input_shape=None)
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]: layer type 'dense' needs argument 'in_features'"):
        apply_ops(g, [{"op": "add_layer", "name": "o", "type": "dense", "out_features": 2}])
    out = apply_ops(g, [{"op": "add_layer", "name": "o", "type": "dense", "in_features": 4, "out_features": 2}])
    assert run(out, X16).shape == (2, 2)


# ---- replace_layer ---------------------------------------------------------------------------------


def test_replace_layer_keeps_name_and_connections():
    g = conv_chain()
    out = apply_ops(g, [{"op": "replace_layer", "name": "r", "type": "activation", "args": {"name": "tanh"}}])
    assert out.node_names == g.node_names and out.node("r").inputs == ["bn"] and out.node("p").inputs == ["r"]
    assert out.module("r") is not g.module("r") and out.node("r").reinit
    assert all(out.module(n) is g.module(n) for n in g.node_names if n != "r")
    bn_out = run(g.split({"c", "bn"})[0], X_IMG)
    rest = out.split({"c", "bn", "r"})[1]
    assert torch.equal(run(out, X_IMG), run(rest, torch.tanh(bn_out)))
    # by index, with the input size inferred
    out = apply_ops(g, [{"op": "replace_layer", "name": -1, "type": "dense", "out_features": 6}])
    assert out.module("fc2").in_features == 8 and run(out, X_IMG).shape == (2, 6)


def test_replace_layer_errors():
    g = conv_chain()
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.name: no layer named 'fc3'; valid: c, bn, r, p, f, fc1, drop, fc2"):
        apply_ops(g, [{"op": "replace_layer", "name": "fc3", "type": "identity"}])
    with pytest.raises(ShapeError, match=r"^surgery\.ops\[0\] \(replace_layer 'fc1'\): layer 'fc2' \(dense\) does not accept its input \(drop \[6\]\)"):  # noqa: E501
        apply_ops(g, [{"op": "replace_layer", "name": "fc1", "type": "dense", "out_features": 6}])


# ---- n_out_replace -------------------------------------------------------------------------------


def test_n_out_replace_conv_resizes_batchnorm_and_the_dense_after_flatten():
    g = conv_chain()
    freeze(g, "fc1")
    before = snapshot(g)
    out = apply_ops(g, [{"op": "n_out_replace", "layer": "c", "n_out": 6}])
    assert_same(snapshot(g), before)
    assert out.module("c").conv.out_channels == 6
    assert out.module("bn").num_features == 6
    assert out.module("fc1").in_features == 6 * 4 * 4
    for n in ("c", "bn", "fc1"):
        assert out.node(n).reinit and out.module(n) is not g.module(n)
        assert n not in out.frozen and all(p.requires_grad for p in out.module(n).parameters())
    for n in ("r", "p", "f", "drop", "fc2"):
        assert out.module(n) is g.module(n)
    assert torch.equal(out.module("fc2").weight, g.module("fc2").weight)
    assert out.frozen == {"r", "p", "f"}  # untouched frozen nodes stay frozen
    assert run(out, X_IMG).shape == (2, 3)
    assert [r.output_shape for r in out.summary()][:5] == [((6, 8, 8),), ((6, 8, 8),), ((6, 8, 8),), ((6, 4, 4),), ((96,),)]


def test_n_out_replace_output_layer_and_through_dropout():
    g = conv_chain()
    out = apply_ops(g, [{"op": "n_out_replace", "layer": "fc2", "n_out": 10}])
    assert run(out, X_IMG).shape == (2, 10)
    prefix, _ = g.split(set(g.node_names[:-1]))
    assert torch.equal(run(out.split(set(g.node_names[:-1]))[0], X_IMG), run(prefix, X_IMG))
    out = apply_ops(g, [{"op": "n_out_replace", "layer": "fc1", "n_out": 12}])
    assert out.module("fc1").out_features == 12 and out.module("fc2").in_features == 12
    assert out.module("fc2").out_features == 3 and out.node("fc2").reinit
    assert out.module("c") is g.module("c")


def test_n_out_replace_weight_init():
    g = conv_chain()
    out = apply_ops(g, [{"op": "n_out_replace", "layer": "fc1", "n_out": 5, "weight_init": "zeros"}])
    assert not out.module("fc1").weight.any() and not out.module("fc2").weight.any()
    assert out.node("fc1").weight_init == "zeros" == out.node("fc2").weight_init
    out = apply_ops(g, [{"op": "n_out_replace", "layer": "fc1", "n_out": 5, "weight_init": "ones",
                         "weight_init_next": "zeros"}])
    assert bool((out.module("fc1").weight == 1).all()) and not out.module("fc2").weight.any()
    assert out.module("fc1").bias.abs().sum() > 0  # biases keep their construction values
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.weight_init: unknown weight init 'xavier'; valid: default, xavier_uniform"):
        apply_ops(g, [{"op": "n_out_replace", "layer": "fc1", "n_out": 5, "weight_init": "xavier"}])
    # one vocabulary with finetune.weight_init
    from tlexp.finetune import WEIGHT_INITS as FINETUNE_INITS
    assert set(WEIGHT_INITS) == set(FINETUNE_INITS)


def test_n_out_replace_on_a_graph_resizes_every_consumer():
    g = skip_graph(seed=2)
    out = apply_ops(g, [{"op": "n_out_replace", "layer": "h", "n_out": 7}])
    assert out.module("hn").num_features == 7  # batch norm: resized and followed
    assert out.module("o1").in_features == 7 + 6  # through concat(hn, fa)
    assert out.module("o2").in_features == 7 + 3  # through concat(h, b)
    for n in ("fa", "fb", "s", "r", "hb"):
        assert out.module(n) is g.module(n)
    y1, y2 = run(out, *AB)
    assert y1.shape == (2, 2) and y2.shape == (2, 3)


def test_n_out_replace_refuses_an_elementwise_merge_with_an_unchanged_input():
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.layer: layer 's' \(add\) combines the resized output of 'fa' element-wise with 'fb'"):
        apply_ops(skip_graph(seed=2), [{"op": "n_out_replace", "layer": "fa", "n_out": 3}])


@pytest.mark.parametrize(
    ("layer", "args", "shown"),
    [
        ("embedding", {"num_embeddings": 10, "embedding_dim": 2}, "embedding"),
        ("reshape", {"shape": [3, 1]}, "reshape"),
        ("normalize", {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}, "normalize"),
    ],
)
def test_n_out_replace_refuses_a_next_layer_it_cannot_resize(layer, args, shown):
    g = build_spec(
        [
            {"name": "fc", "type": "dense", "out_features": 3, "activation": "sigmoid"},
            {"name": "act", "type": "activation", "args": {"name": "relu"}},
            {"name": "nxt", "type": layer, "args": args},
        ],
        input_shape=[4],
    )
    with pytest.raises(ConfigError, match=rf"^surgery\.ops\[0\]\.layer: layer 'nxt' \({shown}\) takes the output of 'fc' \(through 'act'\) and cannot be resized to fit; resizable next layers: batchnorm1d, batchnorm2d, conv1d"):  # noqa: E501
        apply_ops(g, [{"op": "n_out_replace", "layer": "fc", "n_out": 5}])


def test_n_out_replace_errors():
    g = conv_chain()
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.layer: layer 'bn' \(batchnorm2d\) has no output size to replace; valid layer types: conv1d"):  # noqa: E501
        apply_ops(g, [{"op": "n_out_replace", "layer": "bn", "n_out": 3}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.layer: index 9 is out of range; valid: 0\.\.7"):
        apply_ops(g, [{"op": "n_out_replace", "layer": 9, "n_out": 3}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.n_out: 0 is not a size"):
        apply_ops(g, [{"op": "n_out_replace", "layer": "fc1", "n_out": 0}])
    grouped = build_spec([{"name": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 1, "groups": 2}],
                         input_shape=[2, 3, 3])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\] \(n_out_replace 'c'\): layer 'c': cannot build 'conv2d'"):
        apply_ops(grouped, [{"op": "n_out_replace", "layer": "c", "n_out": 3}])


def test_n_out_replace_without_declared_shapes_uses_the_known_size():
    g = dense_chain(input_shape=None)
    out = apply_ops(g, [{"op": "n_out_replace", "layer": "fc1", "n_out": 6}])
    assert out.module("fc2").in_features == 6 and run(out, X16).shape == (2, 4)
    flat = build_spec([
        {"name": "c", "type": "conv1d", "in_channels": 2, "out_channels": 3, "kernel_size": 1},
        {"name": "f", "type": "flatten"},
        {"name": "fc", "type": "dense", "in_features": 12, "out_features": 2},
    ])
    with pytest.raises(ConfigError, match=r"new input size of 'fc' \(dense\) cannot be worked out without shapes"):
        apply_ops(flat, [{"op": "n_out_replace", "layer": "c", "n_out": 4}])


def test_n_out_replace_recurrent_and_depthwise():
    rnn = build_spec([
        {"name": "lstm", "type": "lstm", "hidden_size": 3, "bidirectional": True},
        {"name": "fc", "type": "dense", "out_features": 2},
    ], input_shape=[5, 4])
    out = apply_ops(rnn, [{"op": "n_out_replace", "layer": "lstm", "n_out": 4}])
    assert out.module("fc").in_features == 8 and run(out, torch.rand(2, 5, 4)).shape == (2, 2)
    dw = build_spec([
        {"name": "dw", "type": "depthwise_conv2d", "kernel_size": 3},
        {"name": "bn", "type": "batchnorm2d"},
        {"name": "pw", "type": "conv2d", "out_channels": 2, "kernel_size": 1},
    ], input_shape=[3, 6, 6])
    out = apply_ops(dw, [{"op": "n_out_replace", "layer": "dw", "n_out": 6}])
    assert out.module("bn").num_features == 6 and out.module("pw").conv.in_channels == 6
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.n_out: 4 is not a multiple of the 3 input channels"):
        apply_ops(dw, [{"op": "n_out_replace", "layer": "dw", "n_out": 4}])
    # resizing the layer before a depthwise conv resizes it and goes on to the next one
    pre = build_spec([
        {"name": "c", "type": "conv2d", "out_channels": 3, "kernel_size": 1},
        {"name": "dw", "type": "depthwise_conv2d", "kernel_size": 3, "depth_multiplier": 2},
        {"name": "pw", "type": "conv2d", "out_channels": 2, "kernel_size": 1},
    ], input_shape=[1, 6, 6])
    out = apply_ops(pre, [{"op": "n_out_replace", "layer": "c", "n_out": 4}])
    assert out.module("dw").conv.in_channels == 4 and out.module("pw").conv.in_channels == 8


# ---- n_in_replace ---------------------------------------------------------------------------------


def test_n_in_replace_first_layer_changes_the_declared_input():
    g = dense_chain()
    out = apply_ops(g, [{"op": "n_in_replace", "layer": "fc1", "n_in": 12}])
    assert out.graph_inputs[0].shape == (12,) and g.graph_inputs[0].shape == (16,)
    assert out.module("fc1").in_features == 12 and out.node("fc1").reinit
    assert out.module("fc2") is g.module("fc2")
    assert run(out, torch.rand(2, 12)).shape == (2, 4)
    conv = apply_ops(conv_chain(), [{"op": "n_in_replace", "layer": "c", "n_in": 3}])
    assert conv.graph_inputs[0].shape == (3, 8, 8) and run(conv, torch.rand(2, 3, 8, 8)).shape == (2, 3)


def test_n_in_replace_errors_and_shapeless_graphs():
    g = dense_chain()
    with pytest.raises(ShapeError, match=r"^surgery\.ops\[0\] \(n_in_replace 'fc2'\): layer 'fc2' \(dense\) does not accept its input \(fc1 \[8\]\): .*2x8 and 5x4"):  # noqa: E501
        apply_ops(g, [{"op": "n_in_replace", "layer": "fc2", "n_in": 5}])
    with pytest.raises(ConfigError, match=r"^surgery\.ops\[0\]\.layer: layer 'r' \(activation\) has no input size to replace; valid layer types: conv1d, conv2d"):  # noqa: E501
        apply_ops(conv_chain(), [{"op": "n_in_replace", "layer": "r", "n_in": 5}])
    # no declared shapes: no dry run, the size is simply set (DL4J builds before it checks)
    free = dense_chain(input_shape=None)
    out = apply_ops(free, [{"op": "n_in_replace", "layer": "fc2", "n_in": 5},
                           {"op": "n_out_replace", "layer": "fc1", "n_out": 5}])
    assert out.module("fc2").in_features == 5 and run(out, X16).shape == (2, 4)


# ---- set_input_preprocessor ----------------------------------------------------------------------


def test_flatten_preprocessor_takes_raw_images():
    g = dense_chain()
    out = apply_ops(g, [{"op": "set_input_preprocessor", "type": "flatten", "input_shape": [4, 4]}])
    assert out.node_names == ["preprocess_input", "fc1", "fc2"] and out.node("fc1").inputs == ["preprocess_input"]
    assert out.graph_inputs[0].shape == (4, 4) and g.graph_inputs[0].shape == (16,)
    assert out.is_chain
    assert torch.equal(run(out, X16.reshape(2, 4, 4)), run(g, X16))


def test_normalize_permute_and_reshape_preprocessors():
    g = conv_chain()
    out = apply_ops(g, [{"op": "set_input_preprocessor", "type": "normalize", "mean": [0.5], "std": [0.25],
                         "spatial_dims": 2}])
    assert out.graph_inputs[0].shape == (1, 8, 8)
    assert torch.allclose(run(out, X_IMG), run(g, (X_IMG - 0.5) / 0.25))
    # permute: the raw (H, W, C) shape is derived from the model's (C, H, W)
    out = apply_ops(g, [{"op": "set_input_preprocessor", "type": "permute", "dims": [2, 0, 1], "name": "to_chw"}])
    assert out.graph_inputs[0].shape == (8, 8, 1) and out.node_names[0] == "to_chw"
    assert torch.equal(run(out, X_IMG.permute(0, 2, 3, 1)), run(g, X_IMG))
    # reshape: the layer's `shape` and the op's `input_shape` do not clash
    out = apply_ops(g, [{"op": "set_input_preprocessor", "type": "reshape", "shape": [1, 8, 8], "input_shape": [64]}])
    assert torch.equal(run(out, X_IMG.reshape(2, 64)), run(g, X_IMG))


def test_preprocessor_on_one_of_two_inputs():
    g = skip_graph(seed=2)
    out = apply_ops(g, [{"op": "set_input_preprocessor", "input": "b", "type": "flatten", "input_shape": [3, 1]}])
    assert out.node("fb").inputs == ["preprocess_b"] and out.node("hb").inputs == ["h", "preprocess_b"]
    y1, y2 = run(out, AB[0], AB[1].reshape(2, 3, 1))
    z1, z2 = run(g, *AB)
    assert torch.equal(y1, z1) and torch.equal(y2, z2)


def test_preprocessor_errors():
    g = dense_chain()
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.type: 'dense' is not an input preprocessor; valid: flatten, reshape, permute, normalize"):  # noqa: E501
        apply_ops(g, [{"op": "set_input_preprocessor", "type": "dense", "out_features": 3}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.input_shape: a flatten preprocessor changes the input's shape"):
        apply_ops(g, [{"op": "set_input_preprocessor", "type": "flatten"}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.input: the model has 2 inputs; name one: a, b"):
        apply_ops(skip_graph(seed=2), [{"op": "set_input_preprocessor", "type": "flatten", "input_shape": [4]}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.input: no graph input named 'c'; valid: a, b"):
        apply_ops(skip_graph(seed=2), [{"op": "set_input_preprocessor", "type": "flatten", "input": "c", "input_shape": [4]}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[1\]\.name: 'preprocess_input' is already a layer"):
        apply_ops(g, [{"op": "set_input_preprocessor", "type": "flatten", "input_shape": [4, 4]},
                      {"op": "set_input_preprocessor", "type": "flatten", "input_shape": [2, 8]}])
    with pytest.raises(ShapeError, match=r"^surgery\.ops\[0\] \(set_input_preprocessor 'input'\): layer 'fc1' \(dense\) does not accept its input \(preprocess_input \[15\]\)"):  # noqa: E501
        apply_ops(g, [{"op": "set_input_preprocessor", "input": "input", "type": "flatten", "input_shape": [3, 5]}])


# ---- graph ops ------------------------------------------------------------------------------------


def test_add_vertex_then_set_outputs_adds_a_third_head():
    g = skip_graph(seed=2)
    out = apply_ops(g, [
        {"op": "add_vertex", "name": "o3", "type": "dense", "out_features": 4, "inputs": ["h"]},
        {"op": "add_vertex", "name": "both", "type": "concat", "inputs": ["fa", "b"]},
        {"op": "set_outputs", "outputs": ["o1", "o2", "o3", "both"]},
    ])
    assert out.outputs == ["o1", "o2", "o3", "both"] and out.node_names[-2:] == ["o3", "both"]
    assert out.module("o3").in_features == 5 and out.node("o3").reinit
    y = run(out, *AB)
    z = run(g, *AB)
    assert torch.equal(y[0], z[0]) and torch.equal(y[1], z[1])
    assert y[2].shape == (2, 4) and y[3].shape == (2, 9)
    fa = run(g.split({"fa"})[0], *AB)
    assert torch.equal(y[3], torch.cat([fa[1], AB[1]], 1))  # prefix outputs: b, fa


def test_add_vertex_errors():
    g = skip_graph(seed=2)
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\] \(add_vertex 'o3'\): node 'o3' does not lead to any output .*set_outputs"):
        apply_ops(g, [{"op": "add_vertex", "name": "o3", "type": "dense", "out_features": 4, "inputs": ["h"]}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.inputs\[1\]: no layer or input named 'zz'; valid: a, b, fa"):
        apply_ops(g, [{"op": "add_vertex", "name": "v", "type": "add", "inputs": ["fa", "zz"]}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.inputs: missing; op 'add_vertex' needs name, type, inputs"):
        apply_ops(g, [{"op": "add_vertex", "name": "v", "type": "add"}])
    with pytest.raises(ShapeError, match=r"surgery\.ops\[0\] \(add_vertex 'v'\): layer 'v' \(add\) does not accept its input \(fa \[6\], b \[3\]\)"):
        apply_ops(g, [{"op": "add_vertex", "name": "v", "type": "add", "inputs": ["fa", "b"]},
                      {"op": "set_outputs", "outputs": ["v"]}])


def test_remove_vertex_keep_connections():
    g = skip_graph(seed=2)
    before = snapshot(g)
    out = apply_ops(g, [{"op": "remove_vertex_keep_connections", "name": "hn"}])
    assert_same(snapshot(g), before)
    assert "hn" not in out and out.node("r").inputs == ["h", "fa"]
    y1, y2 = run(out, *AB)
    assert y1.shape == (2, 2) and torch.equal(y2, run(g, *AB)[1])
    # an output vertex: the outputs take its input
    out = apply_ops(g, [{"op": "remove_vertex_keep_connections", "name": "o2"}])
    assert out.outputs == ["o1", "hb"]


def test_remove_vertex_keep_connections_errors():
    g = skip_graph(seed=2)
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.name: vertex 's' has 2 inputs \(fa, fb\) and h take one tensor from it"):
        apply_ops(g, [{"op": "remove_vertex_keep_connections", "name": "s"}])
    with pytest.raises(ShapeError, match=r"^surgery\.ops\[0\] \(remove_vertex_keep_connections 'h'\): layer 'hn' \(batchnorm1d\) does not accept its input \(s \[6\]\)"):  # noqa: E501
        apply_ops(g, [{"op": "remove_vertex_keep_connections", "name": "h"}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.name: no layer named 'x'"):
        apply_ops(g, [{"op": "remove_vertex_keep_connections", "name": "x"}])


def test_remove_vertex_and_connections_removes_what_depended_only_on_it():
    g = branch_graph()
    out = apply_ops(g, [{"op": "remove_vertex_and_connections", "name": "b1"}])
    assert out.node_names == ["a", "c1", "m", "out"]  # b2 depended only on b1
    assert out.node("m").inputs == ["c1"]  # the average keeps its other input
    x = torch.rand(2, 5)
    with torch.no_grad():
        expect = g.module("out")(g.module("c1")(g.module("a")(x)))
    assert torch.equal(run(out, x), expect)


def test_remove_vertex_and_connections_replacing_an_output_dl4j_style():
    g = skip_graph(seed=2)
    out = apply_ops(g, [
        {"op": "remove_vertex_and_connections", "name": "o1"},
        {"op": "add_vertex", "name": "o1", "type": "dense", "out_features": 7, "inputs": ["r"]},
        {"op": "set_outputs", "outputs": ["o1", "o2"]},
    ])
    assert out.outputs == ["o1", "o2"] and out.module("o1").out_features == 7 and out.node("o1").reinit
    y1, y2 = run(out, *AB)
    assert y1.shape == (2, 7) and torch.equal(y2, run(g, *AB)[1])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.name: removing 'o1' removes graph output\(s\) o1; add a set_outputs op after it"):
        apply_ops(g, [{"op": "remove_vertex_and_connections", "name": "o1"}])


def test_remove_vertex_and_connections_errors():
    g = skip_graph(seed=2)
    # removing fa leaves the concat r without its skip input: o1 no longer fits
    with pytest.raises(ShapeError, match=r"^surgery\.ops\[0\] \(remove_vertex_and_connections 'fa'\): layer 'o1' \(dense\) does not accept its input \(r \[5\]\)"):  # noqa: E501
        apply_ops(g, [{"op": "remove_vertex_and_connections", "name": "fa"}])
    sub = build_spec([
        {"name": "p", "type": "dense", "out_features": 3},
        {"name": "q", "type": "dense", "out_features": 3, "inputs": ["input"]},
        {"name": "d", "type": "subtract", "inputs": ["p", "q"]},
    ], input_shape=[2])
    with pytest.raises(ConfigError, match=r"layer 'd' \(subtract\) takes both 'p' and 'q'; removing 'p' would leave it"):
        apply_ops(sub, [{"op": "remove_vertex_and_connections", "name": "p"}])


def test_set_outputs_prunes_unused_nodes():
    g = skip_graph(seed=2)
    out = apply_ops(g, [{"op": "set_outputs", "outputs": ["h"]}])
    assert out.node_names == ["fa", "fb", "s", "h"] and out.outputs == ["h"]
    assert torch.equal(run(out, *AB), run(g.split({"fa", "fb", "s", "h"})[0], *AB)[2])
    kept = apply_ops(g, [{"op": "set_outputs", "outputs": ["h", "o1"], "prune": False}])
    assert kept.node_names == g.node_names and kept.outputs == ["h", "o1"]
    by_index = apply_ops(g, [{"op": "set_outputs", "outputs": [3]}])
    assert by_index.outputs == ["h"]
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.outputs\[1\]: no layer named 'b'; valid: fa, fb"):
        apply_ops(g, [{"op": "set_outputs", "outputs": ["h", "b"]}])
    with pytest.raises(ConfigError, match=r"surgery\.ops\[0\]\.outputs: at least one output is needed"):
        apply_ops(g, [{"op": "set_outputs", "outputs": []}])


def test_frozen_graph_nodes_survive_graph_ops():
    g = skip_graph(seed=2)
    freeze(g, "h")
    out = apply_ops(g, [
        {"op": "add_vertex", "name": "o3", "type": "dense", "out_features": 4, "inputs": ["h"]},
        {"op": "set_outputs", "outputs": ["o3"]},
    ])
    assert out.frozen == {"fa", "fb", "s", "h"}
    assert not any(p.requires_grad for n in ("fa", "h") for p in out.module(n).parameters())
    assert all(p.requires_grad for p in out.module("o3").parameters())
    assert g.frozen == {"fa", "fb", "s", "h"} and g.outputs == ["o1", "o2"]


def test_the_documented_example_runs():
    import tlexp.surgery

    doc = tlexp.surgery.__doc__
    block = doc[doc.index("    surgery:"):doc.index("Built-in ops")]
    ops = OmegaConf.create(block).surgery.ops
    out = apply_ops(conv_chain(), ops)
    assert out.outputs == ["output"] and out.node("act").inputs == ["fc1"]
    assert out.node("act").args == {"name": "relu", "alpha": None, "dim": -1}
    assert torch.allclose(run(out, X_IMG).sum(1), torch.ones(2))
