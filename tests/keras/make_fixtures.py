"""Write the Keras fixtures: model files saved by Keras itself plus Keras's own predictions.

Keras 3 (the ``keras`` test dependency, torch backend)::

    python tests/keras/make_fixtures.py            # -> tests/fixtures/keras/k3/

Keras 2 (tf.keras from tensorflow-cpu + tf-keras, in a separate virtual environment; neither is
a project dependency, the files are committed)::

    python -m venv /tmp/tf2venv && /tmp/tf2venv/bin/pip install tensorflow-cpu tf-keras h5py
    /tmp/tf2venv/bin/python tests/keras/make_fixtures.py --keras2   # -> tests/fixtures/keras/k2/

Each fixture ``NAME`` gets its model files (``NAME.h5``; ``NAME.json`` + weights;
``NAME.keras``) and ``NAME.npz`` holding the inputs (``x0``, ``x1``, …) and ``model.predict`` on
them (``y0``, ``y1``, …). ``manifest.json`` lists every fixture with its files. Weights are
random (seeded) and small so the files stay small; BatchNormalization statistics are random too,
so inference-mode normalization is actually exercised.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "keras"

#: the Lambda fixture's code would create this file (name relative to the working directory)
LAMBDA_MARKER = "tlexp_lambda_was_run.txt"


def _keras(k2: bool):
    if k2:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tf_keras as keras
    else:
        os.environ["KERAS_BACKEND"] = "torch"
        import keras
    return keras


def randomize(model, seed: int) -> None:
    """Random weights everywhere (positive variances), so no layer is an accidental identity."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.path if hasattr(w, "path") else w.name
        shape = tuple(w.shape)
        if "moving_variance" in name or "variance" in name.split("/")[-1]:
            value = rng.uniform(0.5, 1.5, shape)
        elif "embeddings" in name:
            value = rng.normal(0, 1.0, shape)
        else:
            value = rng.normal(0, 0.4, shape)
        w.assign(value.astype(np.float32))


# ---- the models -------------------------------------------------------------------------------


def mlp(K, k2):
    L = K.layers
    m = K.Sequential(
        [
            K.Input((6,)),
            L.Dense(8, activation="relu", name="d1"),
            L.Dropout(0.3, name="drop"),
            L.BatchNormalization(name="bn"),
            L.Dense(7, activation="selu", name="d2"),
            L.Activation("softplus", name="act"),
            L.GaussianNoise(0.1, name="noise"),
            L.GaussianDropout(0.1, name="gdrop"),
            L.AlphaDropout(0.1, name="adrop"),
            L.Dense(5, use_bias=False, activation="tanh", name="d3"),
            L.Dense(3, activation="softmax", name="out"),
        ],
        name="mlp",
    )
    m.compile(optimizer=K.optimizers.SGD(learning_rate=0.05, momentum=0.8, nesterov=True),
              loss="categorical_crossentropy")
    return m, [((6,), "normal")]


K3_ACTS = [
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "hard_silu",
    "hard_swish", "mish", "sigmoid", "hard_sigmoid", "log_sigmoid", "sparse_sigmoid", "tanh",
    "hard_tanh", "tanh_shrink", "soft_shrink", "hard_shrink", "softplus", "softsign", "sparse_plus",
    "squareplus", "exponential", "softmax", "log_softmax", "sparsemax", "glu", "linear",
]
K2_ACTS = [
    "elu", "exponential", "gelu", "hard_sigmoid", "linear", "mish", "relu", "selu", "sigmoid",
    "softmax", "softplus", "softsign", "swish", "tanh",
]


def activations(K, k2):
    L = K.layers
    x = K.Input((10,), name="x")
    outs = [L.Activation(a, name=f"act_{a}")(x) for a in (K2_ACTS if k2 else K3_ACTS)]
    outs.append(L.Dense(4, activation="hard_sigmoid", name="dense_hard_sigmoid")(x))
    outs.append(L.Dense(4, activation="softmax", name="dense_softmax")(x))
    if not k2:
        outs.append(L.Dense(4, activation="leaky_relu", name="dense_leaky")(x))
    return K.Model(x, outs, name="activations"), [((10,), "wide")]


