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
    ("resnet50", 25_636_712),  # = _resnet50_params(): ResNet50.java's blocks, biased convolutions
    ("squeezenet", 1_235_496),  # = _squeezenet_params(): the fire modules, conv10 on drop9
])
def test_zoo_parameter_counts_equal_dl4j_s(name: str, expected: int) -> None:
    g = load_zoo(name)
    assert g.meta["dl4j_num_params"] == expected
    buffers = sum(b.numel() for n, b in g.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert sum(p.numel() for p in g.parameters()) + buffers == expected
    assert not g.training


def _conv(k: int, n_in: int, n_out: int) -> int:
    return k * k * n_in * n_out + n_out  # DL4J ConvolutionLayer: hasBias defaults to true


def _resnet50_params() -> int:
    """DL4J's ResNet50.java counted by hand: stem conv 7x7 + batch norm (4 params per channel,
    mean/var included), convBlock = 1x1, 3x3, 1x1 (+ 1x1 shortcut) each with batch norm,
    identityBlock without the shortcut; stages 3/4/6/3 blocks; OutputLayer 2048 -> 1000."""
    total, n = _conv(7, 3, 64) + 4 * 64, 64
    for f0, f1, f2, blocks in [(64, 64, 256, 3), (128, 128, 512, 4), (256, 256, 1024, 6), (512, 512, 2048, 3)]:
        for j in range(blocks):
            total += _conv(1, n, f0) + _conv(3, f0, f1) + _conv(1, f1, f2) + 4 * (f0 + f1 + f2)
            if j == 0:
                total += _conv(1, n, f2) + 4 * f2
            n = f2
    return total + 2048 * 1000 + 1000


def _squeezenet_params() -> int:
    """SqueezeNet.java's fire modules (squeeze 1x1, expand 1x1 and 3x3, merged) after a 3x3/64 stem,
    and conv10 1x1 -> 1000 on the 512 merged channels. (The Java source wires conv10 to "input"
    and names one layer "exp1x1" without its underscore, a graph that cannot build; the pretrained
    squeezenet_dl4j_inference.v2.zip -- SqueezeNet 1.1 from Keras -- has conv10 on drop9.)"""
    total, n = _conv(3, 3, 64), 64
    for sq, ex in [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]:
        total += _conv(1, n, sq) + _conv(1, sq, ex) + _conv(3, sq, ex)
        n = 2 * ex
    return total + _conv(1, 512, 1000)


def test_resnet50_and_squeezenet_counts_follow_dl4j_s_zoo_sources() -> None:
    assert _resnet50_params() == 25_636_712
    assert _squeezenet_params() == 1_235_496
    r = load_zoo("resnet50")
    # ResNet50.java's "avgpool" is a 3x3 MAX subsampling (default stride 2): 4x4 -> 1x1 at 224
    assert r.node("avgpool").args["kind"] == "max"
    assert r.trace_shapes(where="zoo")["avgpool"][0] == (2048, 1, 1)
    s = load_zoo("squeezenet")
    assert s.node("conv10").inputs == ["drop9"]
    assert s.trace_shapes(where="zoo")["loss"][0] == (1000,)


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


@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_darknet19_backbone_example_on_an_image_folder(compose_cfg, tmp_path: Path) -> None:
    from tlexp.data.demo_images import write_digit_images
    from tlexp.train import run

    images = write_digit_images(tmp_path / "imgs", size=32, per_class=6, classes=(0, 1))
    cfg = compose_cfg("experiment=dl4j_darknet19_backbone", f"data.path={images}", "trainer.max_epochs=1",
                      "source.input_size=[3,32,32]")
    metrics = run(cfg)
    assert metrics["freeze"]["frozen"][-1] == "activation_18"
    assert "accuracy" in json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
