"""A model's preprocessing travels with it (model/preprocessing.json) and is reapplied by default.

The churn case of issue 9: a model trained on French and Spanish customers, fine-tuned or
evaluated on German ones, must see German inputs standardized with the source's statistics
(``data.preprocessing=source``), unless the run asks to re-estimate them (``refit``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tlexp
from tlexp.data import build_datamodule
from tlexp.data.preprocessing import TabularPreprocessing, load_preprocessing
from tlexp.data.tabular import synthetic_churn, write_csv
from tlexp.errors import ConfigError
from tlexp.train import run

from .conftest import cli_here

CHURN = {"type": "churn", "label": "Exited", "drop": ["RowNumber", "CustomerId", "Surname"],
         "categorical": ["Geography", "Gender"], "synthetic_rows": 1500}
SOURCE = {**CHURN, "where": {"Geography": ["France", "Spain"]}}
GERMANY = {**CHURN, "where": {"Geography": ["Germany"]}}


def _source_preprocessing() -> TabularPreprocessing:
    src = build_datamodule(SOURCE, seed=0)
    src.setup()
    pre = src.preprocessing()
    assert isinstance(pre, TabularPreprocessing)
    return pre


def test_the_german_split_is_standardized_with_the_source_statistics() -> None:
    pre = _source_preprocessing()
    raw = build_datamodule({**GERMANY, "standardize": False}, seed=0)
    applied = build_datamodule(GERMANY, seed=0, source_preprocessing=pre)
    refit = build_datamodule({**GERMANY, "preprocessing": "refit"}, seed=0, source_preprocessing=pre)
    mean, std = np.asarray(pre.mean, dtype=np.float32), np.asarray(pre.std, dtype=np.float32)
    for split in ("train", "val", "test"):
        x_raw = raw.dataset(split).tensors[0].numpy()
        np.testing.assert_allclose(applied.dataset(split).tensors[0].numpy(), (x_raw - mean) / std, rtol=1e-5, atol=1e-5)
    # German balances are far above the source's: under the source's statistics they stay high
    bal = pre.features.index("Balance")
    assert applied.dataset("train").tensors[0][:, bal].mean() > 0.5
    # refit re-estimates on the German training split: centred there, and different from the source's
    x_train = raw.dataset("train").tensors[0].numpy()
    refit.setup()
    assert np.allclose(refit.stats["mean"], x_train.mean(axis=0), rtol=1e-5, atol=1e-3)
    assert abs(float(refit.dataset("train").tensors[0][:, bal].mean())) < 1e-4
    assert not np.allclose(refit.stats["mean"], pre.mean)
    # the cache keys differ: the features differ
    assert applied.identity() != refit.identity()


def test_columns_that_do_not_match_the_source_are_named(tmp_path: Path) -> None:
    pre = _source_preprocessing()
    header, rows = synthetic_churn(300, seed=3)
    keep = [i for i, h in enumerate(header) if h != "Balance"]
    path = tmp_path / "no_balance.csv"
    write_csv(path, [header[i] for i in keep] + ["Branch"], [[r[i] for i in keep] + ["x"] for r in rows])
    with pytest.raises(ConfigError, match=r"missing \['Balance'\]; not in the source \['Branch'\]") as e:
        build_datamodule({**CHURN, "path": str(path), "categorical": ["Geography", "Gender", "Branch"]}, seed=0,
                         source_preprocessing=pre)
    assert "\n" not in str(e.value)
    # the same columns in another order are laid out as the source's
    order = [header.index(h) for h in reversed(header)]
    shuffled = tmp_path / "reversed.csv"
    write_csv(shuffled, [header[i] for i in order], [[r[i] for i in order] for r in rows])
    data = build_datamodule({**CHURN, "path": str(shuffled)}, seed=0, source_preprocessing=pre)
    assert data.feature_names == pre.features


def test_a_saved_model_carries_its_preprocessing_and_runs_reapply_it(compose_cfg, tmp_path: Path) -> None:
    small = ["data.synthetic_rows=1500", "trainer.max_epochs=1"]
    run(compose_cfg("experiment=churn_pretrain", *small, out="src"))
    src_dir = tmp_path / "src" / "model"
    saved = json.loads((src_dir / "preprocessing.json").read_text())
    pre = tlexp.load_model(src_dir).preprocessing
    assert isinstance(pre, TabularPreprocessing) and saved["mean"] == pre.mean
    assert pre.features == _source_preprocessing().features and pre.mean == pytest.approx(_source_preprocessing().mean)

    transfer = ["experiment=churn_transfer", f"source.path={src_dir}", *small]
    metrics = run(compose_cfg(*transfer, out="de"))
    assert metrics["preprocessing"] == "source"
    assert load_preprocessing(tmp_path / "de" / "model").mean == pre.mean  # it travels on along the chain
    # baseline.source: the source model on German rows prepared by its own preprocessing, by hand
    header, rows = synthetic_churn(1500)
    data = build_datamodule(GERMANY, seed=0, source_preprocessing=pre)
    test_x = data.dataset("test").tensors[0]
    model = tlexp.load_model(src_dir)
    german = [r for r in rows if r[header.index("Geography")] == "Germany"]
    csv_path = tmp_path / "germany.csv"
    write_csv(csv_path, header, german)
    x_all = model.preprocessing.transform(csv_path)  # what a user does with new data
    assert x_all.shape == (len(german), len(pre.features))
    # the data module's test rows are among the user-prepared rows, identical
    rows_set = {tuple(np.round(r, 5)) for r in x_all.numpy().tolist()}
    assert all(tuple(np.round(r, 5)) in rows_set for r in test_x.numpy().tolist())
    with torch.no_grad():
        acc = float((model(test_x).argmax(1) == data.dataset("test").tensors[1]).float().mean())
    assert metrics["baseline"]["source"]["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert model.preprocessing.decode([0, 1]) == ["0", "1"]

    refit = run(compose_cfg(*transfer, "data.preprocessing=refit", out="refit"))
    assert refit["preprocessing"] == "fitted"
    mine = load_preprocessing(tmp_path / "refit" / "model")
    assert mine is not None and not np.allclose(mine.mean, pre.mean)
    german_train = build_datamodule({**GERMANY, "preprocessing": "refit"}, seed=0)
    german_train.setup()
    assert mine.mean == pytest.approx(german_train.stats["mean"])


def test_a_model_saved_without_preprocessing_loads_and_runs_fit_their_own(compose_cfg, tmp_path: Path) -> None:
    # a model written before preprocessing travelled with models: the shipped churn model without its file
    import shutil

    old = tmp_path / "churn_net_before"
    shutil.copytree(tlexp._resources.MODELS_DIR / "churn_net", old)
    (old / "preprocessing.json").unlink()
    assert tlexp.load_model(old).preprocessing is None
    cfg = compose_cfg("experiment=churn_transfer", f"source.path={old}", "data.synthetic_rows=1500",
                      "trainer.max_epochs=1", "unfreeze.epochs=0")
    assert run(cfg)["preprocessing"] == "fitted"


@pytest.mark.slow
def test_cli_names_mismatched_columns(tmp_path: Path) -> None:
    header, rows = synthetic_churn(400, seed=5)
    src = build_datamodule({**SOURCE, "synthetic_rows": 400}, seed=0)
    src.setup()
    model_dir = tmp_path / "m"
    graph = tlexp.LayerGraph.from_config({
        "format": "tlexp.layergraph/1", "inputs": [{"name": "input", "shape": [11], "dtype": "float32"}],
        "nodes": [{"name": "out", "type": "dense", "args": {"in_features": 11, "out_features": 2}, "inputs": ["input"]}],
        "outputs": ["out"]})
    tlexp.save_model(graph, model_dir, preprocessing=src.preprocessing())
    keep = [i for i, h in enumerate(header) if h != "Age"]
    path = tmp_path / "no_age.csv"
    write_csv(path, [header[i] for i in keep], [[r[i] for i in keep] for r in rows])
    res = cli_here(["experiment=churn_transfer", f"source.path={model_dir}", f"data.path={path}",
                   f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing ['Age']" in lines[0] and "data.preprocessing=source" in lines[0], res.stderr


def test_an_image_models_normalization_and_size_travel_with_it(compose_cfg, tmp_path: Path) -> None:
    from PIL import Image

    from tlexp.data.preprocessing import ImagePreprocessing
    from tlexp.errors import ShapeError
    from tlexp.sources.spec import build_spec

    for c, name in enumerate(("a", "b")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.full((20, 18 + i % 3, 3), 60 * (c + 1) + i, dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    torch.manual_seed(0)
    graph = build_spec([{"name": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 3},
                        {"name": "g", "type": "global_avg_pool"},
                        {"name": "out", "type": "dense", "out_features": 2, "activation": "softmax"}], input_shape=[3, 12, 12])
    config = {"input_size": [3, 12, 12], "interpolation": "bilinear", "mean": [0.2, 0.3, 0.4], "std": [0.5, 0.6, 0.7],
              "crop_pct": 1.0, "crop_mode": "center"}
    tlexp.save_model(graph, tmp_path / "m", preprocessing=ImagePreprocessing(data_config=config, classes=["a", "b"]))
    base = ["experiment=none", "source=saved", f"source.path={tmp_path / 'm'}", "data=image_folder",
            f"data.path={tmp_path / 'imgs'}", "freeze=featurize", "freeze.up_to=c", "trainer.max_epochs=1",
            "data.val_fraction=0.25", "data.test_fraction=0.25"]
    metrics = run(compose_cfg(*base))
    assert metrics["preprocessing"] == "source"
    saved = load_preprocessing(tmp_path / "run" / "model")
    assert isinstance(saved, ImagePreprocessing) and saved.data_config == config and saved.classes == ["a", "b"]
    # refit: the source's size and normalization are not used (timm's defaults, 224 pixels, do not fit this model)
    with pytest.raises(ShapeError, match=r"\[3, 224, 224\]"):
        run(compose_cfg(*base, "data.preprocessing=refit", out="refit"))