def conv2d(K, k2):
    L = K.layers
    m = K.Sequential(
        [
            K.Input((9, 9, 3)),
            L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c_s2_same"),
            L.Conv2D(4, (2, 3), padding="same", use_bias=False, name="c_even_same"),
            L.Conv2D(4, 3, dilation_rate=2, padding="same", groups=2, name="c_dil_groups"),
            L.Conv2D(6, 1, groups=2, name="c_1x1_groups"),
            L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same", name="dw"),
            L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2, activation="elu", name="sep"),
            L.BatchNormalization(center=False, epsilon=0.01, name="bn_nocenter"),
            L.Conv2D(3, 2, strides=(1, 2), padding="valid", name="c_valid"),
            L.Flatten(name="flat"),
            L.Dense(4, name="out"),
        ],
        name="conv2d",
    )
    return m, [((9, 9, 3), "normal")]


def conv2d_b(K, k2):
    L = K.layers
    x = K.Input((7, 8, 2), name="img")
    y = L.ZeroPadding2D(((1, 0), (2, 1)), name="zpad")(x)
    y = L.Conv2D(3, 3, name="conv")(y)
    y = L.Cropping2D(((0, 1), (1, 0)), name="crop")(y)
    y = L.MaxPooling2D(2, padding="same", name="maxpool")(y)
    y = L.UpSampling2D(2, name="up")(y)
    y = L.AveragePooling2D(3, strides=2, padding="same", name="avgpool")(y)
    y = L.Conv2DTranspose(3, 3, strides=2, padding="same", name="tconv_same")(y)
    y = L.Conv2DTranspose(2, 4, strides=2, padding="valid", use_bias=False, name="tconv_valid")(y)
    y = L.UpSampling2D((2, 1), interpolation="bilinear", name="up_bilinear")(y)
    y = L.BatchNormalization(scale=False, name="bn_noscale")(y)
    y = L.MaxPooling2D((2, 3), strides=(2, 2), name="maxpool_valid")(y)
    y = L.AveragePooling2D(2, name="avgpool_valid")(y)
    gap = L.GlobalAveragePooling2D(name="gap")(y)
    gmp = L.GlobalMaxPooling2D(keepdims=True, name="gmp_keep")(y)
    flat = L.Dense(3, name="head")(L.Flatten(name="flat")(y))
    return K.Model(x, [y, gap, gmp, flat], name="conv2d_b"), [((7, 8, 2), "normal")]


def conv1d(K, k2):
    L = K.layers
    x = K.Input((12, 3), name="seq")
    y = L.Conv1D(4, 3, strides=2, padding="same", name="c1")(x)
    y = L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="tanh", name="c_causal")(y)
    y = L.ZeroPadding1D((1, 2), name="zpad")(y)
    y = L.Cropping1D((2, 0), name="crop")(y)
    y = L.MaxPooling1D(2, name="maxpool")(y)
    y = L.UpSampling1D(3, name="up")(y)
    y = L.AveragePooling1D(2, padding="same", name="avgpool")(y)
    y = L.SpatialDropout1D(0.2, name="sdrop")(y)
    y = L.BatchNormalization(name="bn")(y)
    gap = L.GlobalAveragePooling1D(name="gap")(y)
    gmp = L.GlobalMaxPooling1D(name="gmp")(y)
    flat = L.Dense(3, name="head")(L.Flatten(name="flat")(y))
    seq = L.Dense(2, name="per_step")(y)
    return K.Model(x, [y, gap, gmp, flat, seq], name="conv1d"), [((12, 3), "normal")]


def norm_act(K, k2):
    L = K.layers
    x = K.Input((5, 6, 3), name="img")
    y = L.LayerNormalization(name="ln")(x)
    y = L.LeakyReLU(0.2, name="leaky")(y)
    y = L.PReLU(shared_axes=[1, 2], name="prelu_shared")(y)
    y = L.ELU(0.7, name="elu")(y)
    y = L.ReLU(max_value=1.5, threshold=0.2, negative_slope=0.1, name="relu_full")(y)
    a = L.Softmax(axis=-1, name="softmax_last")(y)
    b = L.Softmax(axis=1, name="softmax_h")(y)
    c = L.PReLU(name="prelu_full")(L.Conv2D(2, 1, name="conv")(y))
    d = L.LayerNormalization(axis=[1, 2, 3], center=False, name="ln_multi")(y)
    e = L.ReLU(6.0, name="relu6")(L.ReLU(name="relu_plain")(L.SpatialDropout2D(0.3, name="sdrop")(y)))
    f = L.LeakyReLU(name="leaky_default")(x)
    v = K.Input((4, 3), name="seq")
    g = L.BatchNormalization(name="bn_seq")(L.Dense(3, name="seq_dense")(v))
    h = L.LayerNormalization(epsilon=0.1, scale=False, name="ln_seq")(g)
    outs = [a, b, c, d, e, f, g, h]
    if k2:
        outs.append(L.ThresholdedReLU(0.3, name="trelu")(y))
    return K.Model([x, v], outs, name="norm_act"), [((5, 6, 3), "normal"), ((4, 3), "normal")]


