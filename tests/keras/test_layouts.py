"""channels_first models, normalization on any axis, 3-D layers and the preprocessing layers:
written by Keras at test time, imported from .h5, JSON + weights and .keras, in both layouts,
equal to Keras's predictions."""

from __future__ import annotations

import numpy as np
import pytest

from tests.keras._live import check, inputs, keras, randomize

CF = "channels_first"


def test_channels_first_2d(tmp_path) -> None:
    K = keras()
    L = K.layers
    x = K.Input((3, 10, 9), name="img")  # Keras's channels-first order: (C, H, W)
    y = L.ZeroPadding2D(((1, 0), (0, 2)), data_format=CF, name="zpad")(x)
    y = L.Conv2D(4, 3, strides=2, padding="same", data_format=CF, activation="relu", name="conv")(y)
    y = L.BatchNormalization(axis=1, name="bn")(y)
    y = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", data_format=CF, name="dw")(y)
    y = L.SeparableConv2D(4, 3, padding="same", data_format=CF, name="sep")(y)
    y = L.UpSampling2D(2, data_format=CF, name="up")(y)
    y = L.Cropping2D(((1, 1), (0, 1)), data_format=CF, name="crop")(y)
    y = L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1, data_format=CF, name="tconv")(y)
    y = L.MaxPooling2D(2, data_format=CF, name="pool")(y)
    y = L.AveragePooling2D(3, strides=1, padding="same", data_format=CF, name="avg")(y)
    flat_cf = L.Dense(3, name="head_cf")(L.Flatten(data_format=CF, name="flat_cf")(y))
    flat = L.Dense(3, name="head")(L.Flatten(name="flat")(y))
    gap = L.GlobalAveragePooling2D(data_format=CF, name="gap")(y)
    gmp = L.GlobalMaxPooling2D(data_format=CF, keepdims=True, name="gmp")(y)
    model = K.Model(x, [y, flat_cf, flat, gap, gmp])
    randomize(model, 1)
    check(model, inputs((3, 10, 9)), tmp_path, "cf2d", cf_model=True)


def test_channels_first_1d_and_mixed(tmp_path) -> None:
    K = keras()
    L = K.layers
    x = K.Input((3, 12), name="seq")  # (channels, steps)
    y = L.Conv1D(4, 3, padding="causal", data_format=CF, name="conv")(x)
    y = L.MaxPooling1D(2, data_format=CF, name="pool")(y)
    y = L.UpSampling1D(2, name="up")(L.Permute((2, 1), name="to_steps")(y))
    z = L.Conv1D(2, 2, name="conv_last")(y)
    g = L.GlobalMaxPooling1D(data_format=CF, name="gmp")(L.Permute((2, 1), name="to_chan")(z))
    model = K.Model(x, [z, g, L.Dense(2, name="d")(L.Flatten(data_format=CF, name="flat")(z))])
    randomize(model, 2)
    check(model, inputs((3, 12)), tmp_path, "cf1d")


def test_normalization_axes(tmp_path) -> None:
    K = keras()
    L = K.layers
    x = K.Input((5, 6, 4), name="img")
    outs = [
        L.BatchNormalization(axis=1, name="bn_h")(x),
        L.BatchNormalization(axis=2, center=False, name="bn_w")(x),
        L.BatchNormalization(axis=-1, name="bn_c")(x),
        L.LayerNormalization(axis=[1, 3], name="ln_hc")(x),
        L.LayerNormalization(axis=-1, rms_scaling=True, name="ln_rms")(x),
        L.GroupNormalization(groups=2, name="gn")(x),
        L.GroupNormalization(groups=3, axis=2, center=False, name="gn_w")(x),
    ]
    c = L.Conv2D(4, 1, name="conv")(x)
    outs += [L.BatchNormalization(axis=1, name="bn_after_conv")(c), L.LayerNormalization(axis=[1, 3], center=False, name="ln_after_conv")(c)]
    s = K.Input((7, 3), name="seq")
    # (Keras's torch backend itself fails on a LayerNormalization over contiguous non-last axes)
    outs += [L.BatchNormalization(axis=1, name="bn_steps")(s), L.GroupNormalization(groups=1, name="gn_seq")(s)]
    model = K.Model([x, s], outs)
    randomize(model, 3)
    check(model, inputs((5, 6, 4), (7, 3)), tmp_path, "axes")


