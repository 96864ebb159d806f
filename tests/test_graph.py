"""The graph core: split, JSON config round trips, save/load, freeze, registry validation."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import tlexp
from tests._models import conv_chain, skip_graph
from tlexp.config import SourceInit
from tlexp.errors import ConfigError, ShapeError, SourceError, check, fits
from tlexp.freeze import freeze, resolve_cut
from tlexp.graph import LayerGraph, Node, build_layer, build_layer_and_spec, get_layer_type, layer_names
from tlexp.sources.spec import build_spec

# ---- models ---------------------------------------------------------------------------------


def _randomize(graph: LayerGraph, seed: int = 0) -> LayerGraph:
    """Non-default values in every parameter and float buffer (BatchNorm statistics too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in graph.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        for b in graph.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return graph


def _as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


def _closed_cuts(graph: LayerGraph) -> list[set[str]]:
    names = graph.node_names
    cuts = []
    for mask in itertools.product([False, True], repeat=len(names)):
        cut = {n for n, m in zip(names, mask) if m}
        if graph.ancestors(cut) == cut:
            cuts.append(cut)
    return cuts


GRAPHS = {
    "chain": conv_chain,
    "skip": skip_graph,
    # an output that also feeds other nodes, and outputs out of topological order
    "skip_inner_output": lambda: skip_graph(["o2", "h", "o1"]),
}

# ---- split -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(GRAPHS))
def test_split_composes_to_the_full_forward_for_every_cut(kind):
    graph = _randomize(GRAPHS[kind]()).eval()
    xs = graph.example_inputs(3)
    with torch.no_grad():
        full = _as_tuple(graph(*xs))
    cuts = _closed_cuts(graph)
    assert len(cuts) >= len(graph) + 1
    for cut in cuts:
        prefix, suffix = graph.split(cut)
        with torch.no_grad():
            mid = _as_tuple(prefix(*xs))
            out = _as_tuple(suffix(*mid))
        assert len(mid) == len(suffix.inputs), cut
        assert len(out) == len(full)
        for a, b in zip(out, full):
            assert torch.equal(a, b), (kind, sorted(cut))
        assert set(prefix.node_names) == cut
        assert set(suffix.node_names) == set(graph.node_names) - cut


def test_split_boundary_carries_skip_connections_and_late_inputs():
    graph = skip_graph()
    prefix, suffix = graph.split({"fa", "fb", "s", "h"})
    # fa is used by r (skip), h by hn and hb, input b by hb: all cross the cut
    assert prefix.outputs == ["b", "fa", "h"]
    assert suffix.inputs == ["b", "fa", "h"]
    assert [tuple(g.shape) for g in suffix.graph_inputs] == [(3,), (6,), (5,)]
    assert prefix.summary()[-1].output_shape == ((5,),)


def test_split_rejects_cuts_not_closed_under_inputs():
    graph = skip_graph()
    with pytest.raises(ConfigError, match="not closed under inputs; also needs fa, fb"):
        graph.split({"s"})
    with pytest.raises(ConfigError, match="no layer named 'zz'"):
        graph.split({"zz"})


def test_split_keeps_frozen_sets_and_modes():
    graph = conv_chain()
    freeze(graph, "p")
    graph.train()
    prefix, suffix = graph.split(set(graph.node_names[:4]))
    assert prefix.frozen == {"c", "bn", "r", "p"} and suffix.frozen == set()
    assert not prefix.module("bn").training
    assert suffix.module("drop").training


# ---- JSON round trip for every registered layer type -----------------------------------------

INT_INPUTS = {"embedding"}  # layer types that take integer ids


def _example_graph(type_name: str) -> LayerGraph:
    lt = get_layer_type(type_name)
    dtype = "int64" if lt.name in INT_INPUTS else "float32"
    inputs = [{"name": f"x{i}", "shape": list(s), "dtype": dtype} for i, s in enumerate(lt.example_inputs)]
    cfg = {
        "inputs": inputs,
        "nodes": [{"name": "layer", "type": type_name, "args": dict(lt.example), "inputs": [i["name"] for i in inputs]}],
        "outputs": ["layer"],
    }
    return LayerGraph.from_config(cfg)


@pytest.mark.parametrize("type_name", layer_names())
def test_every_layer_type_round_trips_through_json(type_name):
    torch.manual_seed(0)
    graph = _randomize(_example_graph(type_name)).eval()
    cfg = json.loads(json.dumps(graph.to_config()))
    again = LayerGraph.from_config(cfg)
    assert again.to_config() == cfg
    again.load_state_dict(graph.state_dict())
    again.eval()
    xs = graph.example_inputs(3)
    with torch.no_grad():
        a, b = graph(*xs), again(*xs)
    assert torch.equal(a, b)
    # DL4J's StackVertex stacks along the batch axis; its sequence preprocessors make [batch*T] rows
    assert a.shape[0] == 3 or type_name in ("dl4j_stack", "dl4j_rnn_to_ff", "dl4j_rnn_to_cnn")


@pytest.mark.parametrize("type_name", layer_names())
def test_every_layer_type_has_a_working_example(type_name):
    lt = get_layer_type(type_name)
    module, spec = build_layer_and_spec(type_name, lt.example, lt.example_inputs)
    spec_type, spec_args = spec.type, spec.args
    assert Node("n", module, ["x"]).spec == spec  # a node made with a built module takes its spec
    assert not any(k.startswith("tlexp_") for k in vars(module))  # the spec is not on the module
    assert spec_type == lt.name
    assert set(spec_args) == set(lt.params)
    json.dumps(spec_args)  # every filled-in argument is JSON


# ---- save / load ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(GRAPHS))
def test_save_load_round_trip_gives_identical_outputs(kind, tmp_path):
    graph = _randomize(GRAPHS[kind]())
    freeze(graph, graph.node_names[2])
    path = tlexp.save_model(graph, tmp_path / "model", meta={"note": "x"})
    loaded = tlexp.load_model(path)
    assert loaded.to_config() == graph.to_config()
    assert loaded.frozen == graph.frozen
    assert loaded.meta == {"note": "x"}
    graph.eval(), loaded.eval()
    xs = graph.example_inputs(3)
    with torch.no_grad():
        for a, b in zip(_as_tuple(graph(*xs)), _as_tuple(loaded(*xs))):
            assert torch.equal(a, b)


def test_save_overwrites_atomically(tmp_path):
    graph = conv_chain()
    tlexp.save_model(graph, tmp_path / "m")
    tlexp.save_model(_randomize(conv_chain()), tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "weights.safetensors"]


def test_truncated_weights_are_a_source_error(tmp_path):
    path = tlexp.save_model(conv_chain(), tmp_path / "m")
    w = path / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(SourceError, match="truncated or damaged"):
        tlexp.load_model(path)


def test_damaged_config_is_a_source_error(tmp_path):
    path = tlexp.save_model(conv_chain(), tmp_path / "m")
    cfg = path / "config.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(SourceError, match="not valid JSON"):
        tlexp.load_model(path)


def test_config_that_does_not_fit_the_weights_is_a_source_error(tmp_path):
    path = tlexp.save_model(conv_chain(), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architecture"]["nodes"][-1]["args"]["out_features"] = 7
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match=r"layers\.fc2\.(weight|bias) has shape \[3(, 8)?\], the architecture needs \[7(, 8)?\]"):
        tlexp.load_model(path)
    cfg["architecture"]["nodes"][0]["type"] = "no_such_layer"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="unknown layer type 'no_such_layer'"):
        tlexp.load_model(path)


