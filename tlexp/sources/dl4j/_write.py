"""Writing DL4J-layout model zips (MultiLayerNetwork of dense layers), as DL4J 1.0 writes them.

Used to build the DL4J churn model the ``dl4j_churn_transfer`` experiment ships and tests use:
``configuration.json`` in DL4J 1.0's JSON layout, ``coefficients.bin`` (W [nIn, nOut] in 'f'
order, then b, layer by layer), ``updaterState.bin`` (Nesterovs momentum, zeros) and
``normalizer.bin`` (NormalizerStandardize). ``load_dl4j`` reads it back; so would DL4J.

    python -m tlexp.sources.dl4j._write OUT.zip     # the churn model from the shipped churn_net
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tlexp.graph import LayerGraph
from tlexp.sources.dl4j._ndarray import write_array, write_utf

__all__ = ["write_dense_mln", "churn_dl4j_model"]

_ACT = {"relu": "ReLU", "softmax": "Softmax", "identity": "Identity", "tanh": "TanH", "sigmoid": "Sigmoid",
        "leaky_relu": "LReLU", "elu": "ELU", "selu": "SELU", "softsign": "SoftSign", "softplus": "SoftPlus"}


def _layer_json(i: int, n_in: int, n_out: int, act: str, retain: float, output: bool, lr: float, momentum: float
                ) -> dict[str, Any]:
    layer: dict[str, Any] = {
        "@class": "org.deeplearning4j.nn.conf.layers." + ("OutputLayer" if output else "DenseLayer"),
        "activationFn": {"@class": "org.nd4j.linalg.activations.impl.Activation" + _ACT[act]},
        "biasInit": 0.0, "biasUpdater": None, "constraints": None, "gainInit": 1.0,
        "gradientNormalization": "None", "gradientNormalizationThreshold": 1.0, "hasBias": True,
        "idropout": ({"@class": "org.deeplearning4j.nn.conf.dropout.Dropout", "p": retain} if retain < 1.0 else None),
        "iupdater": {"@class": "org.nd4j.linalg.learning.config.Nesterovs", "learningRate": lr, "momentum": momentum},
        "layerName": f"layer{i}", "nin": n_in, "nout": n_out, "regularization": [], "regularizationBias": [],
        "weightInitFn": {"@class": "org.deeplearning4j.nn.weights.WeightInitXavier"}, "weightNoise": None,
    }
    if output:
        layer["lossFn"] = {"@class": "org.nd4j.linalg.lossfunctions.impl.LossMCXENT", "softmaxClipEps": 1e-10}
    return {"cacheMode": "NONE", "dataType": "FLOAT", "epochCount": 0, "iterationCount": 0, "layer": layer,
            "maxNumLineSearchIterations": 5, "miniBatch": True, "minimize": True,
            "optimizationAlgo": "STOCHASTIC_GRADIENT_DESCENT", "seed": 12345, "stepFunction": None,
            "variables": ["W", "b"]}


def write_dense_mln(path: str | Path, layers: list[tuple[np.ndarray, np.ndarray, str, float]],
                    mean: np.ndarray | None = None, std: np.ndarray | None = None,
                    lr: float = 0.1, momentum: float = 0.9) -> Path:
    """A DL4J MultiLayerNetwork zip of dense layers, each ``(W [out, in] as torch keeps it, b,
    activation, dropout retain probability)``, the last an OutputLayer; with a standardizing
    normalizer when ``mean``/``std`` are given."""
    confs, flat = [], []
    for i, (w, b, act, retain) in enumerate(layers):
        n_out, n_in = w.shape
        confs.append(_layer_json(i, n_in, n_out, act, retain, i == len(layers) - 1, lr, momentum))
        flat.append(np.asarray(w, np.float32).T.reshape(-1, order="F"))  # DL4J's W [nIn, nOut], 'f' order
        flat.append(np.asarray(b, np.float32).reshape(-1))
    conf = {"backpropType": "Standard", "cacheMode": "NONE", "confs": confs, "dataType": "FLOAT", "epochCount": 0,
            "inferenceWorkspaceMode": "ENABLED", "inputPreProcessors": {}, "iterationCount": 0,
            "tbpttBackLength": 20, "tbpttFwdLength": 20, "trainingWorkspaceMode": "ENABLED",
            "validateOutputLayerConfig": True}
    params = np.concatenate(flat).reshape(1, -1)

    def arr(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        write_array(buf, a)
        return buf.getvalue()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("configuration.json", json.dumps(conf, indent=2))
        z.writestr("coefficients.bin", arr(params))
        z.writestr("updaterState.bin", arr(np.zeros_like(params)))
        if mean is not None and std is not None:
            buf = io.BytesIO()
            write_utf(buf, "NORMALIZER")
            buf.write((1).to_bytes(4, "big"))
            write_utf(buf, "STANDARDIZE")
            buf.write(b"\x00")
            write_array(buf, np.asarray(mean, np.float32).reshape(1, -1))
            write_array(buf, np.asarray(std, np.float32).reshape(1, -1))
            z.writestr("normalizer.bin", buf.getvalue())
    return out


def _dense_layers(graph: LayerGraph) -> list[tuple[np.ndarray, np.ndarray, str, float]]:
    layers = []
    for node in graph._nodes:
        if node.type != "dense":
            raise ValueError(f"node {node.name!r} is not a dense layer")
        args = node.args
        w = node.module.weight.detach().numpy().copy()
        b = node.module.bias.detach().numpy().copy()
        layers.append((w, b, args.get("activation", "identity"), 1.0 - float(args.get("dropout", 0.0))))
    return layers


def churn_dl4j_model(out: str | Path) -> Path:
    """The shipped churn network (pretrained on France/Spain customers) as a DL4J file taking the
    book's DataVec encoding: CreditScore, Geography=Germany, Geography=Spain, Gender (Male 0,
    Female 1), Age, Tenure, Balance, NumOfProducts, HasCrCard, IsActiveMember, EstimatedSalary,
    raw; its normalizer.bin holds the standardization the network was trained behind."""
    from tlexp._resources import resolve_path
    from tlexp.data.tabular import TabularDataModule
    from tlexp.sources.saved import load_model

    graph = load_model(resolve_path("pkg://models/churn_net"))
    data = TabularDataModule(type="churn", label="Exited", drop=["RowNumber", "CustomerId", "Surname"],
                             categorical=["Geography", "Gender"], where={"Geography": ["France", "Spain"]})
    data.setup()
    names = list(data.feature_names)
    mean, std = np.array(data.stats["mean"]), np.array(data.stats["std"])
    layers = _dense_layers(graph)
    # tlexp encodes Gender=Male (drop-first of [Female, Male]); the book encodes Female as 1:
    # female = 1 - male, so the column's mean becomes 1 - mean and its first-layer weights flip sign
    g = names.index("Gender=Male")
    w0 = layers[0][0].copy()
    w0[:, g] = -w0[:, g]
    layers[0] = (w0, layers[0][1], layers[0][2], layers[0][3])
    mean[g] = 1.0 - mean[g]
    return write_dense_mln(out, layers, mean, std, lr=5e-5, momentum=0.9)


if __name__ == "__main__":
    print(churn_dl4j_model(sys.argv[1] if len(sys.argv) > 1 else "churn_dl4j.zip"))
