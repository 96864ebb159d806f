"""Zoo models through the whole app: image folders, featurize vs in_model, augmentation, inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tlexp
from tests.conftest import cli_here
from tlexp.data.demo_images import write_digit_images
from tlexp.errors import ConfigError
from tlexp.train import run

ZOO = ["experiment=none", "source=zoo_tiny", "source.input_size=[3,32,32]", "data=image_folder", "surgery=replace_output"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_digit_images(tmp_path_factory.mktemp("digits_png"), size=32, per_class=12, classes=[0, 1, 2])


@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_zoo_featurize_and_in_model_train_the_same_weights(compose_cfg, tmp_path: Path, images: Path) -> None:
    metrics = {}
    for mode in ("in_model", "featurize"):
        cfg = compose_cfg(*ZOO, f"data.path={images}", "freeze.up_to=layer3", f"freeze.mode={mode}",
                          "trainer.max_epochs=2", "data.batch_size=8", out=mode)
        metrics[mode] = run(cfg)
    a = load_file(str(tmp_path / "in_model" / "model" / "weights.safetensors"))
    b = load_file(str(tmp_path / "featurize" / "model" / "weights.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert metrics["in_model"]["test"]["accuracy"] == pytest.approx(metrics["featurize"]["test"]["accuracy"], abs=1e-6)
    fz = metrics["featurize"]
    # a stage name stands for its last block: the whole stage is frozen, nothing after it
    assert fz["freeze"]["boundary"] == ["layer3.0"] and "layer4.0" not in fz["freeze"]["frozen"]
    assert fz["num_classes"] == 3 and fz["featurize"]["key"]
    # the saved whole model reloads (timm blocks rebuilt by name, weights from safetensors)
    model = tlexp.load_model(tmp_path / "featurize" / "model")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_random_augmentation_is_refused_unless_copies_are_stored(compose_cfg, tmp_path: Path, images: Path) -> None:
    args = [*ZOO, f"data.path={images}", "freeze.up_to=layer3", "data.augment=true", "trainer.max_epochs=1"]
    with pytest.raises(ConfigError, match="featurize.augment_copies"):
        run(compose_cfg(*args, out="refused"))
    metrics = run(compose_cfg(*args, "featurize.augment_copies=2", out="copies"))
    assert metrics["featurize"]["cache_hit"] is False
    assert metrics["samples"]["train"] > 0


@pytest.mark.slow
def test_zoo_run_end_to_end_from_the_command_line(tmp_path: Path, images: Path) -> None:
    run_dir = tmp_path / "run"
    res = cli_here([*ZOO, f"data.path={images}", "freeze.up_to=layer2", "trainer.max_epochs=1",
                    "featurize.dtype=float16", f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["featurize"]["key"] and "accuracy" in m["test"]
    assert "RANDOM WEIGHTS" in res.stdout  # zoo_tiny loads nothing pretrained: the table says so
    # float16 halves the cache: 1 byte per value would be wrong, 2 is right
    cached = sorted((tmp_path / "cache").glob("*-train.h5"))
    assert len(cached) == 1


@pytest.mark.slow
def test_inspect_lists_resnet18_blocks_with_feature_sizes(tmp_path: Path) -> None:
    res = cli_here(["source=zoo", "source.name=resnet18", "source.input_size=[3,64,64]"], cwd=tmp_path,
                   script="tlexp-inspect", env={"COLUMNS": "220"})
    assert res.returncode == 0, res.stderr[-2000:]
    for block in ("conv1", "layer1.0", "layer3.1", "layer4.1", "fc"):
        assert block in res.stdout
    assert "[512, 2, 2]" in res.stdout  # layer4 at 64x64
    assert "11,689,512 parameters" in res.stdout  # resnet18