def test_missing_folder_and_files_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="not a model folder"):
        tlexp.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="has no config.json"):
        tlexp.load_model(tmp_path / "empty")


# ---- freeze -----------------------------------------------------------------------------------


@pytest.mark.parametrize("up_to", [2, "r", -6, "2"])
def test_freeze_chain_is_inclusive_by_index_or_name(up_to):
    graph = conv_chain()
    assert freeze(graph, up_to) == {"c", "bn", "r"}
    assert graph.frozen == {"c", "bn", "r"}
    assert not any(p.requires_grad for p in graph.module("c").parameters())
    assert all(p.requires_grad for p in graph.module("fc1").parameters())


def test_freeze_chain_edges():
    graph = conv_chain()
    assert freeze(graph, -1) == set(graph.node_names)
    assert freeze(graph, 0) == {"c"}
    assert freeze(graph, None) == set()
    assert all(p.requires_grad for p in graph.parameters())
    with pytest.raises(ConfigError, match=r"freeze\.up_to: index 8 is out of range; valid: 0\.\.7"):
        freeze(graph, 8)
    with pytest.raises(ConfigError, match=r"freeze\.up_to: no layer named 'fc3'; valid: c, bn"):
        freeze(graph, "fc3")
    with pytest.raises(ConfigError, match="freeze.mode"):
        freeze(graph, 1, mode="sometimes")


