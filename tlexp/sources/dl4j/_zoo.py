"""``source=dl4j_zoo``: Deeplearning4j's zoo architectures, as DL4J's zoo classes define them.

Each model is written here as the ComputationGraph configuration DL4J's zoo class builds (same
vertex names, order, kernel sizes, convolution modes, biases), in DL4J 1.0's JSON layout, and
built by the same importer that reads DL4J files. ``source.path`` loads DL4J's pretrained zoo
zip instead (the file DL4J's ``initPretrained()`` downloads; tlexp never downloads it).

- vgg16 (VGG16, ComputationGraph version): vertices ``0`` … ``20``; 138,357,544 parameters with
  1000 classes. DL4J's pretrained ImageNet zip was imported from Keras and uses Keras's names
  (``block1_conv1`` … ``fc1``, ``fc2``, ``predictions``).
- darknet19 (Darknet19 + DarknetHelper): ``convolution2d_i``, ``batchnormalization_i``,
  ``activation_i`` (leaky ReLU 0.1), ``maxpooling2d_i``; then ``convolution2d_19``,
  ``globalpooling``, ``softmax``, ``loss``.
- tinyyolo (TinyYOLO): DarknetHelper blocks 1-8, ``convolution2d_9`` (nBoxes * (5 + classes)
  filters), ``outputs`` (Yolo2OutputLayer: what DL4J's ``output()`` returns).
- resnet50 (ResNet50): ``stem-*``, ``res2a_branch2a`` …, ``short2a_branch``, ``avgpool``, ``output``.
- squeezenet (SqueezeNet): ``conv1``, ``fire2_sq1x1`` …, ``conv10``, ``avg_pool``, ``softmax``, ``loss``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlexp.errors import ConfigError, SourceError
from tlexp.graph import GraphInput, LayerGraph, Node, Role, build_layer
from tlexp.graph._registry import register_layer

__all__ = ["ZOO", "zoo_config", "load_zoo", "yolo2_output_node", "PRETRAINED_FILES"]

LAYER_CLASS = "org.deeplearning4j.nn.conf.layers."
ACTIVATION_CLASS = "org.nd4j.linalg.activations.impl.Activation"

#: the file DL4J's zoo downloads for the pretrained weights (DL4JResources base URL + models/…)
PRETRAINED_FILES = {
    "vgg16": "vgg16_dl4j_inference.zip",
    "darknet19": "darknet19_dl4j_inference.v2.zip",
    "tinyyolo": "tiny-yolo-voc_dl4j_inference.v2.zip",
    "resnet50": "resnet50_dl4j_inference.v3.zip",
    "squeezenet": "squeezenet_dl4j_inference.v2.zip",
}
DL4J_MODELS_URL = "https://dl4jdata.blob.core.windows.net/models/"

DEFAULTS = {  # (input shape, classes) of DL4J's pretrained file
    "vgg16": ((3, 224, 224), 1000),
    "darknet19": ((3, 224, 224), 1000),
    "tinyyolo": ((3, 416, 416), 20),
    "resnet50": ((3, 224, 224), 1000),
    "squeezenet": ((3, 227, 227), 1000),
}
TINY_YOLO_PRIORS = [[1.08, 1.19], [3.42, 4.41], [6.63, 11.38], [9.42, 5.11], [16.62, 10.52]]


class _GraphBuilder:
    """A tiny GraphBuilder writing DL4J 1.0 JSON."""

    def __init__(self) -> None:
        self.vertices: dict[str, Any] = {}
        self.inputs: dict[str, list[str]] = {}

    def layer(self, name: str, layer: dict[str, Any], *inputs: str) -> _GraphBuilder:
        layer = dict(layer, layerName=name)
        self.vertices[name] = {"@class": "org.deeplearning4j.nn.conf.graph.LayerVertex",
                               "layerConf": {"layer": layer}, "preProcessor": None}
        self.inputs[name] = list(inputs)
        return self

    def vertex(self, name: str, cls: str, *inputs: str, **fields: Any) -> _GraphBuilder:
        self.vertices[name] = {"@class": "org.deeplearning4j.nn.conf.graph." + cls, **fields}
        self.inputs[name] = list(inputs)
        return self

    def conf(self, outputs: list[str]) -> dict[str, Any]:
        return {"networkInputs": ["input"], "networkOutputs": outputs, "vertices": self.vertices,
                "vertexInputs": self.inputs}


def _act(name: str, **f: Any) -> dict[str, Any]:
    return {"@class": ACTIVATION_CLASS + name, **f}


def conv(n_in: int, n_out: int, k: int, s: int = 1, p: int = 0, mode: str = "Truncate", bias: bool = True,
         act: str = "Identity", **act_fields: Any) -> dict[str, Any]:
    return {"@class": LAYER_CLASS + "ConvolutionLayer", "nin": n_in, "nout": n_out, "kernelSize": [k, k], "stride": [s, s],
            "padding": [p, p], "dilation": [1, 1], "convolutionMode": mode, "hasBias": bias,
            "activationFn": _act(act, **act_fields)}


def batch_norm(n: int) -> dict[str, Any]:
    return {"@class": LAYER_CLASS + "BatchNormalization", "nin": n, "nout": n, "eps": 1e-5, "lockGammaBeta": False,
            "activationFn": _act("Identity")}


def act_layer(name: str, **f: Any) -> dict[str, Any]:
    return {"@class": LAYER_CLASS + "ActivationLayer", "activationFn": _act(name, **f)}


def pool(k: int, s: int, mode: str = "Truncate", kind: str = "MAX") -> dict[str, Any]:
    return {"@class": LAYER_CLASS + "SubsamplingLayer", "kernelSize": [k, k], "stride": [s, s], "padding": [0, 0],
            "dilation": [1, 1], "convolutionMode": mode, "poolingType": kind}


def dense(n_in: int, n_out: int, act: str, retain: float | None = None, cls: str = "DenseLayer") -> dict[str, Any]:
    d: dict[str, Any] = {"@class": LAYER_CLASS + cls, "nin": n_in, "nout": n_out, "hasBias": True, "activationFn": _act(act)}
    if retain is not None:
        d["idropout"] = {"@class": "org.deeplearning4j.nn.conf.dropout.Dropout", "p": retain}
    return d


def _darknet_block(g: _GraphBuilder, i: int, k: int, n_in: int, n_out: int, pool_size: int, pool_stride: int | None = None,
                   src: str | None = None) -> None:
    if src is None:
        for cand in (f"maxpooling2d_{i - 1}", f"activation_{i - 1}", f"concatenate_{i - 1}", "input"):
            if cand in g.vertices or cand == "input":
                src = cand
                break
    g.layer(f"convolution2d_{i}", conv(n_in, n_out, k, mode="Same", bias=False), src)  # type: ignore[arg-type]
    g.layer(f"batchnormalization_{i}", batch_norm(n_out), f"convolution2d_{i}")
    g.layer(f"activation_{i}", act_layer("LReLU", alpha=0.1), f"batchnormalization_{i}")
    if pool_size > 0:
        stride = pool_size if pool_stride is None else pool_stride
        g.layer(f"maxpooling2d_{i}", pool(pool_size, stride, mode="Same"), f"activation_{i}")


def _vgg16(c: int, classes: int, hw: tuple[int, int] = (224, 224)) -> dict[str, Any]:
    g = _GraphBuilder()
    prev, n_in, idx = "input", c, 0
    for n, reps in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]:
        for _ in range(reps):
            g.layer(str(idx), conv(n_in, n, 3, 1, 1, act="ReLU"), prev)
            prev, n_in, idx = str(idx), n, idx + 1
        g.layer(str(idx), pool(2, 2), prev)
        prev, idx = str(idx), idx + 1
    g.layer("18", dense(512 * (hw[0] // 32) * (hw[1] // 32), 4096, "ReLU", 0.5), "17")
    g.layer("19", dense(4096, 4096, "ReLU", 0.5), "18")
    g.layer("20", dense(4096, classes, "Softmax", cls="OutputLayer"), "19")
    return g.conf(["20"])


def _darknet19(c: int, classes: int) -> dict[str, Any]:
    g = _GraphBuilder()
    spec = [(3, c, 32, 2), (3, 32, 64, 2), (3, 64, 128, 0), (1, 128, 64, 0), (3, 64, 128, 2), (3, 128, 256, 0),
            (1, 256, 128, 0), (3, 128, 256, 2), (3, 256, 512, 0), (1, 512, 256, 0), (3, 256, 512, 0),
            (1, 512, 256, 0), (3, 256, 512, 2), (3, 512, 1024, 0), (1, 1024, 512, 0), (3, 512, 1024, 0),
            (1, 1024, 512, 0), (3, 512, 1024, 0)]
    for i, (k, a, b, p) in enumerate(spec, start=1):
        _darknet_block(g, i, k, a, b, p)
    g.layer("convolution2d_19", conv(1024, classes, 1, mode="Same"), "activation_18")
    g.layer("globalpooling", {"@class": LAYER_CLASS + "GlobalPoolingLayer", "poolingType": "AVG", "collapseDimensions": True},
            "convolution2d_19")
    g.layer("softmax", act_layer("Softmax"), "globalpooling")
    g.layer("loss", {"@class": LAYER_CLASS + "LossLayer", "activationFn": _act("Identity")}, "softmax")
    return g.conf(["loss"])


def _tinyyolo(c: int, classes: int, n_boxes: int = 5, priors: list[list[float]] | None = None) -> dict[str, Any]:
    g = _GraphBuilder()
    spec = [(3, c, 16, 2, 2), (3, 16, 32, 2, 2), (3, 32, 64, 2, 2), (3, 64, 128, 2, 2), (3, 128, 256, 2, 2),
            (3, 256, 512, 2, 1), (3, 512, 1024, 0, 0), (3, 1024, 1024, 0, 0)]
    for i, (k, a, b, p, s) in enumerate(spec, start=1):
        _darknet_block(g, i, k, a, b, p, s)
    g.layer("convolution2d_9", conv(1024, n_boxes * (5 + classes), 1, mode="Same"), "activation_8")
    g.layer("outputs", {"@class": LAYER_CLASS + "objdetect.Yolo2OutputLayer", "boundingBoxes": priors or TINY_YOLO_PRIORS},
            "convolution2d_9")
    return g.conf(["outputs"])


def _resnet50(c: int, classes: int) -> dict[str, Any]:
    g = _GraphBuilder()
    g.layer("stem-zero", {"@class": LAYER_CLASS + "ZeroPaddingLayer", "padding": [3, 3, 3, 3]}, "input")
    g.layer("stem-cnn1", conv(c, 64, 7, 2), "stem-zero")
    g.layer("stem-batch1", batch_norm(64), "stem-cnn1")
    g.layer("stem-act1", act_layer("ReLU"), "stem-batch1")
    g.layer("stem-maxpool1", pool(3, 2), "stem-act1")
    n_in = 64

    def block(stage: str, blk: str, filters: tuple[int, int, int], src: str, stride: int | None) -> str:
        nonlocal n_in
        cn, bn_, an, sn = (f"res{stage}{blk}_branch", f"bn{stage}{blk}_branch", f"act{stage}{blk}_branch",
                           f"short{stage}{blk}_branch")
        f0, f1, f2 = filters
        g.layer(cn + "2a", conv(n_in, f0, 1, stride or 1), src)
        g.layer(bn_ + "2a", batch_norm(f0), cn + "2a")
        g.layer(an + "2a", act_layer("ReLU"), bn_ + "2a")
        g.layer(cn + "2b", conv(f0, f1, 3, mode="Same"), an + "2a")
        g.layer(bn_ + "2b", batch_norm(f1), cn + "2b")
        g.layer(an + "2b", act_layer("ReLU"), bn_ + "2b")
        g.layer(cn + "2c", conv(f1, f2, 1), an + "2b")
        g.layer(bn_ + "2c", batch_norm(f2), cn + "2c")
        if stride is not None:
            g.layer(cn + "1", conv(n_in, f2, 1, stride), src)
            g.layer(bn_ + "1", batch_norm(f2), cn + "1")
            g.vertex(sn, "ElementWiseVertex", bn_ + "2c", bn_ + "1", op="Add")
        else:
            g.vertex(sn, "ElementWiseVertex", bn_ + "2c", src, op="Add")
        g.layer(cn, act_layer("ReLU"), sn)
        n_in = f2
        return cn

    src = "stem-maxpool1"
    for stage, blocks, filters, stride in [("2", "abc", (64, 64, 256), 2), ("3", "abcd", (128, 128, 512), 2),
                                           ("4", "abcdef", (256, 256, 1024), 2), ("5", "abc", (512, 512, 2048), 2)]:
        for j, blk in enumerate(blocks):
            src = block(stage, blk, filters, src, stride if j == 0 else None)
    g.layer("avgpool", pool(3, 2), src)
    # DL4J infers nIn from the input type: 224x224 leaves 1x1 after "avgpool"
    g.layer("output", dense(2048, classes, "Softmax", cls="OutputLayer"), "avgpool")
    return g.conf(["output"])


def _squeezenet(c: int, classes: int) -> dict[str, Any]:
    g = _GraphBuilder()
    g.layer("conv1", conv(c, 64, 3, 2), "input")
    g.layer("conv1_act", act_layer("ReLU"), "conv1")
    g.layer("pool1", pool(3, 2), "conv1_act")
    n_in = 64

    def fire(i: int, squeeze: int, expand: int, src: str) -> str:
        nonlocal n_in
        p = f"fire{i}"
        g.layer(p + "_sq1x1", conv(n_in, squeeze, 1), src)
        g.layer(p + "_relu_sq1x1", act_layer("ReLU"), p + "_sq1x1")
        g.layer(p + "_exp1x1", conv(squeeze, expand, 1), p + "_relu_sq1x1")
        g.layer(p + "_relu_exp1x1", act_layer("ReLU"), p + "_exp1x1")
        g.layer(p + "_exp3x3", conv(squeeze, expand, 3), p + "_relu_sq1x1")
        g.layer(p + "_relu_exp3x3", act_layer("ReLU"), p + "_exp3x3")
        # DL4J's Truncate 3x3 expand is 2 pixels smaller than the 1x1 one; its pretrained file crops
        # nothing, so the merge below needs equal sizes: DL4J's own model pads the 3x3 ("Same")
        g.vertices[p + "_exp3x3"]["layerConf"]["layer"]["convolutionMode"] = "Same"
        g.vertex(p, "MergeVertex", p + "_relu_exp1x1", p + "_relu_exp3x3")
        n_in = 2 * expand
        return p

    src = fire(2, 16, 64, "pool1")
    src = fire(3, 16, 64, src)
    g.layer("pool3", pool(3, 2), src)
    src = fire(4, 32, 128, "pool3")
    src = fire(5, 32, 128, src)
    g.layer("pool5", pool(3, 2), src)
    src = fire(6, 48, 192, "pool5")
    src = fire(7, 48, 192, src)
    src = fire(8, 64, 256, src)
    src = fire(9, 64, 256, src)
    g.layer("drop9", {"@class": LAYER_CLASS + "DropoutLayer", "idropout": {"@class": "org.deeplearning4j.nn.conf.dropout.Dropout",
                                                                 "p": 0.5}}, src)
    g.layer("conv10", conv(n_in, classes, 1), "drop9")
    g.layer("conv10_act", act_layer("ReLU"), "conv10")
    g.layer("avg_pool", {"@class": LAYER_CLASS + "GlobalPoolingLayer", "poolingType": "AVG", "collapseDimensions": True},
            "conv10_act")
    g.layer("softmax", act_layer("Softmax"), "avg_pool")
    g.layer("loss", {"@class": LAYER_CLASS + "LossLayer", "activationFn": _act("Identity")}, "softmax")
    return g.conf(["loss"])


ZOO = {"vgg16": _vgg16, "darknet19": _darknet19, "tinyyolo": _tinyyolo, "resnet50": _resnet50,
       "squeezenet": _squeezenet}


def zoo_config(name: str, num_classes: int | None = None, input_size: list[int] | None = None) -> dict[str, Any]:
    """The DL4J ComputationGraph configuration of zoo model ``name``."""
    if name not in ZOO:
        raise ConfigError(f"source.name: {name!r} is not a DL4J zoo model; valid: {', '.join(ZOO)}")
    shape, classes = DEFAULTS[name]
    shape = tuple(input_size or shape)
    if name == "vgg16":
        return _vgg16(shape[0], num_classes or classes, (shape[1], shape[2]))
    return ZOO[name](shape[0], num_classes or classes)


def load_zoo(name: str, path: str | Path | None = None, num_classes: int | None = None,
             init: str = "random", input_size: list[int] | None = None) -> LayerGraph:
    """DL4J zoo model ``name``: random init, or DL4J's pretrained zip from ``path``."""
    from tlexp.sources.dl4j import _assign, build_graph, load_dl4j

    if name not in ZOO:
        raise ConfigError(f"source.name: {name!r} is not a DL4J zoo model; valid: {', '.join(ZOO)}")
    fname = PRETRAINED_FILES[name]
    if path is not None or init == "pretrained":
        if path is None or not Path(path).is_file():
            where = f"{path} does not exist" if path is not None else "source.path is not set"
            raise SourceError(
                f"source.path: {where}; DL4J's zoo loads pretrained {name} from {fname} "
                f"({DL4J_MODELS_URL}{fname}): download it and set source.path=FILE (tlexp never downloads)"
            )
        return load_dl4j(path)
    if input_size is not None and (len(input_size) != 3 or not all(isinstance(d, int) and d > 0 for d in input_size)):
        raise ConfigError(f"source.input_size: {input_size!r} is not [channels, height, width]")
    conf = zoo_config(name, num_classes, input_size)
    graph, built, _ = build_graph(conf, f"dl4j zoo {name}")
    shape = tuple(input_size or DEFAULTS[name][0])
    meta = {"source": "dl4j_zoo", "name": name, "dl4j_num_params": sum(b.n_params for b in built),
            "data_config": data_config(name, list(shape))}
    out = LayerGraph([GraphInput("input", shape)], graph.nodes, graph.outputs, meta=meta)
    del _assign
    out.eval()
    return out


