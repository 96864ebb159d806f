"""source=zoo: timm models as LayerGraphs at block granularity (tiny models, random weights)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import tlexp
from tlexp.errors import ConfigError, ShapeError, SourceError
from tlexp.freeze import resolve_cut
from tlexp.graph import build_layer, built_spec
from tlexp.sources import load_source
from tlexp.sources.zoo import data_config, load_zoo, reset_classifier
from tlexp.sources.zoo._trace import to_graph

SMALL = [3, 32, 32]

#: model -> nodes that must exist (its blocks, stage parts and classifier)
FAMILIES = {
    "test_resnet": ["conv1.0", "layer1.0", "layer4.0", "global_pool", "fc"],
    "resnet10t": ["layer1.0", "layer2.0", "layer3.0", "layer4.0", "fc"],
    "test_efficientnet": ["conv_stem", "blocks.0.0", "blocks.4.0", "classifier"],
    "test_convnext": ["stem.0", "stages.0.blocks.0", "stages.1.downsample.1", "stages.1.blocks.1", "head.norm", "head.fc"],
    "test_vit": ["patch_embed", "cls_token", "pos_embed", "blocks.0", "blocks.5", "norm", "head"],
}


def _tuple(y):
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _load(name, **kw):
    torch.manual_seed(0)
    return load_zoo(name, input_size=SMALL, **kw).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny tensors: one thread is as fast, and far faster when other processes share the cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def graphs():
    return {name: _load(name) for name in FAMILIES}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_graph_is_the_timm_model_at_block_granularity(graphs, name):
    graph = graphs[name]
    assert graph.meta["granularity"] == "block"
    for node in FAMILIES[name]:
        assert node in graph, (node, graph.node_names)
    assert graph.node(graph.meta["classifier"]).type == "dense"
    torch.manual_seed(0)  # the same initialization as load_zoo's
    model = timm.create_model(name, pretrained=False).eval()
    x = graph.example_inputs(2)[0]
    with torch.no_grad():
        assert torch.equal(graph(x), model(x))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_split_at_every_cut_point_gives_the_whole_output(graphs, name):
    graph = graphs[name]
    xs = graph.example_inputs(2)
    with torch.no_grad():
        full = graph(*xs)
    # every prefix of the node order, and every node with its ancestors (freeze.up_to=node)
    cuts = {frozenset(graph.node_names[: k + 1]) for k in range(len(graph))}
    cuts |= {frozenset(resolve_cut(graph, n)) for n in graph.node_names}
    for cut in cuts:
        prefix, suffix = graph.split(cut)
        with torch.inference_mode():  # as featurize runs the prefix
            mid = _tuple(prefix(*xs))
        with torch.no_grad():
            out = suffix(*mid)
        assert torch.equal(out, full), sorted(cut)


def test_cut_across_a_skip_connection_stores_every_crossing_tensor():
    # a CSP stage splits its input in two; one half bypasses the blocks and is concatenated back
    torch.manual_seed(0)
    graph = load_zoo("cs3darknet_s", input_size=[3, 64, 64]).eval()
    cut = resolve_cut(graph, "stages.0.blocks.0")
    prefix, suffix = graph.split(cut)
    # the block's output, and the stage tensor whose other half bypasses the block
    assert prefix.outputs == ["stages.0.conv_exp", "stages.0.blocks.0"]
    assert graph.node("stages.0.blocks.0").inputs[0] in cut
    x = graph.example_inputs(2)
    with torch.no_grad():
        mid = prefix(*x)
        assert all(t.shape[0] == 2 for t in mid)
        assert torch.equal(suffix(*mid), graph(*x))


def test_vit_cut_before_the_position_embedding_keeps_the_patch_grid(graphs):
    graph = graphs["test_vit"]
    prefix, suffix = graph.split(resolve_cut(graph, "cat"))
    # the position embedding is resampled to the patch grid, so the patches cross the cut too
    assert prefix.outputs == ["patch_embed", "cat"]
    x = graph.example_inputs(2)
    with torch.no_grad():
        assert torch.equal(suffix(*prefix(*x)), graph(*x))


def test_summary_lists_blocks_with_shapes_params_and_feature_size(graphs):
    graph = graphs["test_resnet"]
    rows = {r.name: r for r in graph.summary()}
    assert rows["layer1.0"].type == "timm_module"
    assert rows["layer1.0"].params == sum(p.numel() for p in graph.module("layer1.0").parameters()) > 0
    c, h, w = rows["layer4.0"].output_shape[0]
    assert rows["layer4.0"].feature_size == c * h * w
    assert rows["global_pool"].feature_size == c
    assert rows["fc"].output_shape == ((1000,),)


def test_save_and_load_round_trip_gives_identical_outputs(graphs, tmp_path):
    for name in ("test_vit", "test_convnext", "test_resnet"):
        graph = graphs[name]
        with torch.no_grad():  # weights that differ from a fresh random init
            for p in graph.parameters():
                p.add_(0.01)
        tlexp.save_model(graph, tmp_path / name, meta=graph.meta)
        text = (tmp_path / name / "config.json").read_text()
        assert "import" not in text and "timm.models" not in text
        again = tlexp.load_model(tmp_path / name).eval()
        x = graph.example_inputs(2)
        with torch.no_grad():
            assert torch.equal(again(*x), graph(*x))
        assert again.meta["data_config"] == graph.meta["data_config"]
        # rebuilt nodes leave their inputs untouched too (resnet's act1 is an in-place ReLU in timm)
        prefix, suffix = again.split(again.node_names[:2])
        with torch.inference_mode():
            mid = _tuple(prefix(*x))
        with torch.no_grad():
            assert torch.equal(suffix(*mid), graph(*x))


def test_local_weights_file_loads_that_models_weights(tmp_path):
    torch.manual_seed(123)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    torch.save(model.state_dict(), str(pth))
    x = torch.rand(2, *SMALL)
    with torch.no_grad():
        expected = model(x)
    for path in (st, pth):
        torch.manual_seed(0)
        graph = load_zoo("test_resnet", weights=str(path), num_classes=5, input_size=SMALL).eval()
        with torch.no_grad():
            assert torch.equal(graph(x), expected), path.name
        assert graph.meta["pretrained"] is True
    # another class count: the file's classifier is dropped (timm's reset semantics), the rest kept
    graph = load_zoo("test_resnet", weights=str(st), num_classes=3, input_size=SMALL)
    assert graph.module("fc").out_features == 3
    assert torch.equal(graph.module("layer1.0").conv1.weight, model.layer1[0].conv1.weight)


def test_weights_file_errors(tmp_path):
    with pytest.raises(SourceError, match="source.weights.*does not exist"):
        load_zoo("test_resnet", weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="source.weights.*valid suffixes"):
        load_zoo("test_resnet", weights=str(tmp_path / "w.txt"))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"nothing.weight": torch.zeros(2)}, str(wrong))
    with pytest.raises(SourceError, match="source.weights.*does not fit timm model 'test_resnet'"):
        load_zoo("test_resnet", weights=str(wrong))


def test_offline_without_weights_file_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(SourceError) as err:
        load_source({"type": "zoo", "name": "test_resnet", "pretrained": True})
    msg = str(err.value)
    assert "source.weights" in msg and "HF_HUB_OFFLINE" in msg and "\n" not in msg
    assert err.value.exit_code == 2


def test_failed_download_is_refused_in_one_line(monkeypatch, tmp_path):
    import timm.models._builder as builder

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\nmore detail")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(builder, "load_state_dict_from_hf", no_network)
    monkeypatch.setattr(builder, "download_cached_file", no_network)
    with pytest.raises(SourceError) as err:
        load_zoo("test_resnet", pretrained=True)
    msg = str(err.value)
    assert "source.weights" in msg and "HF_HUB_OFFLINE" in msg and "huggingface.co" in msg and "\n" not in msg


def test_unknown_name_names_the_field_and_close_matches():
    with pytest.raises(ConfigError, match=r"source.name: timm has no model 'resnt50'; close matches: resnet50"):
        load_zoo("resnt50")


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="source.colour"):
        load_source({"type": "zoo", "name": "test_resnet", "colour": 1})
    with pytest.raises(ConfigError, match="source.kwargs.num_classes: set source.num_classes"):
        load_source({"type": "zoo", "name": "test_resnet", "kwargs": {"num_classes": 3}})
    with pytest.raises(ConfigError, match="source.kwargs.pretrained_cfg_overlay: set source.weights"):
        load_zoo("test_resnet", pretrained_cfg_overlay={})
    with pytest.raises(ConfigError, match="source.kwargs: .*unexpected keyword"):
        load_zoo("test_resnet", input_size=SMALL, not_an_argument=1)
    with pytest.raises(ConfigError, match="source.input_size"):
        load_zoo("test_resnet", input_size=[3, 32])
    with pytest.raises(ShapeError, match=r"source.input_size: \[3, 32, 32\] does not fit .*img_size"):
        load_zoo("vit_tiny_patch16_224", input_size=SMALL)


def test_kwargs_reach_timm_and_are_saved(tmp_path):
    graph = load_zoo("vit_tiny_patch16_224", input_size=SMALL, img_size=32, depth=2)
    assert graph.meta["creation_kwargs"] == {"img_size": 32, "depth": 2}
    assert [n for n in graph.node_names if n.startswith("blocks.")] == ["blocks.0", "blocks.1"]
    tlexp.save_model(graph, tmp_path / "m")
    again = tlexp.load_model(tmp_path / "m").eval()
    x = graph.eval().example_inputs(1)
    with torch.no_grad():
        assert torch.equal(again(*x), graph(*x))


def test_classifier_surgery_keeps_the_prefix(graphs):
    from tlexp.surgery import apply_ops

    for name in ("test_resnet", "test_convnext", "test_vit"):
        graph = graphs[name]
        before = {k: v.clone() for k, v in graph.state_dict().items()}
        x = graph.example_inputs(2)
        # pooled features: the classifier removed
        pooled = apply_ops(graph, [{"op": "remove_output_layer"}]).eval()
        with torch.no_grad():
            feats = pooled(*x)
        assert feats.shape == (2, graph.module(graph.meta["classifier"]).in_features)
        # and a new K-class classifier on them
        new = apply_ops(graph, [
            {"op": "remove_output_layer"},
            {"op": "add_layer", "name": "classifier_k", "type": "dense", "out_features": 4},
        ]).eval()
        with torch.no_grad():
            assert new(*x).shape == (2, 4)
        state = new.state_dict()
        kept = [k for k in before if k in state]
        assert len(kept) == len(before) - 2  # all but the old classifier's weight and bias
        assert all(torch.equal(state[k], before[k]) for k in kept)
        # a layer after any block
        block = {"test_resnet": "layer2.0", "test_convnext": "stages.1.blocks.0", "test_vit": "blocks.2"}[name]
        added = apply_ops(graph, [{"op": "add_layer", "name": "extra", "type": "dropout", "after": block}])
        assert added.node(added.consumers("extra")[0]).inputs == ["extra"]


def test_reset_classifier_follows_timm(graphs):
    graph = graphs["test_convnext"]
    x = graph.example_inputs(2)
    headless = reset_classifier(graph, 0)
    assert "head.fc" not in headless and headless.outputs == ["head.drop"]
    again = reset_classifier(headless, 7)
    with torch.no_grad():
        assert headless.eval()(*x).shape == (2, 64)
        assert again.eval()(*x).shape == (2, 7)
    assert again.meta["num_classes"] == 7 and again.node_names[-1] == "head.fc"
    # a classifier that is not a linear layer (dla's 1x1 conv) is left to surgery ops
    odd = graph.rebuilt(meta={**graph.meta, "classifier": "head.norm"})
    with pytest.raises(ConfigError, match="not a linear layer"):
        reset_classifier(odd, 3)
    # created without a classifier: the same graph as reset to 0
    torch.manual_seed(0)
    none = load_zoo("test_convnext", num_classes=0, input_size=SMALL)
    assert none.node_names == headless.node_names


def test_data_config_is_timms(graphs, tmp_path):
    from timm.data import resolve_data_config

    graph = graphs["test_convnext"]
    cfg = data_config(graph)
    timm_cfg = resolve_data_config({"input_size": tuple(SMALL)}, model=timm.create_model("test_convnext"))
    assert cfg["input_size"] == SMALL
    assert cfg["mean"] == list(timm_cfg["mean"]) and cfg["std"] == list(timm_cfg["std"])
    assert cfg["interpolation"] == timm_cfg["interpolation"] and cfg["crop_pct"] == timm_cfg["crop_pct"]
    assert data_config("test_convnext")["input_size"] == [3, 160, 160]
    # a saved model without meta: resolved from its timm nodes and input shape
    tlexp.save_model(graph, tmp_path / "m")
    assert data_config(tlexp.load_model(tmp_path / "m")) == cfg
    gray = load_zoo("test_resnet", in_chans=1, input_size=[1, 32, 32])
    assert gray.meta["data_config"]["input_size"] == [1, 32, 32] and len(gray.meta["data_config"]["mean"]) == 1
    with torch.no_grad():
        assert gray.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 1000)


def test_untraceable_model_falls_back_to_coarser_nodes():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = self.a(x)
            return self.b(x)

    graph, level = to_graph(Branchy().eval(), {"model": "x", "kwargs": {}}, [4])
    assert level == "model" and graph.node_names == ["model"]


def test_tensor_op_refuses_anything_off_its_allow_list():
    ok = build_layer("tensor_op", {"expr": {"method": "flatten", "args": [{"input": 0}, 1]}})
    assert ok(torch.zeros(2, 3, 4)).shape == (2, 12)
    for bad in (
        {"call": "os_system", "args": ["ls"]},
        {"method": "__reduce__", "args": [{"input": 0}]},
        {"attr": "__dict__", "of": {"input": 0}},
        {"call": "torch.cat", "args": [[{"input": 0}]]},
        {"dtype": "object"},
    ):
        with pytest.raises(ConfigError):
            build_layer("tensor_op", {"expr": bad})
    with pytest.raises(ConfigError, match="tensor name"):
        build_layer("tensor_op", {"expr": {"tensor": "training"}, "tensors": {"training": {"shape": [1]}}})


def test_timm_module_layer_rebuilds_from_its_origin():
    m = build_layer("timm_module", {"model": "test_resnet", "path": "layer1.0"})
    assert type(m).__name__ == "BasicBlock"
    with pytest.raises(ConfigError, match="no module 'layer9'"):
        build_layer("timm_module", {"model": "test_resnet", "path": "layer9"})
    with pytest.raises(ConfigError, match="no model"):
        build_layer("timm_module", {"model": "not_a_model", "path": "fc"})
    assert json.loads(json.dumps(built_spec(m).args)) == {"model": "test_resnet", "path": "layer1.0", "kwargs": None, "call": None}
    # a block called with more than its input (a ViT block with relative positions)
    call = {"args": [{"input": 0}], "kwargs": {"shared_rel_pos": None}}
    blk = build_layer("timm_module", {"model": "test_vit_relpos", "path": "blocks.0", "call": call}).eval()
    x = torch.rand(2, 100, blk.inner.norm1.normalized_shape[0])  # 10 x 10 patches
    with torch.no_grad():
        assert torch.equal(blk(x), blk.inner(x, shared_rel_pos=None))
    with pytest.raises(ConfigError, match="not allowed"):
        build_layer("timm_module", {"model": "test_resnet", "path": "fc", "call": {"args": [{"call": "eval"}]}})


@pytest.mark.parametrize("name, kwargs", [
    ("test_vit_relpos", {}),  # blocks take shared_rel_pos=None
    ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 3}),  # blocks take the rotary table, a computed buffer
])
def test_blocks_called_with_more_than_their_input(name, kwargs, tmp_path):
    torch.manual_seed(0)
    graph = load_zoo(name, **kwargs).eval()
    assert graph.meta["granularity"] == "block" and "blocks.1" in graph
    assert "call" in graph.node("blocks.1").args
    x = graph.example_inputs(2)
    with torch.no_grad():
        full = graph(*x)
        prefix, suffix = graph.split(resolve_cut(graph, "blocks.1"))
        assert torch.equal(suffix(*_tuple(prefix(*x))), full)
    tlexp.save_model(graph, tmp_path / "m")
    again = tlexp.load_model(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(again(*x), full)
