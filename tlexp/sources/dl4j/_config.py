"""Reading DL4J's ``configuration.json`` in every layout DL4J's Jackson mappers wrote.

1.0.x names classes with an ``@class`` property; 0.x wrapped each polymorphic object in a
one-key object naming its type (``{"dense": {...}}``, ``{"LayerVertex": {...}}``,
``{"TanH": {}}``, ``{"cnnToFeedForward": {...}}``), and 0.5-0.7 gave activations as a string
(``"activationFunction": "relu"``). Everything here turns those into one form: a class's simple
name plus its fields.
"""

from __future__ import annotations

from typing import Any

from tlexp.errors import SourceError

__all__ = ["layer_class", "activation_of", "dropout_retain", "vertex_class", "preprocessor_class", "simple"]

LAYER_PKG = "org.deeplearning4j.nn.conf.layers"

#: 0.x wrapper keys -> the class they name
_LEGACY_LAYERS = {
    "dense": "DenseLayer",
    "output": "OutputLayer",
    "convolution": "ConvolutionLayer",
    "convolution1d": "Convolution1DLayer",
    "subsampling": "SubsamplingLayer",
    "subsampling1d": "Subsampling1DLayer",
    "graveslstm": "GravesLSTM",
    "gravesbidirectionallstm": "GravesBidirectionalLSTM",
    "lstm": "LSTM",
    "rnnoutput": "RnnOutputLayer",
    "batchnormalization": "BatchNormalization",
    "localresponsenormalization": "LocalResponseNormalization",
    "embedding": "EmbeddingLayer",
    "activation": "ActivationLayer",
    "dropout": "DropoutLayer",
    "globalpooling": "GlobalPoolingLayer",
    "zeropadding": "ZeroPaddingLayer",
    "loss": "LossLayer",
    "cnnlosslayer": "CnnLossLayer",
    "rnnlosslayer": "RnnLossLayer",
    "centerlossoutputlayer": "CenterLossOutputLayer",
    "autoencoder": "AutoEncoder",
    "rbm": "RBM",
    "variationalautoencoder": "VariationalAutoencoder",
}

_LEGACY_PREPROC = {
    "cnntofeedforward": "CnnToFeedForwardPreProcessor",
    "feedforwardtocnn": "FeedForwardToCnnPreProcessor",
    "rnntofeedforward": "RnnToFeedForwardPreProcessor",
    "feedforwardtornn": "FeedForwardToRnnPreProcessor",
    "cnntornn": "CnnToRnnPreProcessor",
    "rnntocnn": "RnnToCnnPreProcessor",
    "composableinput": "ComposableInputPreProcessor",
    "binomialsampling": "BinomialSamplingPreProcessor",
    "unitvariance": "UnitVarianceProcessor",
    "zeromean": "ZeroMeanPrePreProcessor",
    "zeromeanandunitvariance": "ZeroMeanAndUnitVariancePreProcessor",
}

_ACT_ALIASES = {
    "lrelu": "leakyrelu",
    "leakyrelu": "leakyrelu",
    "hardsigmoid": "hardsigmoid",
    "hardtanh": "hardtanh",
    "softmax": "softmax",
    "logsoftmax": "logsoftmax",
    "reLU".lower(): "relu",
    "relu6": "relu6",
    "linear": "identity",
    "identity": "identity",
}


def simple(cls: str) -> str:
    return cls.rsplit(".", 1)[-1]


def _unwrap(obj: dict[str, Any], where: str) -> tuple[str, str, dict[str, Any]]:
    """(full class name or wrapper key, simple name, fields) of a polymorphic JSON object."""
    if not isinstance(obj, dict):
        raise SourceError(f"{where}: expected an object, found {type(obj).__name__}")
    if "@class" in obj:
        cls = str(obj["@class"])
        return cls, simple(cls), {k: v for k, v in obj.items() if k != "@class"}
    if len(obj) == 1:
        (key, fields), = obj.items()
        if isinstance(fields, dict):
            return key, key, fields
    raise SourceError(f"{where}: cannot tell the class of {sorted(obj)[:6]}")