def merge(K, k2):
    L = K.layers
    a = K.Input((6, 5, 2), name="a")
    b = K.Input((6, 5, 2), name="b")
    c = K.Input((4,), name="c")
    outs = [
        L.Add(name="add")([a, b]),
        L.Subtract(name="sub")([a, b]),
        L.Multiply(name="mul")([a, b]),
        L.Average(name="avg")([a, b]),
        L.Maximum(name="max")([a, b]),
        L.Minimum(name="min")([a, b]),
        L.Concatenate(axis=-1, name="cat_channels")([a, b]),
        L.Concatenate(axis=1, name="cat_rows")([a, b]),
        L.Concatenate(axis=-2, name="cat_cols")([a, L.Conv2D(2, 1, name="conv")(b)]),
    ]
    shared = L.Dense(3, name="shared")
    s1 = shared(c)
    s2 = shared(L.Dense(4, name="pre")(c))
    outs.append(L.Concatenate(name="cat_vec")([s1, s2, c]))
    outs.append(L.Add(name="add3")([s1, s2, L.Dense(3, name="third")(c)]))
    return K.Model([a, b, c], outs, name="merge"), [((6, 5, 2), "normal"), ((6, 5, 2), "normal"), ((4,), "normal")]


def reshape(K, k2):
    L = K.layers
    x = K.Input((4, 6), name="x")
    y = L.Rescaling(0.5, offset=-0.25, name="rescale")(x)
    y = L.Permute((2, 1), name="perm")(y)
    y = L.Reshape((2, 3, 4), name="to_img")(y)
    y = L.Conv2D(3, 1, name="conv")(y)
    y = L.Permute((3, 1, 2), name="perm_img")(y)
    y = L.Reshape((-1,), name="to_vec")(y)
    y = L.Dense(5, name="d")(y)
    y = L.RepeatVector(3, name="rep")(y)
    seq = L.Dense(2, name="per_step")(y)
    y = L.Flatten(name="flat")(y)
    y = L.Dense(2, name="out")(y)
    return K.Model(x, [y, seq], name="reshape"), [((4, 6), "normal")]


def rnn(K, k2):
    L = K.layers
    x = K.Input((7,), dtype="int32", name="ids")
    e = L.Embedding(20, 4, name="emb")(x)
    y = L.LSTM(5, return_sequences=True, name="lstm")(e)
    y = L.GRU(4, reset_after=False, return_sequences=True, name="gru_before")(y)
    y = L.GRU(3, go_backwards=True, return_sequences=True, name="gru_back")(y)
    y = L.SimpleRNN(3, return_sequences=True, activation="relu", name="srnn")(y)
    outs = [
        y,
        L.Bidirectional(L.LSTM(2), name="bi_concat")(y),
        L.Bidirectional(L.GRU(2, return_sequences=True), merge_mode="sum", name="bi_sum")(y),
        L.Bidirectional(L.SimpleRNN(2, return_sequences=True), merge_mode="mul", name="bi_mul")(y),
        L.Bidirectional(L.LSTM(2), merge_mode="ave", name="bi_ave")(y),
        L.TimeDistributed(L.Dense(2), name="td")(y),
        L.LSTM(2, go_backwards=True, name="lstm_back")(y),
        L.LSTM(2, recurrent_activation="hard_sigmoid", activation="softsign", name="lstm_hard")(y),
        L.GRU(2, name="gru_last")(y),
        L.SimpleRNN(2, name="srnn_last")(y),
    ]
    fwd, bwd = L.Bidirectional(L.GRU(2, reset_after=False, return_sequences=True), merge_mode=None, name="bi_none")(y)
    outs += [fwd, bwd]
    return K.Model(x, outs, name="rnn"), [((7,), "ids20")]


