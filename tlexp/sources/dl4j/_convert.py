"""DL4J layers and vertices -> LayerGraph nodes, with DL4J's flattened parameters mapped in.

DL4J keeps every parameter of a network in one flat vector: layer after layer (a
ComputationGraph: vertex after vertex in topological order), each layer's block laid out by its
parameter initializer:

- dense / output / embedding (DefaultParamInitializer): ``W`` [nIn, nOut] in 'f' order, then ``b``.
- convolution (ConvolutionParamInitializer): ``b`` first, then ``W`` [nOut, nIn, kH, kW] 'c'.
  Deconvolution: ``b``, ``W`` [nIn, nOut, kH, kW]. Depthwise: ``b``, ``W`` [kH, kW, nIn, mult].
  Separable: ``b``, depthwise [mult, nIn, kH, kW], pointwise [nOut, nIn*mult, 1, 1].
- LSTM: ``W`` [nIn, 4n] 'f', ``RW`` [n, 4n] 'f' (GravesLSTM: [n, 4n+3], the peepholes), ``b``.
  SimpleRnn: ``W`` [nIn, n], ``RW`` [n, n], ``b``. Bidirectional: forward block, backward block.
- batch norm: ``gamma``, ``beta`` (unless lockGammaBeta), ``mean``, ``var`` (or ``log10stdev``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tlexp.errors import SourceError
from tlexp.graph import Node, build_layer
from tlexp.sources.dl4j._config import activation_of, dropout_retain, layer_class, preprocessor_class, vertex_class

__all__ = ["Builder", "SUPPORTED_LAYERS", "SUPPORTED_VERTICES"]

#: DL4J activation -> the built-in activation computing the same thing (with DL4J's default alpha)
_BUILTIN_ACT = {
    "identity": "identity", "relu": "relu", "relu6": "relu6", "sigmoid": "sigmoid", "tanh": "tanh",
    "softmax": "softmax", "softsign": "softsign", "softplus": "softplus", "selu": "selu", "swish": "swish",
    "hardsigmoid": "hard_sigmoid_keras2", "mish": "mish",
}

SUPPORTED_LAYERS = (
    "DenseLayer", "OutputLayer", "LossLayer", "RnnOutputLayer", "RnnLossLayer", "CnnLossLayer",
    "CenterLossOutputLayer", "ConvolutionLayer", "Convolution2D", "Convolution1DLayer", "Convolution1D",
    "SeparableConvolution2D", "DepthwiseConvolution2D", "Deconvolution2D", "SubsamplingLayer", "Pooling2D",
    "Subsampling1DLayer", "Pooling1D", "ZeroPaddingLayer", "ZeroPadding1DLayer", "Cropping2D", "Cropping1D",
    "Upsampling2D", "Upsampling1D", "BatchNormalization", "LocalResponseNormalization", "DropoutLayer",
    "ActivationLayer", "EmbeddingLayer", "EmbeddingSequenceLayer", "GlobalPoolingLayer", "LSTM", "GravesLSTM",
    "GravesBidirectionalLSTM", "SimpleRnn", "Bidirectional", "LastTimeStep", "Yolo2OutputLayer", "Convolution3D",
    "Subsampling3DLayer", "Upsampling3D", "ZeroPadding3DLayer", "Cropping3D", "PReLULayer",
)
SUPPORTED_VERTICES = (
    "LayerVertex", "MergeVertex", "ElementWiseVertex", "SubsetVertex", "PreprocessorVertex", "ScaleVertex",
    "ShiftVertex", "L2NormalizeVertex", "L2Vertex", "StackVertex", "UnstackVertex", "ReshapeVertex",
    "LastTimeStepVertex",
)


def _pair(v: Any, n: int = 2) -> list[int]:
    if isinstance(v, (list, tuple)):
        vals = [int(x) for x in v]
        return vals[:n] if len(vals) >= n else vals + [vals[-1]] * (n - len(vals))
    return [int(v)] * n


def _fortran_order(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` reshaped column-major (how DL4J lays out most parameter blocks)."""
    return a.reshape(shape, order="F")