def test_volumes(tmp_path) -> None:
    K = keras()
    L = K.layers
    x = K.Input((6, 7, 5, 2), name="vol")
    y = L.ZeroPadding3D(((1, 0), (0, 1), (1, 1)), name="zpad")(x)
    y = L.Conv3D(3, 3, strides=(1, 2, 1), padding="same", activation="relu", name="conv")(y)
    y = L.SpatialDropout3D(0.3, name="sdrop")(y)
    y = L.BatchNormalization(name="bn")(y)
    y = L.Conv3DTranspose(3, 2, strides=2, padding="valid", name="tconv")(y)
    y = L.Conv3DTranspose(2, 3, strides=2, padding="same", output_padding=1, name="tconv_op")(y)
    y = L.MaxPooling3D(2, name="pool")(y)
    y = L.AveragePooling3D(2, strides=1, padding="same", name="avg")(y)
    y = L.UpSampling3D((1, 2, 1), name="up")(y)
    y = L.Cropping3D(((0, 1), (1, 1), (0, 0)), name="crop")(y)
    outs = [y, L.GlobalAveragePooling3D(name="gap")(y), L.GlobalMaxPooling3D(name="gmp")(y),
            L.Dense(2, name="head")(L.Flatten(name="flat")(y))]
    model = K.Model(x, outs)
    randomize(model, 4)
    check(model, inputs((6, 7, 5, 2)), tmp_path, "vol", volume=True)


def test_volumes_channels_first(tmp_path) -> None:
    K = keras()
    L = K.layers
    x = K.Input((2, 5, 6, 4), name="vol")
    y = L.Conv3D(3, 2, padding="same", data_format=CF, name="conv")(x)
    y = L.BatchNormalization(axis=1, name="bn")(y)
    y = L.MaxPooling3D(2, data_format=CF, name="pool")(y)
    y = L.UpSampling3D(2, data_format=CF, name="up")(y)
    y = L.Conv3DTranspose(2, 3, strides=2, padding="same", data_format=CF, name="tconv")(y)
    model = K.Model(x, [y, L.Dense(2, name="d")(L.Flatten(data_format=CF, name="flat")(y))])
    randomize(model, 5)
    check(model, inputs((2, 5, 6, 4)), tmp_path, "vol_cf", cf_model=True, volume=True)


def test_the_rest(tmp_path) -> None:
    K = keras()
    L = K.layers
    x = K.Input((9, 8, 3), name="img")
    y = L.Rescaling(1 / 2.0, offset=-0.5, name="rescale")(x)
    norm = L.Normalization(name="norm")
    norm.adapt(np.random.default_rng(0).normal(2, 3, (16, 9, 8, 3)).astype(np.float32))
    y = norm(y)
    y = L.GaussianNoise(0.5, name="noise")(y)
    y = L.GaussianDropout(0.3, name="gdrop")(y)
    y = L.SpatialDropout2D(0.3, name="sdrop")(y)
    crop = L.CenterCrop(5, 6, name="ccrop")(y)
    outs = [
        crop,
        L.Resizing(4, 5, name="resize")(y),
        L.Resizing(12, 11, interpolation="nearest", name="resize_nearest")(y),
        L.Resizing(6, 5, interpolation="bicubic", name="resize_bicubic")(y),
        L.Conv2DTranspose(2, 3, strides=2, output_padding=1, name="tconv_op")(crop),
        L.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 0.5, 1.0], name="norm_given")(x),
        L.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 0.5, 1.0], invert=True, name="norm_invert")(x),
    ]
    s = K.Input((7, 3), name="seq")
    z = L.Conv1DTranspose(2, 3, strides=2, output_padding=1, name="tconv1d")(s)
    z2 = L.Conv1DTranspose(2, 4, strides=3, padding="same", output_padding=2, name="tconv1d_same")(s)
    v = K.Input((4,), name="vec")
    r = L.RepeatVector(3, name="rep")(v)
    outs += [z, z2, r, L.Dense(2, name="per_step")(r)]
    model = K.Model([x, s, v], outs)
    randomize(model, 6)
    check(model, inputs((9, 8, 3), (7, 3), (4,)), tmp_path, "rest")


def test_channels_first_refusal_lists_nothing_unsupported() -> None:
    """The old refusal is gone: every spatial converter reads data_format."""
    from tlexp.sources.keras import supported_classes

    names = set(supported_classes())
    for cls in ("Conv3D", "Conv3DTranspose", "Conv1DTranspose", "MaxPooling3D", "AveragePooling3D", "UpSampling3D",
                "ZeroPadding3D", "Cropping3D", "GlobalAveragePooling3D", "GlobalMaxPooling3D", "SpatialDropout3D",
                "GroupNormalization", "Normalization", "CenterCrop", "Resizing"):
        assert cls in names, cls


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_channels_first_model_takes_keras_order_in_both_layouts(tmp_path, layout) -> None:
    """A channels_first model's input is (C, H, W) already: neither layout permutes it."""
    K = keras()
    L = K.layers
    model = K.Sequential([K.Input((2, 6, 5)), L.Conv2D(3, 3, data_format=CF, name="c"), L.Flatten(name="f")])
    randomize(model, 7)
    (tmp_path / "m.json").write_text(model.to_json())
    model.save_weights(tmp_path / "m.weights.h5")
    from tlexp.sources.keras import load_keras

    g = load_keras(tmp_path / "m.json", tmp_path / "m.weights.h5", input_layout=layout)
    assert g.graph_inputs[0].shape == (2, 6, 5)