def layer_class(obj: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """The layer's simple class name and fields; a custom (user-written) class is refused."""
    full, name, fields = _unwrap(obj, where)
    if "@class" in obj:
        if not full.startswith(LAYER_PKG + "."):
            raise SourceError(
                f"{where}: custom layer class {full} cannot be imported (its code is not in the file); "
                "replace it with built-in DL4J layers or rebuild that part with surgery"
            )
        return name, fields
    key = name.lower()
    if key in _LEGACY_LAYERS:
        return _LEGACY_LAYERS[key], fields
    raise SourceError(f"{where}: custom or unknown layer class {name!r} cannot be imported (its code is not in the file)")


def vertex_class(obj: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    full, name, fields = _unwrap(obj, where)
    if "@class" in obj and not full.startswith("org.deeplearning4j.nn.conf.graph."):
        raise SourceError(f"{where}: custom vertex class {full} cannot be imported (its code is not in the file)")
    return name, fields


def preprocessor_class(obj: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    full, name, fields = _unwrap(obj, where)
    if "@class" in obj:
        if not full.startswith("org.deeplearning4j.nn.conf.preprocessor."):
            raise SourceError(f"{where}: custom preprocessor class {full} cannot be imported")
        return name, fields
    return _LEGACY_PREPROC.get(name.lower(), name), fields


def activation_of(layer: dict[str, Any], where: str, key: str = "activationFn") -> tuple[str, float, float]:
    """(name, alpha, beta) of a layer's activation, DL4J's defaults filled in."""
    act = layer.get(key)
    if act is None and key == "activationFn":
        act = layer.get("activationFunction")
    if act is None:
        return ("sigmoid" if key == "gateActivationFn" else "identity"), 0.0, 0.0
    fields: dict[str, Any] = {}
    if isinstance(act, str):
        name = act
    else:
        full, name, fields = _unwrap(act, f"{where}.{key}")
        if "@class" in act and not full.startswith("org.nd4j.linalg.activations.impl."):
            raise SourceError(f"{where}: custom activation class {full} cannot be imported")
    n = name.lower()
    if n.startswith("activation"):
        n = n[len("activation"):]
    n = _ACT_ALIASES.get(n, n)
    if n == "leakyrelu":
        return n, float(fields.get("alpha", 0.01)), 0.0
    if n == "elu":
        return n, float(fields.get("alpha", 1.0)), 0.0
    if n == "thresholdedrelu":
        return n, float(fields.get("theta", 1.0)), 0.0
    if n == "rrelu":
        return n, float(fields.get("l", 1.0 / 8)), float(fields.get("u", 1.0 / 3))
    if n == "relu":
        thr = fields.get("threshold") or 0.0
        mx = fields.get("max") or 0.0
        if fields.get("negativeSlope"):
            raise SourceError(f"{where}: ReLU with negativeSlope is not supported")
        return n, float(thr), float(mx)
    if n == "prelu":
        raise SourceError(f"{where}: the PReLU activation (learned slopes) is not supported")
    from tlexp.sources.dl4j._layers import DL4J_ACTIVATIONS

    if n not in DL4J_ACTIVATIONS:
        raise SourceError(f"{where}: activation {name!r} is not supported; supported: {', '.join(DL4J_ACTIVATIONS)}")
    return n, 0.0, 0.0


def dropout_retain(layer: dict[str, Any]) -> float:
    """DL4J's dropout as a *retain* probability (1 = no dropout)."""
    d = layer.get("idropout")
    if isinstance(d, dict):
        _, name, fields = _unwrap(d, "idropout")
        if name == "Dropout":
            p = fields.get("p")
            return float(p) if isinstance(p, (int, float)) and 0 < p <= 1 else 1.0
        return 1.0
    p = layer.get("dropOut")
    if isinstance(p, (int, float)) and 0.0 < p < 1.0:
        return float(p)
    return 1.0
