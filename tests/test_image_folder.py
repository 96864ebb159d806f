"""data=image_folder: class sub-folders of image files, split by seed, transformed as timm does."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tlexp.data import build_datamodule
from tlexp.data.image_folder import ImageFolderDataModule
from tlexp.errors import ConfigError, SourceError

CLASSES = ("cat", "dog", "eel")
SMALL = {"input_size": [3, 16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 1.0,
         "interpolation": "bilinear", "crop_mode": "center"}


def _write(folder, classes=CLASSES, per_class=10, start=0):
    """Uniform-colour PNGs of varied sizes; class c has grey level 40 * (c + 1)."""
    for c, name in enumerate(classes):
        os.makedirs(folder / name, exist_ok=True)
        for i in range(start, start + per_class):
            img = np.full((18 + i % 5, 20 + i % 3, 3), 40 * (c + 1), dtype=np.uint8)
            Image.fromarray(img).save(folder / name / f"{i:03d}.png")
    return folder


@pytest.fixture
def folder(tmp_path):
    root = _write(tmp_path / "imgs")
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored, as ImageFolder does
    return root


def _files(dm, split):
    return [os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p) for p, _ in dm._split_samples[split]]


def test_splits_are_seeded_stratified_and_disjoint(folder):
    dm = ImageFolderDataModule(str(folder), data_config=SMALL)
    assert dm.num_classes == 3 and dm.class_names == list(CLASSES)
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 30 and sizes["val"] >= 3 and sizes["test"] >= 3
    files = {s: set(_files(dm, s)) for s in sizes}
    assert not (files["train"] & files["val"]) and not (files["train"] & files["test"]) and not (files["val"] & files["test"])
    for s in ("val", "test"):  # every class in every split
        assert set(dm.labels(s).tolist()) == {0, 1, 2}
    same = ImageFolderDataModule(str(folder), data_config=SMALL, batch_size=7, seed=5)
    assert all(_files(same, s) == _files(dm, s) for s in sizes)
    other = ImageFolderDataModule(str(folder), data_config=SMALL, split_seed=1)
    assert _files(other, "test") != _files(dm, "test")


def test_items_are_timm_transformed_tensors_with_their_labels(folder):
    dm = ImageFolderDataModule(str(folder), data_config=SMALL, batch_size=4)
    x, y = dm.dataset("val")[0]
    assert x.shape == (3, 16, 16) and dm.input_shape == (3, 16, 16)
    grey = 40 * (y + 1) / 255
    assert torch.allclose(x, torch.full_like(x, (grey - 0.5) / 0.25), atol=1e-5)
    assert dm.labels("train").tolist() == [y for _, y in (dm.dataset("train")[i] for i in range(len(dm.dataset("train"))))]
    xb, yb = next(iter(dm.val_dataloader()))
    assert xb.shape == (4, 3, 16, 16) and yb.dtype == torch.long


def test_identity_follows_the_files_and_the_transform(folder):
    dm = ImageFolderDataModule(str(folder), data_config=SMALL)
    ident = dm.identity()
    assert json.loads(json.dumps(ident)) == ident
    assert ident["path"] == str(folder.resolve()) and ident["num_files"] == 30
    assert ident["transform"]["data_config"]["input_size"] == [3, 16, 16]
    assert ImageFolderDataModule(str(folder), data_config=SMALL, batch_size=3, seed=9).identity() == ident
    changed_tf = ImageFolderDataModule(str(folder), data_config={**SMALL, "input_size": [3, 24, 24]}).identity()
    assert changed_tf["files"] == ident["files"] and changed_tf != ident
    _write(folder, classes=("dog",), per_class=1, start=50)  # a file added
    added = ImageFolderDataModule(str(folder), data_config=SMALL).identity()
    assert added["files"] != ident["files"] and added["num_files"] == 31
    path = folder / "cat" / "000.png"
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(path)  # a file rewritten
    os.utime(path, ns=(1, 1))
    rewritten = ImageFolderDataModule(str(folder), data_config=SMALL).identity()
    assert rewritten["files"] not in (ident["files"], added["files"])


def test_pre_split_folders(tmp_path):
    _write(tmp_path / "train", per_class=6)
    _write(tmp_path / "test", per_class=2)
    dm = ImageFolderDataModule(str(tmp_path), data_config=SMALL, split_dirs={"train": "train", "test": "test"},
                               val_fraction=0.3)
    assert len(dm.dataset("test")) == 6 and all("/test/" in p for p, _ in dm._split_samples["test"])
    # val is carved from the training folder
    assert len(dm.dataset("val")) == 6 and len(dm.dataset("train")) == 12
    assert all("/train/" in p for p, _ in dm._split_samples["val"])
    _write(tmp_path / "val", classes=("cat", "yak"), per_class=1)
    with pytest.raises(SourceError, match=r"data.split_dirs.val: class folder\(s\) \['yak'\]"):
        ImageFolderDataModule(str(tmp_path), data_config=SMALL, split_dirs={"train": "train", "val": "val"})


def test_augmentation_is_random_and_only_on_train(folder):
    plain = ImageFolderDataModule(str(folder), data_config=SMALL)
    assert plain.has_random_augment is False and plain.augmented_dataset("train") is plain.dataset("train")
    dm = ImageFolderDataModule(str(folder), data_config=SMALL, augment=True)
    assert dm.has_random_augment is True
    assert dm.augmented_dataset("val") is dm.dataset("val")
    ds = dm.augmented_dataset("train")
    torch.manual_seed(0)
    draws = [ds[0][0] for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(dm.dataset("train")[0][0], dm.dataset("train")[0][0])
    assert dm.identity()["augment"] and plain.identity()["augment"] is None


def test_max_per_class_and_grayscale(folder):
    dm = ImageFolderDataModule(str(folder), max_per_class=4, val_fraction=0.25, test_fraction=0.25,
                               data_config={**SMALL, "input_size": [1, 16, 16], "mean": [0.5], "std": [0.25]})
    assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) == 12
    assert dm.dataset("train")[0][0].shape == (1, 16, 16)


def test_errors_are_one_line(tmp_path, folder):
    cases = [
        (SourceError, "data.path: .* does not exist", dict(path=str(tmp_path / "nope"))),
        (SourceError, "data.path: .* has no class sub-folders", dict(path=str(tmp_path / "empty"))),
        (ConfigError, "data.val_fraction", dict(path=str(folder), val_fraction=1.5)),
        (ConfigError, "data.val_fraction \\+ data.test_fraction", dict(path=str(folder), val_fraction=0.5, test_fraction=0.5)),
        (ConfigError, "data.split_dirs.valid", dict(path=str(folder), split_dirs={"train": "cat", "valid": "x"})),
        (ConfigError, "data.data_config.mean", dict(path=str(folder), data_config={"mean": [0.5]})),
        (SourceError, "2 images are too few for data.val_fraction", dict(path=str(_write(tmp_path / "two", ("a", "b"), 1)))),
    ]
    (tmp_path / "empty").mkdir()
    for exc, pattern, kwargs in cases:
        with pytest.raises(exc, match=pattern) as err:
            ImageFolderDataModule(**kwargs)
        assert "\n" not in str(err.value)
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(SourceError, match="Found no valid file"):
        ImageFolderDataModule(str(tmp_path / "hollow"))


def test_with_a_zoo_model_end_to_end(folder):
    from tlexp.sources.zoo import load_zoo

    torch.manual_seed(0)
    graph = load_zoo("test_resnet", num_classes=3, input_size=[3, 32, 32]).eval()
    dm = build_datamodule({"type": "image_folder", "path": str(folder), "batch_size": 5}, seed=0,
                          data_config=graph.meta["data_config"])
    assert dm.input_shape == (3, 32, 32)
    assert dm.identity()["transform"]["data_config"] == graph.meta["data_config"]
    x, y = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        assert graph(x).shape == (5, 3)
