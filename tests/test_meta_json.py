"""``graph.meta`` is plain JSON data for every source: it survives ``json.dumps``/``json.loads``
unchanged (no tensors, objects or tuples), so it saves with the model and reads back the same.
What is not JSON travels another declared way: a Keras model's regularizers and constraints are
JSON terms that ``KerasTerms`` applies in training; a DL4J zip's optimizer state comes from
``tlexp.sources.load_source_optimizer_state``."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

import tlexp
from tlexp.sources import load_source, load_source_optimizer_state

HERE = Path(__file__).parent
KERAS_MLP = HERE / "fixtures" / "keras" / "k3" / "mlp.keras"
DL4J_MLP = HERE / "fixtures" / "dl4j" / "regression" / "080" / "080_ModelSerializer_Regression_MLP_1.zip"


def _json_data(meta: dict) -> None:
    assert isinstance(meta, dict)
    assert json.loads(json.dumps(meta)) == meta


def _keras_with_terms(tmp_path: Path) -> Path:
    """k3/mlp.keras with regularizers and constraints on its dense layers."""
    with zipfile.ZipFile(KERAS_MLP) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    config = json.loads(entries["config.json"])
    for layer in config["config"]["layers"]:
        c = layer["config"]
        if c.get("name") == "d1":
            c["kernel_regularizer"] = {"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.1}}
            c["activity_regularizer"] = {"module": "keras.regularizers", "class_name": "L1", "config": {"l1": 0.01}}
            c["bias_constraint"] = {"module": "keras.constraints", "class_name": "NonNeg", "config": {}}
        if c.get("name") == "d2":
            c["kernel_constraint"] = {"module": "keras.constraints", "class_name": "MaxNorm",
                                      "config": {"max_value": 0.5, "axis": 0}}
    entries["config.json"] = json.dumps(config).encode()
    out = tmp_path / "terms.keras"
    with zipfile.ZipFile(out, "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
    return out


def test_keras_meta_with_regularizers_and_constraints_is_json_and_the_terms_apply(tmp_path):
    from tlexp.sources.keras import KerasTerms

    graph = load_source({"type": "keras", "path": str(_keras_with_terms(tmp_path)), "enforce_training_config": True})
    _json_data(graph.meta)
    terms = graph.meta["training_terms"]
    assert {(t["node"], t.get("param"), t.get("kind")) for t in terms} >= {("d1", "weight", None), ("d1", "bias", "NonNeg"),
                                                                          ("d2", "weight", "MaxNorm")}
    applied = KerasTerms(terms)
    w = graph.node("d1").module.weight
    assert torch.allclose(applied.penalty(graph), 0.1 * w.detach().square().sum())
    # attached once per fit phase: the activity penalty (L1 0.01 on d1's output) is recorded once
    x = torch.rand(3, 6)
    applied.attach(graph)
    first = applied._recorder
    applied.attach(graph)
    graph(x)
    with torch.no_grad():
        out = graph.node("d1").module(x)
    assert first is not None and first.outputs == []
    want = 0.1 * w.detach().square().sum() + 0.01 * out.detach().abs().sum() / 3
    assert torch.allclose(applied.penalty(graph).detach(), want)
    with torch.no_grad():
        graph.node("d1").module.bias.fill_(-1.0)
    applied.after_step(graph)
    assert (graph.node("d1").module.bias >= 0).all()
    assert graph.node("d2").module.weight.square().sum(dim=1).sqrt().max() <= 0.5 + 1e-5


def test_dl4j_meta_with_optimizer_state_is_json_and_the_state_comes_from_the_source():
    cfg = {"type": "dl4j", "path": str(DL4J_MLP), "load_optimizer_state": True}
    graph = load_source(cfg)
    _json_data(graph.meta)
    assert graph.meta["finetune_overrides"]["optimizer"] == "nesterov"
    state = load_source_optimizer_state(cfg)
    assert set(state["by_name"]) == {n for n, _ in graph.named_parameters()}
    assert all(isinstance(v, torch.Tensor) for s in state["by_name"].values() for v in s.values())


def test_dl4j_zoo_meta_is_json():
    _json_data(load_source({"type": "dl4j_zoo", "name": "squeezenet", "input_size": [3, 48, 48], "num_classes": 3}).meta)


def test_zoo_meta_is_json():
    from tlexp.sources.zoo import load_zoo

    _json_data(load_zoo("test_vit", input_size=(3, 32, 32)).meta)


def test_spec_and_saved_meta_are_json():
    graph = load_source({"type": "spec", "input_shape": [4], "layers": [
        {"name": "hidden", "type": "dense", "out_features": 3}, {"name": "out", "type": "dense", "out_features": 2}]})
    _json_data(graph.meta)
    for model in (Path(tlexp.__file__).parent / "models" / "churn_net", HERE / "fixtures" / "saved_before" / "keras_rnn"):
        meta = tlexp.load_model(model).meta
        assert meta
        _json_data(meta)


def test_a_source_without_optimizer_state_is_refused_in_one_line():
    from tlexp.errors import ConfigError

    with pytest.raises(ConfigError, match="source.load_optimizer_state: a spec source has no optimizer state"):
        load_source_optimizer_state({"type": "spec"})


def test_a_run_applies_the_terms_of_an_enforced_keras_training_config(compose_cfg, tmp_path):
    """From the config to the training loop: the JSON terms in meta are applied while training
    (a NonNeg bias constraint holds after the run; the source's bias starts negative)."""
    import shutil

    import h5py

    from tlexp.train import run as train_run

    path = tmp_path / "digits_terms.h5"
    shutil.copy(HERE / "fixtures" / "keras" / "k3" / "digits.h5", path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["config"].get("name") == "hidden":
                layer["config"]["bias_constraint"] = {"module": "keras.constraints", "class_name": "NonNeg", "config": {}}
                layer["config"]["kernel_regularizer"] = {"module": "keras.regularizers", "class_name": "L2",
                                                         "config": {"l2": 0.01}}
        f.attrs["model_config"] = json.dumps(config)
        bias = f["model_weights/hidden"]
        name = next(n for n in _datasets(bias) if n.endswith("bias"))
        bias[name][...] = -1.0
    cfg = compose_cfg("source=keras", f"source.path={path}", "experiment=none", "data=digits",
                      "source.enforce_training_config=true", "freeze.up_to=conv", "trainer.max_epochs=1")
    train_run(cfg)
    saved = tlexp.load_model(tmp_path / "run" / "model")
    _json_data(saved.meta)
    assert (saved.node("hidden").module.bias >= 0).all()


def _datasets(group) -> list[str]:
    import h5py

    names: list[str] = []
    group.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_a_graph_refuses_meta_that_is_not_json_data():
    from tlexp.graph import LayerGraph, Node, build_layer

    nodes = [Node("fc", build_layer("dense", {"in_features": 4, "out_features": 2}), ["x"])]
    with pytest.raises(TypeError, match="meta must be JSON data"):
        LayerGraph(["x"], nodes, ["fc"], meta={"state": torch.zeros(2)})
    graph = LayerGraph(["x"], nodes, ["fc"], meta={"source": "test"})
    with pytest.raises(TypeError, match="meta must be JSON data"):
        graph.rebuilt(meta={**graph.meta, "terms": object()})