def timedist(K, k2):
    L = K.layers
    x = K.Input((3, 6, 6, 2), name="video")
    y = L.TimeDistributed(L.Conv2D(3, 3, padding="same", activation="relu"), name="td_conv")(x)
    y = L.TimeDistributed(L.MaxPooling2D(2), name="td_pool")(y)
    y = L.TimeDistributed(L.Flatten(), name="td_flat")(y)
    y = L.LSTM(4, name="lstm")(y)
    return K.Model(x, y, name="timedist"), [((3, 6, 6, 2), "normal")]


def nested(K, k2):
    L = K.layers
    inner_seq = K.Sequential(
        [K.Input((6,)), L.Dense(5, name="id1"), L.BatchNormalization(name="ibn"),
         L.BatchNormalization(name="ibn2"), L.Dense(4, name="id2")],
        name="inner_seq",
    )
    fi = K.Input((4,), name="fi")
    inner_fun = K.Model(fi, L.Add(name="fadd")([L.Dense(4, name="fa")(fi), L.Dense(4, name="fb")(fi)]), name="inner_fun")
    a = K.Input((6,), name="a")
    b = K.Input((6,), name="b")
    ya = inner_fun(inner_seq(a))
    yb = inner_seq(b)
    y = L.Dense(3, name="out")(L.Concatenate(name="cat")([ya, yb]))
    return K.Model([a, b], y, name="nested"), [((6,), "normal"), ((6,), "normal")]


def mobilenet(K, k2):
    L = K.layers
    # alpha 0.1 rather than 0.35: the same network builder, a 0.5 MB file instead of 2 MB
    base = K.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.1, include_top=False, weights=None)
    m = K.Sequential([K.Input((32, 32, 3)), base, L.GlobalAveragePooling2D(name="gap"), L.Dense(3, activation="softmax", name="head")],
                     name="transfer")
    return m, [((32, 32, 3), "normal")]


def digits(K, k2):
    L = K.layers
    m = K.Sequential(
        [
            K.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
            L.MaxPooling2D(2, name="pool"),
            L.Flatten(name="flat"),
            L.Dense(16, activation="relu", name="hidden"),
            L.Dense(10, activation="softmax", name="output"),
        ],
        name="digits",
    )
    m.compile(optimizer=K.optimizers.Adam(learning_rate=0.002, beta_1=0.85, beta_2=0.99, epsilon=1e-6),
              loss="sparse_categorical_crossentropy")
    return m, [((8, 8, 1), "unit")]


def fully_conv(K, k2):
    """Saved without a fixed input size (None, None, 3): needs source.input_shape to trace."""
    L = K.layers
    m = K.Sequential([K.Input((None, None, 3)), L.Conv2D(2, 3, padding="same", name="conv"),
                      L.GlobalAveragePooling2D(name="gap")], name="fully_conv")
    return m, [((6, 5, 3), "normal")]


def lambda_model(K, k2):
    L = K.layers
    marker = LAMBDA_MARKER
    # if anything ever ran this layer's code, the marker file would appear in the working directory
    fn = lambda t: (__import__("pathlib").Path(marker).write_text("ran"), t)[1]  # noqa: E731
    m = K.Sequential([K.Input((4,)), L.Dense(3, name="d"), L.Lambda(fn, name="armed_lambda"), L.Dense(2, name="out")],
                     name="lambda_model")
    return m, [((4,), "normal")]


def unknown(K, k2):
    L = K.layers
    m = K.Sequential([K.Input((4,)), L.Dense(3, name="d"), L.UnitNormalization(name="unitnorm")], name="unknown")
    return m, [((4,), "normal")]


def opt_models(K, k2):
    opt = K.optimizers
    opts = {
        "rmsprop": opt.RMSprop(learning_rate=0.01, rho=0.8, momentum=0.1, epsilon=1e-5),
        "adagrad": opt.Adagrad(learning_rate=0.03, epsilon=1e-6),
        "adamw": opt.AdamW(learning_rate=0.004, weight_decay=0.02, beta_1=0.8),
        "sgd": opt.SGD(learning_rate=0.1),
        "adam_amsgrad": opt.Adam(learning_rate=0.001, amsgrad=True),
        "nadam": opt.Nadam(learning_rate=0.001),
    }
    out = {}
    for name, opt in opts.items():
        m = K.Sequential([K.Input((4,)), K.layers.Dense(3, activation="softmax", name="d")], name=f"opt_{name}")
        m.compile(optimizer=opt, loss="mse" if name == "sgd" else "categorical_crossentropy")
        out[f"opt_{name}"] = m
    return out