def _c_order(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` reshaped row-major."""
    return a.reshape(shape, order="C")


def _set(p: torch.Tensor | None, value: np.ndarray) -> None:
    if p is None:
        return
    with torch.no_grad():
        p.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(p.shape))


@dataclass
class Built:
    nodes: list[Node]
    out: str
    kind: str
    n_params: int = 0
    assign: Any = None  # callable(flat ndarray) -> None
    param_names: list[tuple[str, int]] = field(default_factory=list)  # DL4J (key, size) in flat order
    fields: dict[str, Any] = field(default_factory=dict)  # the DL4J layer's configuration


class Builder:
    """Turns one DL4J layer (or vertex) into nodes. ``kind`` tracks the data layout flowing in:
    'ff' [B, F], 'rnn' [B, F, T], 'cnn' [B, C, H, W]; DL4J's preprocessors flatten a sequence into
    time-major rows [T*B, F] ('ff') exactly as DL4J does, and fold them back."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        #: the network input the sequence preprocessors read DL4J's minibatch size from
        self.net_input = "input"

    # ---- helpers -------------------------------------------------------------------------
    def _act_nodes(self, name: str, layer_node: str, act: tuple[str, float, float], src_kind: str) -> tuple[str, dict[str, Any] | None]:
        """The activation argument for a built-in layer, or a separate dl4j_activation node."""
        n, alpha, beta = act
        if n in _BUILTIN_ACT and not (n == "relu" and (alpha or beta)):
            return _BUILTIN_ACT[n], None
        if n == "leakyrelu" and abs(alpha - 0.01) < 1e-12:
            return "leaky_relu", None
        if n == "elu" and alpha == 1.0:
            return "elu", None
        return "identity", {"name": n, "alpha": alpha, "beta": beta, "dim": 1}

    def _with_act(self, name: str, type_name: str, args: dict[str, Any], inputs: list[str],
                  act: tuple[str, float, float], kind_in: str) -> tuple[list[Node], str, nn.Module]:
        builtin, own = self._act_nodes(name, name, act, kind_in)
        args = dict(args, activation=builtin)
        if own is None:
            m = build_layer(type_name, args, where=f"dl4j layer {name!r}")
            return [Node(name, m, inputs)], name, m
        pre = f"{name}_preact"
        m = build_layer(type_name, args, where=f"dl4j layer {name!r}")
        a = build_layer("dl4j_activation", own, where=f"dl4j layer {name!r}")
        return [Node(pre, m, inputs), Node(name, a, [pre])], name, m

    # ---- preprocessors -------------------------------------------------------------------
    def preprocessor(self, name: str, obj: dict[str, Any], src: str, kind: str, where: str) -> tuple[list[Node], str, str]:
        cls, f = preprocessor_class(obj, where)
        if cls == "CnnToFeedForwardPreProcessor" or cls == "Cnn3DToFeedForwardPreProcessor":
            if kind in ("ff",):
                return [], src, "ff"
            return [Node(name, build_layer("flatten", {}), [src])], name, "ff"
        if cls == "FeedForwardToCnnPreProcessor":
            shape = [int(f.get("numChannels", 1)), int(f["inputHeight"]), int(f["inputWidth"])]
            return [Node(name, build_layer("reshape", {"shape": shape}), [src])], name, "cnn"
        if cls == "RnnToFeedForwardPreProcessor":
            if kind != "rnn":
                return [], src, kind
            return [Node(name, build_layer("dl4j_rnn_to_ff", {}), [src])], name, "ff"
        if cls == "FeedForwardToRnnPreProcessor":
            if kind == "rnn":
                return [], src, kind
            if kind == "cnn":
                return [Node(name, build_layer("dl4j_cnn_to_rnn", {}), [src, self.net_input])], name, "rnn"
            return [Node(name, build_layer("dl4j_ff_to_rnn", {}), [src, self.net_input])], name, "rnn"
        if cls == "CnnToRnnPreProcessor":
            return [Node(name, build_layer("dl4j_cnn_to_rnn", {}), [src, self.net_input])], name, "rnn"
        if cls == "RnnToCnnPreProcessor":
            shape = {"channels": int(f.get("numChannels", 1)), "height": int(f["inputHeight"]),
                     "width": int(f["inputWidth"])}
            return [Node(name, build_layer("dl4j_rnn_to_cnn", shape), [src])], name, "cnn"
        raise SourceError(
            f"{where}: input preprocessor {cls} is not supported; supported: CnnToFeedForward, FeedForwardToCnn, "
            "RnnToFeedForward, FeedForwardToRnn, CnnToRnn, RnnToCnn, Cnn3DToFeedForward"
        )

    # ---- layers --------------------------------------------------------------------------
    def layer(self, name: str, obj: dict[str, Any], src: str, kind: str, where: str) -> Built:
        b = self._layer(name, obj, src, kind, where)
        b.fields = layer_class(obj, where)[1]
        return b

    def _layer(self, name: str, obj: dict[str, Any], src: str, kind: str, where: str) -> Built:
        cls, fields = layer_class(obj, where)
        retain = dropout_retain(fields)
        drop = 1.0 - retain if retain < 1.0 else 0.0
        n_in = int(fields.get("nin", fields.get("nIn", 0)) or 0)
        n_out = int(fields.get("nout", fields.get("nOut", 0)) or 0)
        has_bias = bool(fields.get("hasBias", True))
        act = activation_of(fields, where) if ("activationFn" in fields or "activationFunction" in fields) else ("identity", 0.0, 0.0)

        if cls in ("DenseLayer", "OutputLayer", "CenterLossOutputLayer", "RnnOutputLayer"):
            nodes: list[Node] = []
            inp = src
            if kind in ("cnn", "cnn3d"):
                nodes.append(Node(f"{name}_flatten", build_layer("flatten", {}), [src]))
                inp, kind = f"{name}_flatten", "ff"
            time = cls == "RnnOutputLayer" or kind == "rnn"
            if time:
                m = build_layer("dl4j_time_dense", {"in_features": n_in, "out_features": n_out, "bias": has_bias,
                                                    "activation": act[0], "alpha": act[1], "dropout": drop},
                                where=where)
                nodes.append(Node(name, m, [inp]))
                out, dense, out_kind = name, m, ("rnn" if kind in ("rnn",) else kind)
            else:
                more, out, dense = self._with_act(name, "dense", {"in_features": n_in, "out_features": n_out,
                                                                  "bias": has_bias, "dropout": drop},
                                                  [inp], act, kind)
                nodes += more
                out_kind = kind
            n_extra = n_in * n_out if cls == "CenterLossOutputLayer" else 0

            def assign(flat: np.ndarray, dense=dense) -> None:
                _set(dense.weight, _fortran_order(flat[: n_in * n_out], (n_in, n_out)).T)
                if has_bias:
                    _set(dense.bias, flat[n_in * n_out : n_in * n_out + n_out])

            keys = [("W", n_in * n_out)] + ([("b", n_out)] if has_bias else []) + ([("cL", n_extra)] if n_extra else [])
            return Built(nodes, out, out_kind, sum(s for _, s in keys), assign, keys)

        if cls in ("LossLayer", "CnnLossLayer", "RnnLossLayer", "ActivationLayer"):
            if act[0] == "identity":
                return Built([Node(name, build_layer("identity", {}), [src])], name, kind)
            m = build_layer("dl4j_activation", {"name": act[0], "alpha": act[1], "beta": act[2],
                                                "dim": 1})
            return Built([Node(name, m, [src])], name, kind)

        if cls == "DropoutLayer":
            return Built([Node(name, build_layer("dropout", {"p": drop}), [src])], name, kind)

        if cls in ("ConvolutionLayer", "Convolution2D", "Convolution1DLayer", "Convolution1D", "Deconvolution2D"):
            one_d = cls.startswith("Convolution1D")
            dims = 1 if one_d else 2
            k = _pair(fields.get("kernelSize", [1, 1]), dims)
            s = _pair(fields.get("stride", [1, 1]), dims)
            p = _pair(fields.get("padding", [0, 0]), dims)
            d = _pair(fields.get("dilation", [1, 1]), dims)
            mode = str(fields.get("convolutionMode") or "Truncate")
            if mode == "Causal" and not one_d:
                raise SourceError(f"{where}: convolutionMode Causal is for Convolution1D layers only")
            padding: Any = "same" if mode == "Same" else (p if dims == 2 else p[0])
            pre_nodes: list[Node] = []
            if mode == "Causal":
                # DL4J (libnd4j's causal conv1d): (k-1)*dilation zeros before the sequence, none after
                pre_nodes = [Node(f"{name}_causal_pad", build_layer("zero_padding1d", {"padding": [(k[0] - 1) * d[0], 0]}),
                                  [src])]
                src, padding = f"{name}_causal_pad", 0
            deconv = cls == "Deconvolution2D"
            t = "conv1d" if one_d else ("conv_transpose2d" if deconv else "conv2d")
            args: dict[str, Any] = {"in_channels": n_in, "out_channels": n_out, "kernel_size": k, "stride": s,
                                    "padding": padding, "dilation": d, "bias": has_bias}
            if deconv and mode == "Same":
                # libnd4j's deconv2d in Same mode: output stride * input; of the full transposed
                # output ((in-1)*s + k_eff) it drops floor((k_eff - s) / 2) at the start, the rest at
                # the end (a negative count adds zeros)
                crops = []
                for ki, si, di in zip(k, s, d):
                    extra = (ki - 1) * di + 1 - si
                    top = max(extra // 2, 0) if extra >= 0 else 0
                    crops.append([top, extra - top])
                t = "window_conv_transpose"
                args = {"dims": 2, "in_channels": n_in, "out_channels": n_out, "kernel_size": k, "stride": s,
                        "crops": crops, "dilation": d, "bias": has_bias}
            if not deconv:
                args["dropout"] = drop
            nodes, out, conv = self._with_act(name, t, args, [src], act, kind)
            nodes = pre_nodes + nodes
            kk = int(np.prod(k))
            nb = n_out if has_bias else 0

            def assign(flat: np.ndarray, conv=conv) -> None:
                if has_bias:
                    _set(conv.bias, flat[:n_out])
                w = flat[nb:]
                if deconv:
                    _set(conv.weight, _c_order(w, (n_in, n_out, *k)))
                else:
                    _set(conv.weight, _c_order(w, (n_out, n_in, *k)))

            keys = ([("b", nb)] if has_bias else []) + [("W", n_in * n_out * kk)]
            return Built(nodes, out, "rnn" if one_d else "cnn", nb + n_in * n_out * kk, assign, keys)

        if cls in ("Convolution3D", "Subsampling3DLayer", "Upsampling3D", "ZeroPadding3DLayer", "Cropping3D"):
            return self._three_d(name, cls, fields, src, kind, where, act, drop, n_in, n_out, has_bias)

        if cls == "PReLULayer":
            shape = [int(x) for x in fields.get("inputShape") or []]
            if not shape:
                raise SourceError(f"{where}: PReLULayer without inputShape")
            for axis in fields.get("sharedAxes") or []:
                shape[int(axis) - 1] = 1  # DL4J's shared axes count the batch axis as 0
            m = build_layer("prelu", {"shape": shape}, where=where)
            size = int(np.prod(shape))

            def assign(flat: np.ndarray, m=m) -> None:
                _set(m.alpha, _fortran_order(flat, tuple(shape)))  # PReLUParamInitializer: 'f' order

            return Built([Node(name, m, [src])], name, kind, size, assign, [("W", size)])

        if cls in ("DepthwiseConvolution2D", "SeparableConvolution2D"):
            k = _pair(fields.get("kernelSize"))
            s = _pair(fields.get("stride", [1, 1]))
            p = _pair(fields.get("padding", [0, 0]))
            d = _pair(fields.get("dilation", [1, 1]))
            mult = int(fields.get("depthMultiplier", 1))
            mode = str(fields.get("convolutionMode") or "Truncate")
            padding = "same" if mode == "Same" else p
            kk = k[0] * k[1]
            if cls == "DepthwiseConvolution2D":
                args = {"in_channels": n_in, "kernel_size": k, "depth_multiplier": mult, "stride": s,
                        "padding": padding, "dilation": d, "bias": has_bias, "dropout": drop}
                nodes, out, conv = self._with_act(name, "depthwise_conv2d", args, [src], act, kind)
                nb = n_in * mult if has_bias else 0

                def assign(flat: np.ndarray, conv=conv) -> None:
                    if has_bias:
                        _set(conv.bias, flat[:nb])
                    w = _c_order(flat[nb:], (k[0], k[1], n_in, mult))  # [kH, kW, nIn, mult]
                    _set(conv.weight, w.transpose(2, 3, 0, 1).reshape(n_in * mult, 1, k[0], k[1]))

                keys = ([("b", nb)] if has_bias else []) + [("W", kk * n_in * mult)]
                return Built(nodes, out, "cnn", sum(x for _, x in keys), assign, keys)
            args = {"in_channels": n_in, "out_channels": n_out, "kernel_size": k, "depth_multiplier": mult,
                    "stride": s, "padding": padding, "dilation": d, "bias": has_bias, "dropout": drop}
            nodes, out, conv = self._with_act(name, "separable_conv2d", args, [src], act, kind)
            nb = n_out if has_bias else 0
            ndw = mult * n_in * kk

            def assign(flat: np.ndarray, conv=conv) -> None:
                if has_bias:
                    _set(conv.pointwise.bias, flat[:nb])
                dw = _c_order(flat[nb : nb + ndw], (mult, n_in, k[0], k[1]))
                _set(conv.depthwise.weight, dw.transpose(1, 0, 2, 3).reshape(n_in * mult, 1, k[0], k[1]))
                _set(conv.pointwise.weight, _c_order(flat[nb + ndw :], (n_out, n_in * mult, 1, 1)))

            keys = ([("b", nb)] if has_bias else []) + [("W", ndw), ("pW", n_out * n_in * mult)]
            return Built(nodes, out, "cnn", sum(x for _, x in keys), assign, keys)

        if cls in ("SubsamplingLayer", "Pooling2D", "Subsampling1DLayer", "Pooling1D"):
            dims = 1 if "1D" in cls else 2
            kind_name = str(fields.get("poolingType", "MAX")).lower()
            kind_name = {"max": "max", "avg": "avg", "sum": "sum", "pnorm": "pnorm"}.get(kind_name)
            if kind_name is None:
                raise SourceError(f"{where}: pooling type {fields.get('poolingType')!r} is not supported")
            mode = str(fields.get("convolutionMode") or "Truncate")
            if _pair(fields.get("dilation", [1, 1]), dims) != [1] * dims:
                raise SourceError(f"{where}: dilated pooling is not supported")
            m = build_layer("dl4j_pool", {
                "kernel": _pair(fields.get("kernelSize", [2, 2]), dims), "stride": _pair(fields.get("stride", [2, 2]), dims),
                "padding": _pair(fields.get("padding", [0, 0]), dims), "kind": kind_name, "same": mode == "Same",
                "pnorm": int(fields.get("pnorm") or 2), "include_pad": bool(fields.get("avgPoolIncludePadInDivisor", False)),
            }, where=where)
            return Built([Node(name, m, [src])], name, "rnn" if dims == 1 else "cnn")

        if cls in ("ZeroPaddingLayer", "ZeroPadding1DLayer"):
            pad = [int(x) for x in fields.get("padding", [0, 0, 0, 0])]
            if cls == "ZeroPadding1DLayer":
                return Built([Node(name, build_layer("zero_padding1d", {"padding": pad[:2]}), [src])], name, kind)
            if len(pad) == 2:
                pad = [pad[0], pad[0], pad[1], pad[1]]
            return Built([Node(name, build_layer("zero_padding2d", {"padding": pad}), [src])], name, kind)

        if cls in ("Cropping2D", "Cropping1D"):
            crop = [int(x) for x in fields.get("cropping", [0, 0, 0, 0])]
            if cls == "Cropping1D":
                return Built([Node(name, build_layer("cropping1d", {"cropping": crop[:2]}), [src])], name, kind)
            if len(crop) == 2:
                crop = [crop[0], crop[0], crop[1], crop[1]]
            return Built([Node(name, build_layer("cropping2d", {"cropping": crop}), [src])], name, kind)

        if cls in ("Upsampling2D", "Upsampling1D"):
            size = fields.get("size", 2)
            if cls == "Upsampling1D":
                return Built([Node(name, build_layer("upsample1d", {"size": _pair(size, 1)[0]}), [src])], name, kind)
            return Built([Node(name, build_layer("upsample2d", {"scale_factor": _pair(size)}), [src])], name, kind)

        if cls == "BatchNormalization":
            n = n_out or n_in
            lock = bool(fields.get("lockGammaBeta", False))
            log_std = bool(fields.get("useLogStd", False))
            eps = float(fields.get("eps", 1e-5))
            m = build_layer("dl4j_batchnorm", {"num_features": n, "eps": eps, "momentum": 0.1, "affine": not lock,
                                               "gamma": float(fields.get("gamma", 1.0)), "beta": float(fields.get("beta", 0.0))},
                            where=where)
            keys = ([] if lock else [("gamma", n), ("beta", n)]) + [("mean", n), ("log10stdev" if log_std else "var", n)]

            def assign(flat: np.ndarray, m=m) -> None:
                bn = m.bn
                i = 0
                if not lock:
                    _set(bn.weight, flat[:n])
                    _set(bn.bias, flat[n : 2 * n])
                    i = 2 * n
                _set(bn.running_mean, flat[i : i + n])
                v = flat[i + n : i + 2 * n].astype(np.float64)
                if log_std:
                    v = (10.0 ** v) ** 2 - eps
                _set(bn.running_var, v)

            return Built([Node(name, m, [src])], name, kind, 4 * n - (2 * n if lock else 0), assign, keys)

        if cls == "LocalResponseNormalization":
            m = build_layer("dl4j_lrn", {"k": float(fields.get("k", 2.0)), "n": float(fields.get("n", 5.0)),
                                         "alpha": float(fields.get("alpha", 1e-4)), "beta": float(fields.get("beta", 0.75))})
            return Built([Node(name, m, [src])], name, kind)

        if cls in ("EmbeddingLayer", "EmbeddingSequenceLayer"):
            seq = cls == "EmbeddingSequenceLayer"
            bias = bool(fields.get("hasBias", not seq))
            m = build_layer("dl4j_embedding", {"n_in": n_in, "n_out": n_out, "bias": bias, "sequence": seq,
                                               "activation": act[0]}, where=where)

            def assign(flat: np.ndarray, m=m) -> None:
                _set(m.W, _fortran_order(flat[: n_in * n_out], (n_in, n_out)))
                if bias:
                    _set(m.b, flat[n_in * n_out :])

            keys = [("W", n_in * n_out)] + ([("b", n_out)] if bias else [])
            return Built([Node(name, m, [src])], name, "rnn" if seq else "ff", n_in * n_out + (n_out if bias else 0),
                         assign, keys)

        if cls == "GlobalPoolingLayer":
            pt = str(fields.get("poolingType", "MAX")).lower()
            dims = fields.get("poolingDimensions")
            collapse = bool(fields.get("collapseDimensions", True))
            if pt in ("max", "avg") and not dims:
                m = build_layer(f"global_{pt}_pool", {"keepdims": not collapse})
            else:
                m = build_layer("dl4j_global_pool", {"kind": pt, "dims": [int(x) for x in dims] if dims else None,
                                                     "keepdims": not collapse, "pnorm": int(fields.get("pnorm") or 2)},
                                where=where)
            return Built([Node(name, m, [src])], name, "ff" if collapse else kind)

        if cls in ("LSTM", "GravesLSTM", "SimpleRnn"):
            return self._rnn(name, cls, fields, src, where, drop)

        if cls == "GravesBidirectionalLSTM":
            return self._bidirectional(name, "GravesLSTM", fields, fields, "add", src, where, drop, legacy=True)

        if cls == "Bidirectional":
            fcls, fwd = layer_class(fields["fwd"], f"{where}.fwd")
            _, bwd = layer_class(fields["bwd"], f"{where}.bwd")
            mode = str(fields.get("mode", "CONCAT")).lower()
            if mode not in ("concat", "add", "mul", "average"):
                raise SourceError(f"{where}: Bidirectional mode {mode!r} is not supported")
            return self._bidirectional(name, fcls, fwd, bwd, mode, src, where, drop)

        if cls == "LastTimeStep":
            ucls, inner = layer_class(fields["underlying"], f"{where}.underlying")
            b = self.layer(f"{name}_seq", fields["underlying"], src, kind, where)
            last = build_layer("getitem", {"index": [[None, None, None], [None, None, None], -1]})
            b.nodes.append(Node(name, last, [b.out]))
            b.out, b.kind = name, "ff"
            return b

        if cls == "Yolo2OutputLayer":
            from tlexp.sources.dl4j._zoo import yolo2_output_node

            return Built([yolo2_output_node(name, fields, src)], name, "cnn")

        raise SourceError(
            f"{where}: layer class {cls} is not supported; supported: {', '.join(SUPPORTED_LAYERS)}"
        )

    def _three_d(self, name: str, cls: str, fields: dict[str, Any], src: str, kind: str, where: str,
                 act: tuple[str, float, float], drop: float, n_in: int, n_out: int, has_bias: bool) -> Built:
        """Convolution3D, Subsampling3DLayer, Upsampling3D, ZeroPadding3DLayer, Cropping3D on DL4J's
        NCDHW (or NDHWC: permuted to channels first and back around the layer)."""
        channels_last = str(fields.get("dataFormat") or "NCDHW").upper() == "NDHWC"
        nodes: list[Node] = []
        if channels_last:
            nodes.append(Node(f"{name}_to_ncdhw", build_layer("permute", {"dims": [3, 0, 1, 2]}), [src]))
            src = f"{name}_to_ncdhw"
        core = f"{name}_ncdhw" if channels_last else name
        mode = str(fields.get("convolutionMode") or fields.get("mode") or "Truncate")
        k = _pair(fields.get("kernelSize", [2, 2, 2]), 3)
        s = _pair(fields.get("stride", [1, 1, 1] if cls == "Convolution3D" else [2, 2, 2]), 3)
        p = _pair(fields.get("padding", [0, 0, 0]), 3)
        d = _pair(fields.get("dilation", [1, 1, 1]), 3)
        n_params, assign, keys = 0, None, []
        if cls == "Convolution3D":
            args: dict[str, Any] = {"in_channels": n_in, "out_channels": n_out, "kernel_size": k, "stride": s,
                                    "padding": "same" if mode == "Same" else p, "dilation": d, "bias": has_bias,
                                    "dropout": drop}
            more, out, conv = self._with_act(core, "conv3d", args, [src], act, "cnn3d")
            nodes += more
            nb = n_out if has_bias else 0
            nw = n_in * n_out * int(np.prod(k))

            def assign(flat: np.ndarray, conv=conv) -> None:  # Convolution3DParamInitializer: b, then W
                if has_bias:
                    _set(conv.conv.bias, flat[:nb])
                _set(conv.conv.weight, _c_order(flat[nb:], (n_out, n_in, *k)))  # [nOut, nIn, kD, kH, kW] 'c'

            keys = ([("b", nb)] if has_bias else []) + [("W", nw)]
            n_params = nb + nw
        elif cls == "Subsampling3DLayer":
            kind_name = str(fields.get("poolingType", "MAX")).lower()
            if kind_name not in ("max", "avg"):
                raise SourceError(f"{where}: Subsampling3DLayer pooling type {fields.get('poolingType')!r} is not supported; "
                                  "valid: MAX, AVG")
            if d != [1, 1, 1]:
                raise SourceError(f"{where}: dilated pooling is not supported")
            m = build_layer("dl4j_pool", {"kernel": k, "stride": s, "padding": p, "kind": kind_name,
                                          "same": mode == "Same", "include_pad": False}, where=where)
            nodes.append(Node(core, m, [src]))
        elif cls == "Upsampling3D":
            nodes.append(Node(core, build_layer("upsample3d", {"size": _pair(fields.get("size", 2), 3)}), [src]))
        elif cls == "ZeroPadding3DLayer":
            pad = [int(x) for x in fields.get("padding", [0] * 6)]
            nodes.append(Node(core, build_layer("zero_padding3d", {"padding": pad}), [src]))
        else:
            crop = [int(x) for x in fields.get("cropping", [0] * 6)]
            nodes.append(Node(core, build_layer("cropping3d", {"cropping": crop}), [src]))
        out = nodes[-1].name
        if channels_last:
            nodes.append(Node(name, build_layer("permute", {"dims": [1, 2, 3, 0]}), [out]))
            out = name
        return Built(nodes, out, "cnn3d", n_params, assign, keys)

    def _rnn(self, name: str, cls: str, fields: dict[str, Any], src: str, where: str, drop: float) -> Built:
        n_in = int(fields.get("nin", 0))
        n = int(fields.get("nout", 0))
        if fields.get("hasLayerNorm"):
            raise SourceError(f"{where}: SimpleRnn with layer normalization is not supported")
        act = activation_of(fields, where)
        gate = activation_of(fields, where, "gateActivationFn")
        kind = {"LSTM": "lstm", "GravesLSTM": "graves_lstm", "SimpleRnn": "simple_rnn"}[cls]
        m = build_layer("dl4j_rnn", {"n_in": n_in, "n_out": n, "kind": kind, "activation": act[0],
                                     "gate_activation": gate[0], "dropout": drop}, where=where)
        size, assign_cell, keys = _cell_params(kind, n_in, n)
        return Built([Node(name, m, [src])], name, "rnn", size, lambda flat: assign_cell(m.cell, flat), keys)

    def _bidirectional(self, name: str, cls: str, fwd: dict[str, Any], bwd: dict[str, Any], mode: str, src: str,
                       where: str, drop: float, legacy: bool = False) -> Built:
        n_in = int(fwd.get("nin", 0))
        n = int(fwd.get("nout", 0))
        kinds = {"LSTM": "lstm", "GravesLSTM": "graves_lstm", "SimpleRnn": "simple_rnn"}
        if cls not in kinds:
            raise SourceError(f"{where}: Bidirectional around {cls} is not supported; supported: {', '.join(kinds)}")
        act = activation_of(fwd, where)
        gate = activation_of(fwd, where, "gateActivationFn")
        kind = kinds[cls]
        m = build_layer("dl4j_bidirectional", {"n_in": n_in, "n_out": n, "kind": kind, "mode": mode,
                                               "activation": act[0], "gate_activation": gate[0], "dropout": drop},
                        where=where)
        size, assign_cell, keys = _cell_params(kind, n_in, n)

        def assign(flat: np.ndarray) -> None:
            assign_cell(m.fwd, flat[:size])
            assign_cell(m.bwd, flat[size:])

        if legacy:
            names = [("WF", "RWF", "bF"), ("WB", "RWB", "bB")]
            allkeys = [(names[d][i], s) for d in range(2) for i, (_, s) in enumerate(keys)]
        else:
            allkeys = [("f" + k, s) for k, s in keys] + [("b" + k, s) for k, s in keys]
        return Built([Node(name, m, [src])], name, "rnn", 2 * size, assign, allkeys)

    # ---- vertices ------------------------------------------------------------------------
    def vertex(self, name: str, obj: dict[str, Any], srcs: list[str], kinds: list[str], where: str) -> Built:
        cls, V = vertex_class(obj, where)
        kind = kinds[0] if kinds else "ff"
        if cls == "MergeVertex":
            dim = 1
            return Built([Node(name, build_layer("concat", {"dim": dim}), srcs)], name, kind)
        if cls == "ElementWiseVertex":
            op = str(V.get("op", "Add")).lower()
            t = {"add": "add", "subtract": "subtract", "product": "multiply", "average": "average", "max": "maximum"}.get(op)
            if t is None:
                raise SourceError(f"{where}: ElementWiseVertex op {op!r} is not supported")
            return Built([Node(name, build_layer(t, {}), srcs)], name, kind)
        if cls == "SubsetVertex":
            a, b = int(V["from"]), int(V["to"])
            idx: list[Any] = [[None, None, None], [a, b + 1, None]]
            return Built([Node(name, build_layer("getitem", {"index": idx}), srcs)], name, kind)
        if cls == "ScaleVertex":
            return Built([Node(name, build_layer("rescaling", {"scale": float(V["scaleFactor"])}), srcs)], name, kind)
        if cls == "ShiftVertex":
            return Built([Node(name, build_layer("rescaling", {"offset": float(V["shiftFactor"])}), srcs)], name, kind)
        if cls == "L2NormalizeVertex":
            dims = V.get("dimension")
            m = build_layer("dl4j_l2_normalize", {"dims": [int(x) for x in dims] if dims else None,
                                                  "eps": float(V.get("eps", 1e-8))})
            return Built([Node(name, m, srcs)], name, kind)
        if cls == "L2Vertex":
            return Built([Node(name, build_layer("dl4j_l2", {"eps": float(V.get("eps", 1e-8))}), srcs)], name, "ff")
        if cls == "StackVertex":
            return Built([Node(name, build_layer("dl4j_stack", {}), srcs)], name, kind)
        if cls == "UnstackVertex":
            m = build_layer("dl4j_unstack", {"index": int(V["from"]), "count": int(V["stackSize"])})
            return Built([Node(name, m, srcs)], name, kind)
        if cls == "ReshapeVertex":
            order = str(V.get("reshapeOrder", "c")).lower()[:1]
            m = build_layer("dl4j_reshape", {"shape": [int(x) for x in V["newShape"]], "order": "f" if order == "f" else "c"})
            return Built([Node(name, m, srcs)], name, {2: "ff", 3: "rnn", 4: "cnn"}.get(len(V["newShape"]), kind))
        if cls == "LastTimeStepVertex":
            last = build_layer("getitem", {"index": [[None, None, None], [None, None, None], -1]})
            return Built([Node(name, last, srcs)], name, "ff")
        if cls == "PreprocessorVertex":
            nodes, out, k = self.preprocessor(name, V["preProcessor"], srcs[0], kind, where)
            if not nodes:
                nodes, out = [Node(name, build_layer("identity", {}), srcs)], name
            return Built(nodes, out, k)
        raise SourceError(f"{where}: vertex class {cls} is not supported; supported: {', '.join(SUPPORTED_VERTICES)}")


def _cell_params(kind: str, n_in: int, n: int):
    if kind == "simple_rnn":
        size = n_in * n + n * n + n

        def assign(cell, flat: np.ndarray) -> None:
            _set(cell.W, _fortran_order(flat[: n_in * n], (n_in, n)))
            _set(cell.RW, _fortran_order(flat[n_in * n : n_in * n + n * n], (n, n)))
            _set(cell.b, flat[n_in * n + n * n :])

        return size, assign, [("W", n_in * n), ("RW", n * n), ("b", n)]
    cols = 4 * n + (3 if kind == "graves_lstm" else 0)
    nw, nr = n_in * 4 * n, n * cols
    size = nw + nr + 4 * n

    def assign(cell, flat: np.ndarray) -> None:
        _set(cell.W, _fortran_order(flat[:nw], (n_in, 4 * n)))
        _set(cell.RW, _fortran_order(flat[nw : nw + nr], (n, cols)))
        _set(cell.b, flat[nw + nr :])

    return size, assign, [("W", nw), ("RW", nr), ("b", 4 * n)]