def data_config(name: str, shape: list[int] | None = None) -> dict[str, Any]:
    """How DL4J's zoo feeds images to ``name``: RGB in [0, 1] (Darknet, TinyYOLO, SqueezeNet,
    ResNet50), VGG16 with DL4J's VGG16ImagePreProcessor (ImageNet means subtracted, 0-255)."""
    shape = list(shape or DEFAULTS[name][0])
    if name == "vgg16":
        mean, std = [123.68 / 255, 116.779 / 255, 103.939 / 255], [1 / 255] * 3
    else:
        mean, std = [0.0] * 3, [1.0] * 3
    return {"input_size": shape, "mean": mean, "std": std, "interpolation": "bilinear", "crop_pct": 1.0,
            "crop_mode": "center"}


def from_config(cfg: Any) -> LayerGraph:
    """The ``source`` config node (type=dl4j_zoo) -> LayerGraph."""
    name = cfg.get("name")
    if not name or name == "???":
        raise ConfigError(f"source.name: a DL4J zoo source needs source.name; valid: {', '.join(ZOO)}")
    init = str(cfg.get("init") or "random")
    if init not in ("random", "pretrained"):
        raise ConfigError(f"source.init: {init!r} is not valid; valid: random, pretrained")
    path = cfg.get("path")
    if path:
        from tlexp._resources import resolve_path

        path = resolve_path(str(path))
    size = cfg.get("input_size")
    graph = load_zoo(str(name), path if init == "pretrained" or path else None, cfg.get("num_classes"), init,
                     list(size) if size else None)
    if "data_config" in graph.meta:
        return graph
    return graph.rebuilt(meta={**graph.meta, "data_config": data_config(str(name))})