def test_freeze_graph_takes_ancestors_never_descendants():
    graph = skip_graph()
    assert not graph.is_chain
    assert resolve_cut(graph, "h") == {"fa", "fb", "s", "h"}
    assert resolve_cut(graph, "s") == {"fa", "fb", "s"}
    assert resolve_cut(graph, ["hn", "fb"]) == {"fa", "fb", "s", "h", "hn"}
    assert resolve_cut(graph, "fa") == {"fa"}
    # by index: node 3 is h
    assert resolve_cut(graph, 3) == {"fa", "fb", "s", "h"}


def _train_chain() -> LayerGraph:
    torch.manual_seed(3)
    return build_spec(
        [
            {"name": "fc1", "type": "dense", "out_features": 8},
            {"name": "bn1", "type": "batchnorm1d"},
            {"name": "drop1", "type": "dropout", "p": 0.5},
            {"name": "fc2", "type": "dense", "out_features": 8},
            {"name": "bn2", "type": "batchnorm1d"},
            {"name": "drop2", "type": "dropout", "p": 0.5},
            {"name": "fc3", "type": "dense", "out_features": 3},
        ],
        input_shape=[5],
    )


def test_frozen_weights_and_batchnorm_statistics_stay_fixed_while_training():
    graph = _train_chain()
    freeze(graph, "drop1")
    graph.train()
    before = {k: v.clone() for k, v in graph.state_dict().items()}
    # every parameter goes to the optimizer, weight decay included: frozen ones get no gradient
    opt = torch.optim.SGD(graph.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(16, 5, generator=g) * 3 + 1
        y = torch.randint(0, 3, (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(graph(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = graph.state_dict()
    for k in before:
        if k.startswith(("layers.fc1.", "layers.bn1.")):
            assert torch.equal(before[k], after[k]), k
    for k in ("fc2.weight", "bn2.running_mean", "bn2.running_var", "fc3.weight", "bn2.weight"):
        assert not torch.equal(before[f"layers.{k}"], after[f"layers.{k}"]), k
    assert int(after["layers.bn2.num_batches_tracked"]) == 4
    assert int(after["layers.bn1.num_batches_tracked"]) == 0
    assert graph.module("fc1").weight.grad is None


def test_frozen_nodes_run_in_inference_mode_inside_a_training_graph():
    graph = _train_chain()
    freeze(graph, "drop1")
    graph.train()
    assert graph.training
    assert not graph.module("bn1").training and not graph.module("drop1").training
    assert graph.module("drop2").training
    prefix, _ = graph.split({"fc1", "bn1", "drop1"})
    x = torch.randn(32, 5)
    with torch.no_grad():
        a, b = prefix(x), prefix(x)
        graph.eval()
        c = prefix(x)
    assert torch.equal(a, b) and torch.equal(a, c)  # dropout off, running statistics used
    graph.train()
    assert not graph.module("drop1").training and graph.module("drop2").training
    freeze(graph, None)  # unfrozen nodes follow the graph's mode again
    assert graph.module("bn1").training and graph.module("drop1").training
    graph.eval()
    freeze(graph, "fc1")
    freeze(graph, None)
    assert not graph.module("fc1").training


# ---- registry validation ------------------------------------------------------------------------


def test_unknown_layer_type_lists_valid_choices():
    with pytest.raises(ConfigError, match=r"fc\.type: unknown layer type 'dens'; valid: .*dense"):
        build_layer("dens", {}, where="fc")


def test_unknown_argument_lists_valid_arguments():
    with pytest.raises(ConfigError, match=r"unknown argument 'out' for layer type 'dense'; valid: in_features, out_features"):
        build_layer("dense", {"out": 3}, [(4,)])


@pytest.mark.parametrize(
    ("type_name", "args", "message"),
    [
        ("dense", {"out_features": "3"}, r"fc\.out_features: '3' is not an int"),
        ("dense", {"out_features": True}, r"fc\.out_features: True is not an int"),
        ("dense", {"out_features": 3, "bias": "yes"}, r"fc\.bias: 'yes' is not a bool"),
        ("upsample2d", {"mode": "cubic"}, r"fc\.mode: 'cubic' is not one of nearest, bilinear"),
        ("conv2d", {"out_channels": 2, "kernel_size": [3, "a"]}, r"fc\.kernel_size: \[3, 'a'\] is not a int or tuple"),
        ("dropout", {"p": 1.5}, r"fc: cannot build 'dropout'"),
    ],
)
def test_wrong_argument_types_are_config_errors(type_name, args, message):
    with pytest.raises(ConfigError, match=message):
        build_layer(type_name, args, [(3, 8, 8)] if type_name.startswith("conv") else [(4,)], where="fc")


def test_missing_required_argument_names_it():
    with pytest.raises(ConfigError, match=r"needs argument 'out_features' \(required: in_features, out_features\)"):
        build_layer("dense", {}, [(4,)])
    with pytest.raises(ConfigError, match=r"needs argument 'in_features'"):
        build_layer("dense", {"out_features": 2})  # no input shape to infer from


def test_from_config_reports_impossible_shapes():
    cfg = {
        "inputs": [{"name": "x", "shape": [4]}],
        "nodes": [
            {"name": "fc", "type": "dense", "args": {"in_features": 5, "out_features": 2}},
        ],
    }
    with pytest.raises(ShapeError, match=r"layer 'fc' \(dense\) does not accept input shape \[4\]"):
        LayerGraph.from_config(cfg)
    with pytest.raises(ConfigError, match=r"architecture\.format: 'x/2' is not supported"):
        LayerGraph.from_config({**cfg, "format": "x/2"})


def test_graph_construction_errors():
    with pytest.raises(ConfigError, match=r"input 'zz' is not a graph input or an earlier node"):
        build_spec([{"name": "a", "type": "dense", "out_features": 2, "inputs": ["zz"]}], input_shape=[3])
    with pytest.raises(ConfigError, match=r"graph outputs: 'q' is not a node"):
        build_spec([{"name": "a", "type": "dense", "out_features": 2}], input_shape=[3], outputs=["q"])
    with pytest.raises(ConfigError, match="name used twice"):
        build_spec([{"name": "input", "type": "dense", "out_features": 2}], input_shape=[3])


@pytest.mark.parametrize(
    ("value", "hint", "kw", "message"),
    [
        ("3", int, {}, r"^x: '3' is not an integer$"),
        (True, float, {}, r"^x: True is not a number$"),
        ("1e-3", float, {"text_numbers": True, "low": 0.01}, r"^x: '1e-3' is out of range; valid: >= 0.01$"),
        ("inf", float, {"text_numbers": True}, r"^x: inf is not a finite number$"),
        (1.0, float, {"low": 0.0, "high": 1.0, "high_open": True}, r"^x: 1.0 is out of range; valid: \[0, 1\)$"),
        ([1, 2, 3], tuple[int, int], {}, r"^x: \[1, 2, 3\] needs 2 values$"),
        ("yes", bool | None, {}, r"^x: 'yes' is not a bool or null$"),
        ("imagenet", SourceInit, {}, r"^x: 'imagenet' is not one of pretrained, random$"),
    ],
)
def test_the_one_checker_names_the_field_value_and_what_is_valid(value, hint, kw, message):
    """graph arguments, surgery op keys, finetune settings and source.init all go through
    tlexp.errors.check: one wording for one mistake."""
    with pytest.raises(ConfigError, match=message):
        check(value, hint, "x", **kw)


def test_the_one_checker_converts_where_the_hint_says():
    assert check([1, 2], tuple[int, int], "x") == (1, 2)
    assert check(1, float, "x") == 1.0 and isinstance(check(1, float, "x"), float)
    assert check("2", int, "x", text_numbers=True) == 2
    assert check("random", SourceInit, "x") is SourceInit.random
    assert fits([1, 2], list[int]) and not fits([1, "a"], list[int])


def test_no_room_keeps_its_own_type_checker():
    import tlexp.baselines
    import tlexp.finetune._settings
    import tlexp.graph._registry
    import tlexp.surgery._registry

    assert not hasattr(tlexp.graph._registry, "_check") and not hasattr(tlexp.surgery._registry, "_fits")
    for module in (tlexp.baselines, tlexp.finetune._settings, tlexp.graph._registry, tlexp.surgery._registry):
        assert "check" in vars(module) or "fits" in vars(module), module.__name__
