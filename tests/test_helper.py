"""TransferLearningHelper (DL4J's helper of that name): the Python round trip equals a run's training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import tlexp
from tlexp import TransferLearningHelper
from tlexp.data import build_datamodule
from tlexp.errors import ConfigError
from tlexp.graph import LayerGraph
from tlexp.train import run

CHURN = {"type": "churn", "label": "Exited", "drop": ["RowNumber", "CustomerId", "Surname"],
         "categorical": ["Geography", "Gender"], "synthetic_rows": 600}


def _small_model(path: Path) -> Path:
    torch.manual_seed(3)
    graph = LayerGraph.from_config({
        "format": "tlexp.layergraph/1", "inputs": [{"name": "input", "shape": [11], "dtype": "float32"}],
        "nodes": [
            {"name": "dense0", "type": "dense", "args": {"in_features": 11, "out_features": 6, "activation": "relu"}, "inputs": ["input"]},
            {"name": "dense1", "type": "dense", "args": {"in_features": 6, "out_features": 4, "activation": "relu", "dropout": 0.1},
             "inputs": ["dense0"]},
            {"name": "output", "type": "dense", "args": {"in_features": 4, "out_features": 2, "activation": "softmax"},
             "inputs": ["dense1"]},
        ],
        "outputs": ["output"]})
    tlexp.save_model(graph, path)
    return path


def test_the_helper_round_trip_equals_a_runs_featurized_training(compose_cfg, tmp_path: Path) -> None:
    model_dir = _small_model(tmp_path / "m")
    cfg = compose_cfg("experiment=none", "source=saved", f"source.path={model_dir}", "data=churn", "data.synthetic_rows=600",
                      "freeze=featurize", "freeze.up_to=dense0", "trainer.max_epochs=3", "seed=7", out="cli")
    metrics = run(cfg)
    by_run = load_file(str(tmp_path / "cli" / "model" / "weights.safetensors"))

    model = tlexp.load_model(model_dir)
    helper = TransferLearningHelper(model, "dense0", cache_dir=tmp_path / "cache")
    assert helper.boundary == ["dense0"] and isinstance(helper.unfrozen, torch.nn.Module)
    assert [n for n in helper.unfrozen.node_names] == ["dense1", "output"]
    data = build_datamodule(CHURN, seed=7)
    cached = helper.featurize(data)
    assert cached.key == metrics["featurize"]["key"] and cached.cache_hit  # the run's cache, shared
    summary = helper.fit_featurized(data, epochs=3, seed=7)
    assert summary["epochs"] == metrics["epochs"] and summary["best_epoch"] == metrics["best_epoch"]
    mine = model.state_dict()
    assert set(mine) == set(by_run)
    for k, v in by_run.items():
        assert torch.allclose(mine[k], v, atol=1e-6), k
    # the frozen layer did not move; the trained ones did
    start = load_file(str(model_dir / "weights.safetensors"))
    assert all(torch.equal(mine[k], start[k]) for k in start if "dense0" in k)
    assert any(not torch.equal(mine[k], start[k]) for k in start if "dense1" in k)

    # output_from_featurized(featurize(x)) is the whole model's output
    x, y = data.dataset("test").tensors
    with torch.no_grad():
        whole = model.eval()(x)
    assert torch.allclose(helper.output_from_featurized(helper.featurize(x)), whole, atol=1e-6)
    # a loader's features are the cached ones
    feats, labels = helper.featurize(DataLoader(data.dataset("val"), batch_size=50))
    stored, stored_y = helper.load_featurized(cached, "val")
    assert torch.allclose(feats, stored, atol=1e-6) and torch.equal(labels, stored_y)


def test_the_helper_needs_a_cut() -> None:
    model = tlexp.load_model(tlexp._resources.MODELS_DIR / "churn_net")
    with pytest.raises(ConfigError, match="freezes nothing"):
        TransferLearningHelper(model, None)