# ---- Yolo2OutputLayer (inference) --------------------------------------------------------------


class Yolo2Output(nn.Module):
    """What DL4J's Yolo2OutputLayer returns from ``output()``: on [B, nb*(5+C), H, W], per box
    sigmoid(x, y), prior * exp(w, h), sigmoid(confidence), softmax over the C classes."""

    def __init__(self, priors: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("priors", torch.tensor(priors, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, ch, H, W = x.shape
        nb = self.priors.shape[0]
        c = ch // nb - 5
        x5 = x.reshape(B, nb, 5 + c, H, W)
        xy = torch.sigmoid(x5[:, :, 0:2])
        wh = torch.exp(x5[:, :, 2:4]) * self.priors.reshape(1, nb, 2, 1, 1)
        conf = torch.sigmoid(x5[:, :, 4:5])
        cls = torch.softmax(x5[:, :, 5:], dim=2)
        return torch.cat([xy, wh, conf, cls], dim=2).reshape(B, ch, H, W)


@register_layer("dl4j_yolo2_output", role=Role.FIXED, example={"priors": [[1.0, 1.0]]}, example_inputs=((12, 2, 2),))
def dl4j_yolo2_output(priors: list[list[float]]) -> nn.Module:
    """DL4J's Yolo2OutputLayer at inference: the activated anchor grid (same shape as its input)."""
    return Yolo2Output(priors)


def _priors(value: Any) -> list[list[float]]:
    if isinstance(value, list) and value and all(isinstance(r, list) and len(r) == 2 for r in value):
        return [[float(a), float(b)] for a, b in value]
    if isinstance(value, dict) and "data" in value:
        data = [float(v) for v in value["data"]]
        return [data[i : i + 2] for i in range(0, len(data), 2)]
    raise SourceError(f"Yolo2OutputLayer: cannot read its bounding-box priors ({type(value).__name__})")


def yolo2_output_node(name: str, layer: dict[str, Any], src: str) -> Node:
    return Node(name, build_layer("dl4j_yolo2_output", {"priors": _priors(layer.get("boundingBoxes"))}), [src])
