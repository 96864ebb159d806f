"""source=dl4j_zoo: DL4J's zoo architectures with DL4J's names and parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tlexp.errors import SourceError
from tlexp.sources.dl4j._zoo import Yolo2Output, load_zoo


def _darknet_params(spec: list[tuple[int, int, int]]) -> int:
    # DarknetHelper block: conv k x k without bias + batch norm (gamma, beta, mean, var: DL4J params)
    return sum(k * k * a * b + 4 * b for k, a, b in spec)


DARKNET19 = [(3, 3, 32), (3, 32, 64), (3, 64, 128), (1, 128, 64), (3, 64, 128), (3, 128, 256), (1, 256, 128),
             (3, 128, 256), (3, 256, 512), (1, 512, 256), (3, 256, 512), (1, 512, 256), (3, 256, 512),
             (3, 512, 1024), (1, 1024, 512), (3, 512, 1024), (1, 1024, 512), (3, 512, 1024)]
TINY = [(3, 3, 16), (3, 16, 32), (3, 32, 64), (3, 64, 128), (3, 128, 256), (3, 256, 512), (3, 512, 1024),
        (3, 1024, 1024)]


@pytest.mark.parametrize(("name", "expected"), [
    ("vgg16", 138_357_544),  # DL4J's published VGG16 count (1000 classes)
    ("darknet19", _darknet_params(DARKNET19) + 1024 * 1000 + 1000),  # + convolution2d_19 (with bias)
    ("tinyyolo", _darknet_params(TINY) + 1024 * 125 + 125),  # + convolution2d_9: 5 boxes * (5 + 20 VOC classes)
    ("resnet50", 25_636_712),
    ("squeezenet", 1_235_496),
])
def test_zoo_parameter_counts_equal_dl4j_s(name: str, expected: int) -> None:
    g = load_zoo(name)
    assert g.meta["dl4j_num_params"] == expected
    buffers = sum(b.numel() for n, b in g.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert sum(p.numel() for p in g.parameters()) + buffers == expected
    assert not g.training


def test_zoo_layer_names_are_dl4j_s() -> None:
    names = [n.name for n in load_zoo("darknet19")._nodes]
    assert names[:4] == ["convolution2d_1", "batchnormalization_1", "activation_1", "maxpooling2d_1"]
    assert names[-4:] == ["convolution2d_19", "globalpooling", "softmax", "loss"]
    tiny = load_zoo("tinyyolo")
    assert [n.name for n in tiny._nodes][-3:] == ["activation_8", "convolution2d_9", "outputs"]
    assert "maxpooling2d_6" in [n.name for n in tiny._nodes]
    r = [n.name for n in load_zoo("resnet50")._nodes]
    assert r[:5] == ["stem-zero", "stem-cnn1", "stem-batch1", "stem-act1", "stem-maxpool1"]
    assert {"res2a_branch2a", "short2a_branch", "res5c_branch", "avgpool", "output"} <= set(r)


def test_tinyyolo_output_is_dl4j_s_activated_anchor_grid() -> None:
    priors = [[1.08, 1.19], [3.42, 4.41]]
    layer = Yolo2Output(priors)
    x = torch.randn(2, 2 * (5 + 3), 4, 4)
    y = layer(x)
    x5, y5 = x.reshape(2, 2, 8, 4, 4), y.reshape(2, 2, 8, 4, 4)
    torch.testing.assert_close(y5[:, :, :2], torch.sigmoid(x5[:, :, :2]))
    torch.testing.assert_close(y5[:, 1, 2], 3.42 * torch.exp(x5[:, 1, 2]))
    torch.testing.assert_close(y5[:, 0, 3], 1.19 * torch.exp(x5[:, 0, 3]))
    torch.testing.assert_close(y5[:, :, 4], torch.sigmoid(x5[:, :, 4]))
    torch.testing.assert_close(y5[:, :, 5:].sum(2), torch.ones(2, 2, 4, 4))
    g = load_zoo("tinyyolo", input_size=[3, 64, 64])
    with torch.no_grad():
        assert g(torch.rand(1, 3, 64, 64)).shape == (1, 125, 2, 2)


@pytest.mark.parametrize(("name", "file"), [("tinyyolo", "tiny-yolo-voc_dl4j_inference.v2.zip"),
                                            ("vgg16", "vgg16_dl4j_inference.zip")])
def test_pretrained_offline_names_the_file_dl4j_fetches(tmp_path: Path, name: str, file: str) -> None:
    with pytest.raises(SourceError, match=file.replace(".", r"\.")):
        load_zoo(name, init="pretrained")
    with pytest.raises(SourceError, match="does not exist"):
        load_zoo(name, path=tmp_path / "nope.zip")


def test_darknet19_backbone_example_on_an_image_folder(compose_cfg, tmp_path: Path) -> None:
    from tlexp.data.demo_images import write_digit_images
    from tlexp.train import run

    images = write_digit_images(tmp_path / "imgs", size=32, per_class=6, classes=(0, 1))
    cfg = compose_cfg("experiment=dl4j_darknet19_backbone", f"data.path={images}", "trainer.max_epochs=1",
                      "source.input_size=[3,32,32]")
    metrics = run(cfg)
    assert metrics["freeze"]["frozen"][-1] == "activation_18"
    assert "accuracy" in json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
