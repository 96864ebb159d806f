"""source=dl4j through the app: inspect, a featurized transfer run on a DL4J file, reload, CLI refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tlexp
from tests.conftest import run_cli
from tlexp.sources.dl4j import load_dl4j
from tlexp.train import run as train_run

FIX = Path(__file__).parent / "fixtures" / "dl4j"
MOON = FIX / "integration" / "MLPMoon" / "Model_RANDOM_INIT_UNTRAINED.zip"


def _moons_csv(path: Path, n: int = 120) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    rows = ["a,b,label"] + [f"{a:.4f},{b:.4f},{c}" for (a, b), c in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_inspect_lists_the_dl4j_layer_names(compose_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    from tlexp.inspect import inspect_config

    cfg = compose_cfg("source=dl4j", f"source.path={FIX / 'regression' / '100b4' / 'SyntheticCNN_100b4.bin'}",
                      "experiment=none", "inspect.format=json")
    inspect_config(cfg)
    arch = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in arch["nodes"]] == [f"layer{i}" for i in range(10)]


def test_featurized_transfer_run_on_a_dl4j_file_saves_and_reloads(compose_cfg, tmp_path: Path) -> None:
    csv = _moons_csv(tmp_path / "moons.csv")
    cfg = compose_cfg("source=dl4j", f"source.path={MOON}", "experiment=none", "data=csv", f"data.path={csv}",
                      "data.label=label", "freeze.up_to=layer0", "freeze.mode=featurize", "trainer.max_epochs=1")
    metrics = train_run(cfg)
    assert metrics["freeze"]["frozen"] == ["layer0"]
    saved = tlexp.load_model(tmp_path / "run" / "model")
    dl4j = load_dl4j(MOON)
    for k, v in dl4j.state_dict().items():
        if k.startswith("layers.layer0."):
            assert torch.equal(saved.state_dict()[k], v), k
    assert "accuracy" in json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]


def test_saved_model_with_dl4j_layer_types_reloads(tmp_path: Path) -> None:
    from tlexp.sources.saved import save_model

    g = load_dl4j(FIX / "regression" / "100b4" / "SyntheticBidirectionalRNNGraph_100b4.bin")
    save_model(g, tmp_path / "m")
    back = tlexp.load_model(tmp_path / "m")
    x = torch.rand(2, 10, 6)
    with torch.no_grad():
        torch.testing.assert_close(back(x), g(x))


@pytest.mark.slow
def test_cli_refuses_a_custom_layer_with_exit_status_2(tmp_path: Path) -> None:
    bad = run_cli(["source=dl4j", f"source.path={FIX / 'regression' / '100b4' / 'CustomLayerExample_100b4_float.bin'}"],
                  cwd=tmp_path, script="tlexp-inspect")
    assert bad.returncode == 2, bad.stderr
    assert "org.deeplearning4j.regressiontest.customlayer100a.CustomLayer" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert len([line for line in bad.stderr.splitlines() if line.strip()]) == 1


def test_run_continues_from_the_dl4j_updater_state(compose_cfg, tmp_path: Path) -> None:
    csv = _moons_csv(tmp_path / "moons.csv")
    cfg = compose_cfg("source=dl4j", f"source.path={MOON}", "source.load_optimizer_state=true", "experiment=none",
                      "data=csv", f"data.path={csv}", "data.label=label", "freeze.up_to=layer0",
                      "freeze.mode=in_model", "trainer.max_epochs=1")
    from tlexp.train import build_model

    g = load_dl4j(MOON, load_optimizer_state=True)
    _, finetune = build_model(cfg)
    for k, v in g.meta["finetune_overrides"].items():
        assert finetune[k] == v
    metrics = train_run(cfg)
    assert "accuracy" in metrics["test"]
    assert (tmp_path / "run" / "model" / "optimizer.safetensors").exists()


def test_dl4j_churn_transfer_recipe_end_to_end(compose_cfg, tmp_path: Path) -> None:
    from tlexp.data import build_datamodule
    from tlexp.sources.dl4j._write import churn_dl4j_model

    model = churn_dl4j_model(tmp_path / "churn_dl4j.zip")  # a DL4J-layout MultiLayerNetwork zip
    cfg = compose_cfg("experiment=dl4j_churn_transfer", f"source.path={model}", "trainer.max_epochs=1",
                      "data.synthetic_rows=3000")
    from omegaconf import OmegaConf

    data = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), seed=0)
    assert data.feature_names == ["CreditScore", "Geography=Germany", "Geography=Spain", "Gender=Female", "Age",
                                  "Tenure", "Balance", "NumOfProducts", "HasCrCard", "IsActiveMember",
                                  "EstimatedSalary"]
    metrics = train_run(cfg)
    assert metrics["freeze"]["frozen"] == ["normalizer", "layer0", "layer1"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= saved["test"]["accuracy"] <= 1.0
    # evaluated before fit (the book's first eval): the DL4J model as loaded, output layer kept
    from tlexp.module import evaluate

    before = saved["baseline"]["before_fit"]
    run_data = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), seed=int(cfg.seed))
    run_data.setup()
    want = evaluate(load_dl4j(model), run_data.test_dataloader(), run_data.num_classes, torch.device("cpu"))
    assert before["accuracy"] == pytest.approx(want["accuracy"])
    g = load_dl4j(model)
    assert g._nodes[0].name == "normalizer" and [n.name for n in g._nodes][-1] == "layer3"


def test_continuing_a_saved_run_keeps_its_frozen_set(compose_cfg, tmp_path: Path) -> None:
    csv = _moons_csv(tmp_path / "moons.csv")
    common = ("experiment=none", "data=csv", f"data.path={csv}", "data.label=label", "freeze.mode=in_model",
              "trainer.max_epochs=1")
    first = train_run(compose_cfg("source=dl4j", f"source.path={MOON}", "freeze.up_to=layer0", *common, out="a"))
    assert first["freeze"]["frozen"] == ["layer0"]
    model = tmp_path / "a" / "model"
    cont = compose_cfg("source=saved", f"source.path={model}", "source.load_optimizer_state=true", *common, out="b")
    assert train_run(cont)["freeze"]["frozen"] == ["layer0"]
    told = compose_cfg("source=saved", f"source.path={model}", "source.load_optimizer_state=false", *common, out="c")
    assert train_run(told)["freeze"]["frozen"] == []