#: name -> (builder, formats); formats beyond h5 where they add coverage
FIXTURES = {
    "mlp": (mlp, ("h5", "json", "keras")),
    "activations": (activations, ("h5",)),
    "conv2d": (conv2d, ("h5", "json", "keras")),
    "conv2d_b": (conv2d_b, ("h5",)),
    "conv1d": (conv1d, ("h5",)),
    "norm_act": (norm_act, ("h5",)),
    "merge": (merge, ("h5",)),
    "reshape": (reshape, ("h5",)),
    "rnn": (rnn, ("h5",)),
    "timedist": (timedist, ("h5",)),
    "nested": (nested, ("h5", "json", "keras")),
    "mobilenet": (mobilenet, ("h5",)),
    "digits": (digits, ("h5",)),
    "fully_conv": (fully_conv, ("h5",)),
}
K2_SKIP = {"mobilenet"}  # one Keras-applications model (Keras 3) keeps the fixtures small


def make_inputs(specs, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = []
    for shape, kind in specs:
        full = (3, *shape)
        if kind == "ids20":
            xs.append(rng.integers(1, 20, full).astype(np.int32))
        elif kind == "wide":
            xs.append(rng.uniform(-4, 4, full).astype(np.float32))
        elif kind == "unit":
            xs.append(rng.uniform(0, 1, full).astype(np.float32))
        else:
            xs.append(rng.normal(0, 1, full).astype(np.float32))
    return xs


def save(K, k2: bool, model, name: str, formats, out: Path) -> dict[str, list[str]]:
    # .keras and JSON first: Keras 3's legacy h5 writer drops the optimizer from the model's
    # compile config while it writes training_config
    files: dict[str, list[str]] = {}
    if "keras" in formats and not k2:
        model.save(out / f"{name}.keras")
        files["keras"] = [f"{name}.keras"]
    if "json" in formats:
        (out / f"{name}.json").write_text(model.to_json())
        weights = f"{name}_weights.h5" if k2 else f"{name}.weights.h5"
        model.save_weights(out / weights)
        files["json"] = [f"{name}.json", weights]
    if "h5" in formats:
        model.save(out / f"{name}.h5")
        files["h5"] = [f"{name}.h5"]
    return files


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keras2", action="store_true", help="run under tf-keras and write k2/")
    ap.add_argument("--only", nargs="*", help="fixture names to (re)write")
    ap.add_argument("--out", type=Path, help="folder to write to (default: tests/fixtures/keras/k2 or k3)")
    args = ap.parse_args(argv)
    K = _keras(args.keras2)
    out = args.out or ROOT / ("k2" if args.keras2 else "k3")
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["keras_version"] = K.__version__
    fixtures = manifest.setdefault("fixtures", {})
    for i, (name, (builder, formats)) in enumerate(FIXTURES.items()):
        if (args.keras2 and name in K2_SKIP) or (args.only and name not in args.only):
            continue
        K.utils.set_random_seed(i)
        model, specs = builder(K, args.keras2)
        randomize(model, seed=100 + i)
        xs = make_inputs(specs, seed=200 + i)
        ys = model.predict(xs if len(xs) > 1 else xs[0], verbose=0)
        ys = ys if isinstance(ys, (list, tuple)) else [ys]
        np.savez(out / f"{name}.npz", **{f"x{j}": x for j, x in enumerate(xs)},
                 **{f"y{j}": np.asarray(y, dtype=np.float32) for j, y in enumerate(ys)})
        fixtures[name] = {"files": save(K, args.keras2, model, name, formats, out),
                          "inputs": len(xs), "outputs": len(ys)}
        print(f"{name}: {len(xs)} input(s), {len(ys)} output(s)", file=sys.stderr)
    if not args.only or "lambda_model" in args.only:
        model, _ = lambda_model(K, args.keras2)
        model.save(out / "lambda_model.h5")
        (out / "lambda_model.json").write_text(model.to_json())
        if not args.keras2:
            model.save(out / "lambda_model.keras")
        marker = Path(LAMBDA_MARKER)
        marker.unlink(missing_ok=True)  # Keras ran the lambda while building; not a test artefact
    if not args.only or "unknown" in args.only:
        model, _ = unknown(K, args.keras2)
        model.save(out / "unknown.h5")
    if not args.only or "opt" in args.only:
        for name, model in opt_models(K, args.keras2).items():
            model.save(out / f"{name}.h5")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
