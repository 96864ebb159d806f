"""source=dl4j: DL4J-written files (tests/fixtures/dl4j, Apache-2.0, see its README)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tlexp.errors import SourceError
from tlexp.sources.dl4j import load_dl4j, load_optimizer_state, read_array_file
from tlexp.sources.dl4j._ndarray import read_array_bytes, write_array, write_utf

FIX = Path(__file__).parent / "fixtures" / "dl4j"
REG = FIX / "regression"
VERSIONS = ["050", "060", "071", "080"]


def _zip(version: str, model: str) -> Path:
    return REG / version / f"{version}_ModelSerializer_Regression_{model}.zip"


def _nodes(g):
    return {n.name: n.module for n in g._nodes}


def _lin(start: int, count: int) -> np.ndarray:
    """DL4J wrote parameters as linspace(1, n): value at flat position i is i + 1."""
    return np.arange(start + 1, start + count + 1, dtype=np.float32)


# ---- the ND4J array format ------------------------------------------------------------------


@pytest.mark.parametrize("version", [*VERSIONS, "100b3", "100b4"])
def test_nd4j_arrays_of_every_version(version: str) -> None:
    files = sorted((REG / version).glob("*.zip")) + sorted((REG / version).glob("*_100*.bin"))
    assert files
    for f in files:
        if zipfile.is_zipfile(f):
            a = read_array_bytes(zipfile.ZipFile(f).read("coefficients.bin"))
            assert a.ndim == 2 and a.shape[0] == 1
            if version in VERSIONS:
                np.testing.assert_array_equal(a.ravel(), _lin(0, a.size))
        else:
            a = read_array_file(f)
            assert a.size > 0 and np.isfinite(a).all()


def test_half_float_double_inputs_agree() -> None:
    d = REG / "100b4"
    half = read_array_file(d / "CustomLayerExample_Input_100b4_half.bin")
    flt = read_array_file(d / "CustomLayerExample_Input_100b4_float.bin")
    dbl = read_array_file(d / "CustomLayerExample_Input_100b4_double.bin")
    assert (half.dtype, flt.dtype, dbl.dtype) == (np.float16, np.float32, np.float64)
    np.testing.assert_allclose(half, dbl, atol=1e-3)
    np.testing.assert_allclose(flt, dbl, atol=1e-7)


def test_strided_array_view_is_read_by_its_strides() -> None:
    # DL4J's SyntheticCNN output is an NHWC-backed view written with strides [968, 1, 88, 4]
    y = read_array_file(REG / "100b4" / "SyntheticCNN_Output_100b4.bin")
    assert y.shape == (4, 4, 11, 22)


def test_write_array_round_trips() -> None:
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    buf = io.BytesIO()
    write_array(buf, a)
    np.testing.assert_array_equal(read_array_bytes(buf.getvalue()), a)


# ---- parameter mapping, exact, on every regression zip -------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_mlp_parameters_mapped_exactly(version: str) -> None:
    for model in ("MLP_1", "MLP_2"):
        g = load_dl4j(_zip(version, model))
        m = _nodes(g)
        # layer 0: W [nIn=3, nOut=4] in 'f' order (position i + j*3), then b
        w = _lin(0, 12).reshape(3, 4, order="F")
        torch.testing.assert_close(m["layer0"].weight, torch.from_numpy(w.T.copy()))
        torch.testing.assert_close(m["layer0"].bias, torch.from_numpy(_lin(12, 4)))
        w1 = _lin(16, 20).reshape(4, 5, order="F")
        torch.testing.assert_close(m["layer1"].weight, torch.from_numpy(w1.T.copy()))
        torch.testing.assert_close(m["layer1"].bias, torch.from_numpy(_lin(36, 5)))
        assert [n.name for n in g._nodes][-2:] == ["layer0", "layer1"]


@pytest.mark.parametrize("version", VERSIONS)
def test_cnn_parameters_mapped_exactly(version: str) -> None:
    g = load_dl4j(_zip(version, "CNN_1"))
    m = _nodes(g)
    # convolution: bias first (3), then W [nOut=3, nIn=3, 2, 2] in 'c' order
    torch.testing.assert_close(m["layer0"].bias, torch.from_numpy(_lin(0, 3)))
    torch.testing.assert_close(m["layer0"].weight, torch.from_numpy(_lin(3, 36).reshape(3, 3, 2, 2)))
    n_in = 26 * 26 * 3
    w = _lin(39, n_in * 5).reshape(n_in, 5, order="F")
    torch.testing.assert_close(m["layer2"].weight, torch.from_numpy(w.T.copy()))
    torch.testing.assert_close(m["layer2"].bias, torch.from_numpy(_lin(39 + n_in * 5, 5)))
    # 0.7.1 and 0.8.0 wrote this network with ConvolutionMode.Same: 26x26 in keeps nIn = 26*26*3
    size = 26 if m["layer0"].same else 28
    y = g(torch.rand(2, 3, size, size))
    assert y.shape == (2, 5)


def _check_graves(cell, start: int, n_in: int, n: int) -> int:
    nw, nr = n_in * 4 * n, n * (4 * n + 3)
    torch.testing.assert_close(cell.W, torch.from_numpy(_lin(start, nw).reshape(n_in, 4 * n, order="F").copy()))
    torch.testing.assert_close(cell.RW, torch.from_numpy(_lin(start + nw, nr).reshape(n, 4 * n + 3, order="F").copy()))
    torch.testing.assert_close(cell.b, torch.from_numpy(_lin(start + nw + nr, 4 * n)))
    return start + nw + nr + 4 * n


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("model", ["LSTM_1", "CG_LSTM_1"])
def test_lstm_parameters_mapped_exactly(version: str, model: str) -> None:
    if version == "050":
        pytest.skip("DL4J 0.5.0 wrote no LSTM regression models")
    g = load_dl4j(_zip(version, model))
    names = [n.name for n in g._nodes]
    m = _nodes(g)
    first, second, out = names
    i = _check_graves(m[first].cell, 0, 3, 4)  # GravesLSTM 3 -> 4, peepholes in RW's last 3 columns
    i = _check_graves(m[second].fwd, i, 4, 4)  # GravesBidirectionalLSTM: forward block, then backward
    i = _check_graves(m[second].bwd, i, 4, 4)
    assert m[second].mode == "add"
    w = _lin(i, 20).reshape(4, 5, order="F")
    torch.testing.assert_close(m[out].weight, torch.from_numpy(w.T.copy()))
    torch.testing.assert_close(m[out].bias, torch.from_numpy(_lin(i + 20, 5)))
    y = g(torch.rand(2, 3, 7) * 1e-3)
    assert y.shape == (2, 5, 7)  # [batch, features, time] in, out
    torch.testing.assert_close(y.sum(1), torch.ones(2, 7))  # softmax over the features


def test_dropout_is_read_as_a_retain_probability() -> None:
    # MLP_2: .dropOut(0.6) in DL4J keeps 60% of the activations: torch p = 0.4
    g = load_dl4j(_zip("080", "MLP_2"))
    assert g.node("layer0").args["dropout"] == pytest.approx(0.4)


# ---- parity with DL4J's own outputs --------------------------------------------------------


@pytest.mark.parametrize("name", ["SyntheticCNN", "SyntheticBidirectionalRNNGraph"])
def test_outputs_equal_dl4j_outputs(name: str) -> None:
    d = REG / "100b4"
    g = load_dl4j(d / f"{name}_100b4.bin")
    assert not g.training
    x = torch.from_numpy(read_array_file(d / f"{name}_Input_100b4.bin"))
    want = torch.from_numpy(read_array_file(d / f"{name}_Output_100b4.bin"))
    with torch.no_grad():
        got = g(x)
    assert got.shape == want.shape
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= 1e-5 * scale


def test_synthetic_cnn_layer_names_and_types() -> None:
    g = load_dl4j(REG / "100b4" / "SyntheticCNN_100b4.bin")
    assert [(n.name, n.type) for n in g._nodes] == [
        ("layer0", "conv2d"), ("layer1", "separable_conv2d"), ("layer2", "dl4j_pool"), ("layer3", "zero_padding2d"),
        ("layer4", "upsample2d"), ("layer5", "depthwise_conv2d"), ("layer6", "dl4j_pool"), ("layer7", "cropping2d"),
        ("layer8", "conv2d"), ("layer9", "identity"),
    ]


@pytest.mark.parametrize("name", ["MLPMoon", "RnnCsvSequenceClassification1", "RnnCsvSequenceClassification2",
                                  "CNN1dCharacterTestCase"])
def test_integration_models_load_and_run(name: str) -> None:
    g = load_dl4j(FIX / "integration" / name / "Model_RANDOM_INIT_UNTRAINED.zip")
    assert not g.training
    shapes = {"MLPMoon": (3, 2), "RnnCsvSequenceClassification1": (3, 6, 5),
              "RnnCsvSequenceClassification2": (3, 6, 5), "CNN1dCharacterTestCase": None}
    first = g._nodes[0].module
    n_in = getattr(first, "in_features", None) or getattr(getattr(first, "cell", None), "n_in", None)
    if name == "RnnCsvSequenceClassification2":
        n_in = first.fwd.n_in
    if name == "CNN1dCharacterTestCase":
        x = torch.rand(3, first.conv.in_channels, 12)
    elif name == "MLPMoon":
        x = torch.rand(3, n_in)
    else:
        x = torch.rand(3, n_in, 5)
    with torch.no_grad():
        y = g(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y.sum(1), torch.ones_like(y.sum(1)), atol=1e-5)  # softmax outputs
    del shapes


# ---- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("f", sorted(p.name for p in REG.glob("*/CustomLayerExample*") if "_Input" not in p.name
                                     and "_Output" not in p.name))
def test_custom_layer_is_refused_naming_it(f: str) -> None:
    path = next(REG.glob(f"*/{f}"))
    with pytest.raises(SourceError, match="CustomLayer") as e:
        load_dl4j(path)
    assert "\n" not in str(e.value)
    if "100b" in f:
        assert "org.deeplearning4j.regressiontest.customlayer100a.CustomLayer" in str(e.value)


def _rezip(src: Path, dst: Path, drop: str | None = None, replace: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for n in zin.namelist():
            if n == drop:
                continue
            zout.writestr(n, (replace or {}).get(n, zin.read(n)))
        for n, b in (replace or {}).items():
            if n not in zin.namelist():
                zout.writestr(n, b)
    return dst


@pytest.mark.parametrize("missing", ["configuration.json", "coefficients.bin"])
def test_zip_without_an_entry_is_refused(tmp_path: Path, missing: str) -> None:
    p = _rezip(_zip("080", "MLP_1"), tmp_path / "m.zip", drop=missing)
    with pytest.raises(SourceError, match=f"lacks {missing}"):
        load_dl4j(p)


def test_parameter_count_mismatch_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    write_array(buf, np.zeros((1, 40), dtype=np.float32))
    p = _rezip(_zip("080", "MLP_1"), tmp_path / "m.zip", replace={"coefficients.bin": buf.getvalue()})
    with pytest.raises(SourceError, match="holds 40 parameters but the configuration needs 41"):
        load_dl4j(p)


def test_truncated_array_is_refused(tmp_path: Path) -> None:
    raw = zipfile.ZipFile(_zip("080", "MLP_1")).read("coefficients.bin")
    p = _rezip(_zip("080", "MLP_1"), tmp_path / "m.zip", replace={"coefficients.bin": raw[:-10]})
    with pytest.raises(SourceError, match="truncated array"):
        load_dl4j(p)


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "m.zip"
    p.write_bytes(b"hello")
    with pytest.raises(SourceError, match="not a DL4J model zip"):
        load_dl4j(p)


def _rewrite_zip(src: Path, dst: Path, **entries: bytes) -> Path:
    """A copy of a DL4J zip with some entries replaced (name -> bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, entries.get(item.filename.replace(".", "_"), zin.read(item.filename)))
    return dst


def test_unsupported_layer_is_refused_naming_it(tmp_path: Path) -> None:
    src = FIX / "integration" / "Cnn3dSynthetic" / "Model_RANDOM_INIT_UNTRAINED.zip"
    conf = zipfile.ZipFile(src).read("configuration.json").replace(b"layers.Convolution3D", b"layers.Deconvolution3D")
    with pytest.raises(SourceError, match="Deconvolution3D is not supported"):
        load_dl4j(_rewrite_zip(src, tmp_path / "m.zip", configuration_json=conf))


# ---- 3-D convolution (the Cnn3dSynthetic integration model) ---------------------------------

CNN3D = FIX / "integration" / "Cnn3dSynthetic" / "Model_RANDOM_INIT_UNTRAINED.zip"


def test_cnn3d_synthetic_loads_and_runs_on_its_input_shape() -> None:
    g = load_dl4j(CNN3D)
    assert not g.training
    assert [(n.name, n.type) for n in g._nodes] == [
        ("layer0", "conv3d"), ("layer1", "dl4j_pool"), ("layer2_preprocessor", "flatten"), ("layer2", "dense"),
    ]
    # Convolution3D 3->8, kernel 3x3x3, bias; OutputLayer 8*2*2*2 -> 10 (the preprocessor's declared shape)
    assert sum(p.numel() for p in g.parameters()) == (3 * 8 * 27 + 8) + (8 * 2 * 2 * 2 * 10 + 10) == 1306
    x = torch.rand(2, 3, 8, 8, 8)  # InputType.convolutional3D(8, 8, 8, 3), NCDHW
    with torch.no_grad():
        y = g(x)
    assert y.shape == (2, 10)
    assert torch.allclose(y.sum(1), torch.ones(2), atol=1e-5)


def test_cnn3d_parameter_mapping_and_one_output_by_hand(tmp_path: Path) -> None:
    # the fixture's configuration with parameters linspace(1, n): every position is checkable
    n = 1306
    buf = io.BytesIO()
    write_array(buf, (np.arange(1, n + 1, dtype=np.float32) / n).reshape(1, -1))
    g = load_dl4j(_rewrite_zip(CNN3D, tmp_path / "m.zip", coefficients_bin=buf.getvalue()))
    conv = _nodes(g)["layer0"].conv
    flat = np.arange(1, n + 1, dtype=np.float32) / n
    # Convolution3DParamInitializer: bias [8] first, then W [nOut, nIn, kD, kH, kW] in 'c' order
    np.testing.assert_allclose(conv.bias.detach().numpy(), flat[:8])
    np.testing.assert_allclose(conv.weight.detach().numpy(), flat[8:656].reshape(8, 3, 3, 3, 3))
    dense = _nodes(g)["layer2"]
    np.testing.assert_allclose(dense.weight.detach().numpy(), flat[656:1296].reshape(64, 10, order="F").T)
    np.testing.assert_allclose(dense.bias.detach().numpy(), flat[1296:])
    # one convolution output by hand: Same mode, stride 2 on 8 -> 4 outputs, the one padding
    # position at the end (libnd4j's same-mode padding), so output (1,1,1) reads inputs 2..4
    x = torch.rand(1, 3, 8, 8, 8)
    w = flat[8:656].reshape(8, 3, 3, 3, 3)
    want = float((x[0, :, 2:5, 2:5, 2:5].numpy() * w[5]).sum() + flat[5])
    with torch.no_grad():
        conv_out = _nodes(g)["layer0"](x)
    assert abs(float(conv_out[0, 5, 1, 1, 1]) - want) <= 1e-4 * abs(want)
    # the last output position sees the zero padding: inputs 6, 7 and one zero
    edge = float((x[0, :, 6:8, 6:8, 6:8].numpy() * w[0][:, :2, :2, :2]).sum() + flat[0])
    assert abs(float(conv_out[0, 0, 3, 3, 3]) - edge) <= 1e-4 * abs(edge)


# ---- normalizer.bin --------------------------------------------------------------------------


def _standardize_bin(mean: np.ndarray, std: np.ndarray) -> bytes:
    buf = io.BytesIO()
    write_utf(buf, "NORMALIZER")
    buf.write((1).to_bytes(4, "big"))
    write_utf(buf, "STANDARDIZE")
    buf.write(b"\x00")
    write_array(buf, mean.reshape(1, -1))
    write_array(buf, std.reshape(1, -1))
    return buf.getvalue()


def test_normalizer_becomes_the_first_node(tmp_path: Path) -> None:
    src = FIX / "integration" / "MLPMoon" / "Model_RANDOM_INIT_UNTRAINED.zip"
    mean, std = np.array([0.5, -2.0], np.float32), np.array([2.0, 0.0], np.float32)  # a zero std divides by 1
    p = _rezip(src, tmp_path / "n.zip", replace={"normalizer.bin": _standardize_bin(mean, std)})
    g = load_dl4j(p)
    assert g._nodes[0].name == "normalizer" and g._nodes[0].type == "normalize"
    plain = load_dl4j(p, normalizer=False)
    assert plain._nodes[0].name != "normalizer"
    x = torch.tensor([[1.0, 3.0], [0.0, -1.0]])
    xn = (x - torch.from_numpy(mean)) / torch.tensor([2.0, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(g(x), plain(xn))
    torch.testing.assert_close(g._nodes[0].module.mean.reshape(-1), torch.from_numpy(mean))


def test_min_max_and_image_normalizers(tmp_path: Path) -> None:
    import struct

    src = FIX / "integration" / "MLPMoon" / "Model_RANDOM_INIT_UNTRAINED.zip"
    buf = io.BytesIO()
    write_utf(buf, "NORMALIZER")
    buf.write((1).to_bytes(4, "big"))
    write_utf(buf, "MIN_MAX")
    buf.write(b"\x00" + struct.pack(">dd", -1.0, 1.0))  # NormalizerMinMaxScaler(-1, 1)
    write_array(buf, np.array([[0.0, 5.0]], np.float32))  # min
    write_array(buf, np.array([[4.0, 5.0]], np.float32))  # max (a zero range divides by 1)
    g = load_dl4j(_rezip(src, tmp_path / "m.zip", replace={"normalizer.bin": buf.getvalue()}))
    plain = load_dl4j(src, normalizer=False)
    x = torch.tensor([[1.0, 7.0], [4.0, 5.0]])
    want = torch.stack([(x[:, 0] - 0.0) / 4.0 * 2.0 - 1.0, (x[:, 1] - 5.0) / 1.0 * 2.0 - 1.0], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(g(x), plain(want))
    # ImagePreProcessingScaler(0, 1) on 8-bit pixels, and a standardizer on a 3-D convolution's channels
    img = io.BytesIO()
    write_utf(img, "NORMALIZER")
    img.write((1).to_bytes(4, "big"))
    write_utf(img, "IMAGE_MIN_MAX")
    img.write(struct.pack(">ddd", 0.0, 1.0, 255.0))
    g3 = load_dl4j(_rezip(CNN3D, tmp_path / "i.zip", replace={"normalizer.bin": img.getvalue()}))
    plain3 = load_dl4j(CNN3D, normalizer=False)
    x3 = torch.randint(0, 256, (2, 3, 8, 8, 8)).float()
    with torch.no_grad():
        torch.testing.assert_close(g3(x3), plain3(x3 / 255.0))
    mean, std = np.array([1.0, 2.0, 3.0], np.float32), np.array([2.0, 4.0, 8.0], np.float32)
    s3 = load_dl4j(_rezip(CNN3D, tmp_path / "s.zip", replace={"normalizer.bin": _standardize_bin(mean, std)}))
    with torch.no_grad():
        want3 = plain3((x3 - torch.from_numpy(mean).view(1, 3, 1, 1, 1)) / torch.from_numpy(std).view(1, 3, 1, 1, 1))
        torch.testing.assert_close(s3(x3), want3)


def test_java_serialized_normalizer_is_refused(tmp_path: Path) -> None:
    src = FIX / "integration" / "MLPMoon" / "Model_RANDOM_INIT_UNTRAINED.zip"
    p = _rezip(src, tmp_path / "n.zip", replace={"normalizer.bin": b"\xac\xed\x00\x05sr"})
    with pytest.raises(SourceError, match="Java-serialized"):
        load_dl4j(p)
    assert load_dl4j(p, normalizer=False) is not None


# ---- updaterState.bin -> optimizer state -------------------------------------------------------


def test_nesterov_momentum_is_mapped_and_one_step_equals_dl4j_s() -> None:
    from tlexp import finetune as ft
    from tlexp.module import state_by_name

    g = load_dl4j(_zip("080", "MLP_1"), load_optimizer_state=True)
    assert g.meta["finetune_overrides"] == {"optimizer": "nesterov", "lr": 0.15, "momentum": 0.9}
    by_name = load_optimizer_state(_zip("080", "MLP_1"))["by_name"]
    lr, mu = 0.15, 0.9
    v0 = _lin(0, 12).reshape(3, 4, order="F").T  # DL4J's v for layer0's W, laid out like W
    torch.testing.assert_close(by_name["layers.layer0.weight"]["momentum_buffer"], torch.from_numpy(-v0 / lr))
    torch.testing.assert_close(by_name["layers.layer1.bias"]["momentum_buffer"], torch.from_numpy(-_lin(36, 5) / lr))
    # one step from here equals DL4J's Nesterovs update: v = mu v - lr g; p += (1 + mu) v - mu v_prev
    opt = ft.build_optimizer(g, {"optimizer": "nesterov", "lr": lr, "momentum": mu})
    ft.load_optimizer_state(opt, state_by_name(opt, g, by_name))
    w = g.layers["layer0"].weight
    before = w.detach().clone()
    grad = torch.linspace(-1.0, 1.0, w.numel()).reshape(w.shape)
    for p in g.parameters():
        p.grad = torch.zeros_like(p)
    w.grad = grad.clone()
    opt.step()
    v_prev = torch.from_numpy(v0)
    v = mu * v_prev - lr * grad
    torch.testing.assert_close(w.detach(), before + (1 + mu) * v - mu * v_prev, rtol=1e-5, atol=1e-5)


def test_adam_moments_are_mapped_block_by_block(tmp_path: Path) -> None:
    src = REG / "100b4" / "SyntheticCNN_100b4.bin"
    buf = io.BytesIO()
    write_array(buf, _lin(0, 2 * 1304).reshape(1, -1))  # [m of all 1304 params | v of all 1304]
    p = _rezip(src, tmp_path / "a.zip", replace={"updaterState.bin": buf.getvalue()})
    g = load_dl4j(p, load_optimizer_state=True)
    assert g.meta["finetune_overrides"]["optimizer"] == "adam"
    assert g.meta["finetune_overrides"]["lr"] == pytest.approx(0.005)
    s = load_optimizer_state(p)["by_name"]
    torch.testing.assert_close(s["layers.layer0.conv.bias"]["exp_avg"], torch.from_numpy(_lin(0, 4)))
    torch.testing.assert_close(s["layers.layer0.conv.weight"]["exp_avg"], torch.from_numpy(_lin(4, 36).reshape(4, 1, 3, 3)))
    torch.testing.assert_close(s["layers.layer0.conv.bias"]["exp_avg_sq"], torch.from_numpy(_lin(1304, 4)))
    torch.testing.assert_close(s["layers.layer8.conv.bias"]["exp_avg_sq"], torch.from_numpy(_lin(1304 + 276, 4)))
    assert float(s["layers.layer0.conv.bias"]["step"]) == 0.0


def test_missing_updater_state_is_refused(tmp_path: Path) -> None:
    p = _rezip(_zip("080", "MLP_1"), tmp_path / "m.zip", drop="updaterState.bin")
    with pytest.raises(SourceError, match="no updaterState.bin"):
        load_dl4j(p, load_optimizer_state=True)
    assert load_dl4j(p) is not None


def test_every_loader_returns_inference_mode(tmp_path: Path) -> None:
    import tlexp
    from tlexp._resources import resolve_path
    from tlexp.sources.keras import load_keras

    assert not tlexp.load_model(resolve_path("pkg://models/churn_net")).training
    assert not load_dl4j(_zip("080", "MLP_2")).training
    keras_file = Path(__file__).parent / "fixtures" / "keras" / "k3" / "conv1d.h5"
    assert not load_keras(keras_file).training


# ---- DL4J's input preprocessors: the reshapes DL4J computes -----------------------------------


def test_preprocessor_nodes_reshape_as_dl4j() -> None:
    from tlexp.graph import build_layer

    mb, size, t = 2, 3, 4
    x = torch.arange(mb * size * t, dtype=torch.float32).reshape(mb, size, t)
    rows = build_layer("dl4j_rnn_to_ff", {})(x)
    # DL4J: permute(0, 2, 1) then an 'f'-order reshape to [mb*T, size]: row t*mb + b is x[b, :, t]
    assert rows.shape == (mb * t, size)
    for b in range(mb):
        for s in range(t):
            torch.testing.assert_close(rows[s * mb + b], x[b, :, s])
    back = build_layer("dl4j_ff_to_rnn", {})(rows, torch.zeros(mb, 1))
    torch.testing.assert_close(back, x)

    c, h, w = 2, 3, 2
    imgs = torch.arange(mb * t * c * h * w, dtype=torch.float32).reshape(mb * t, c, h, w)
    seq = build_layer("dl4j_cnn_to_rnn", {})(imgs, torch.zeros(mb, 1))
    assert seq.shape == (mb, c * h * w, t)
    for b in range(mb):
        for s in range(t):
            torch.testing.assert_close(seq[b, :, s], imgs[s * mb + b].reshape(-1))
    again = build_layer("dl4j_rnn_to_cnn", {"channels": c, "height": h, "width": w})(seq)
    torch.testing.assert_close(again, imgs)


def _layer(cls: str, n_in: int, n_out: int, name: str, **extra) -> dict:
    act = {"@class": "org.nd4j.linalg.activations.impl.ActivationIdentity"}
    return {"layer": {"@class": f"org.deeplearning4j.nn.conf.layers.{cls}", "activationFn": act, "nin": n_in,
                      "nout": n_out, "layerName": name, "hasBias": True, **extra}}


def _pre(cls: str, **fields) -> dict:
    return {"@class": f"org.deeplearning4j.nn.conf.preprocessor.{cls}", **fields}


def test_rnn_feedforward_preprocessors_in_a_network() -> None:
    from tlexp.sources.dl4j import build_graph

    lstm = _layer("LSTM", 3, 4, "layer0", forgetGateBiasInit=1.0,
                  gateActivationFn={"@class": "org.nd4j.linalg.activations.impl.ActivationSigmoid"})
    conf = {"confs": [lstm, _layer("DenseLayer", 4, 5, "layer1"), _layer("RnnOutputLayer", 5, 2, "layer2")],
            "inputPreProcessors": {"1": _pre("RnnToFeedForwardPreProcessor"), "2": _pre("FeedForwardToRnnPreProcessor")}}
    g = build_graph(conf)[0].eval()
    m = _nodes(g)
    x = torch.randn(2, 3, 5)
    with torch.no_grad():
        y = g(x)
        h = m["layer0"](x)  # [2, 4, 5]
        step = torch.stack([m["layer1"](h[:, :, s]) for s in range(5)], dim=2)
        want = m["layer2"](step)
        # the dense layer sees DL4J's [mb*T, size] rows
        rows = m["layer1_preprocessor"](h)
    assert rows.shape == (10, 4)
    assert y.shape == (2, 2, 5)
    torch.testing.assert_close(y, want)


def test_cnn_rnn_preprocessors_in_a_network() -> None:
    from tlexp.sources.dl4j import build_graph

    conv = _layer("ConvolutionLayer", 3, 2, "layer0", kernelSize=[1, 1], stride=[1, 1], padding=[0, 0],
                  convolutionMode="Truncate", dilation=[1, 1])
    conf = {"confs": [conv, _layer("RnnOutputLayer", 8, 2, "layer1")],
            "inputPreProcessors": {"0": _pre("RnnToCnnPreProcessor", inputHeight=2, inputWidth=2, numChannels=3),
                                   "1": _pre("CnnToRnnPreProcessor", inputHeight=2, inputWidth=2, numChannels=2)}}
    g = build_graph(conf)[0].eval()
    m = _nodes(g)
    x = torch.randn(3, 12, 4)  # [mb, c*h*w, T]
    with torch.no_grad():
        y = g(x)
        per_step = torch.stack([m["layer0"](x[:, :, s].reshape(3, 3, 2, 2)).reshape(3, -1) for s in range(4)], dim=2)
        want = m["layer1"](per_step)
    assert y.shape == (3, 2, 4)
    torch.testing.assert_close(y, want)


def test_integration_rnn_fixture_with_rnn_to_feedforward_preprocessor() -> None:
    """DL4J's RnnCsvSequenceClassification1 with its GlobalPooling swapped for RnnToFeedForward: the
    output layer then scores every time step as DL4J's [mb*T, nOut] rows."""
    import json

    from tlexp.sources.dl4j import build_graph

    src = FIX / "integration" / "RnnCsvSequenceClassification1"
    conf = json.loads((src / "config.mlc.json").read_text())
    del conf["confs"][1]
    conf["inputPreProcessors"] = {"1": _pre("RnnToFeedForwardPreProcessor")}
    g = build_graph(conf)[0].eval()
    m = _nodes(g)
    n_in = conf["confs"][0]["layer"]["nin"]
    x = torch.randn(2, n_in, 3)
    with torch.no_grad():
        y = g(x)
        h = m["layer0"](x)
    assert y.shape == (2 * 3, conf["confs"][1]["layer"]["nout"])
    with torch.no_grad():
        torch.testing.assert_close(y[1 * 2 + 0], m["layer2"](h[0, :, 1][None])[0])


def _mln(*layers: dict) -> dict:
    return {"confs": [{"layer": {"@class": f"org.deeplearning4j.nn.conf.layers.{cls}", **f}} for cls, f in layers]}


_IDENTITY = {"@class": "org.nd4j.linalg.activations.impl.ActivationIdentity"}


def test_causal_convolution1d_sees_only_the_past() -> None:
    from tlexp.sources.dl4j import build_graph

    conf = _mln(("Convolution1DLayer", {"nin": 1, "nout": 1, "kernelSize": [3, 1], "stride": [1, 1], "padding": [0, 0],
                                        "dilation": [2, 1], "convolutionMode": "Causal", "activationFn": _IDENTITY}))
    g, built, _ = build_graph(conf)
    built[0].assign(np.array([0.5, 1.0, 2.0, 4.0], dtype=np.float32))  # b, then W [nOut, nIn, k]
    x = torch.arange(1.0, 8.0).reshape(1, 1, 7)
    with torch.no_grad():
        y = g(x)[0, 0]
    # y_t = b + 1*x_{t-4} + 2*x_{t-2} + 4*x_t (dilation 2), zeros before the sequence; same length
    xs = [0.0] * 4 + list(range(1, 8))
    want = [0.5 + xs[t] + 2 * xs[t + 2] + 4 * xs[t + 4] for t in range(7)]
    np.testing.assert_allclose(y.numpy(), want)


def test_ndhwc_convolution3d_pooling_and_prelu() -> None:
    from tlexp.sources.dl4j import build_graph

    conf = _mln(("Convolution3D", {"nin": 2, "nout": 3, "kernelSize": [2, 2, 2], "stride": [1, 1, 1],
                                   "convolutionMode": "Truncate", "dataFormat": "NDHWC", "activationFn": _IDENTITY}),
                ("Subsampling3DLayer", {"kernelSize": [2, 2, 2], "stride": [2, 2, 2], "poolingType": "AVG",
                                        "convolutionMode": "Truncate", "dataFormat": "NDHWC"}),
                ("PReLULayer", {"inputShape": [2, 2, 2, 3], "sharedAxes": [1, 2, 3]}))
    g, built, _ = build_graph(conf)
    assert [b.n_params for b in built] == [3 + 2 * 3 * 8, 0, 3]
    flat = np.linspace(-1, 1, 51, dtype=np.float32)
    built[0].assign(flat)
    built[2].assign(np.array([0.1, 0.2, 0.3], dtype=np.float32))
    x = torch.rand(1, 5, 5, 5, 2)  # channels last, as DL4J's output() takes NDHWC
    with torch.no_grad():
        y = g(x)
    assert y.shape == (1, 2, 2, 2, 3)
    # by hand with the NCDHW reference: conv, average pool, then PReLU with one slope per channel
    ref = torch.nn.functional.conv3d(x.permute(0, 4, 1, 2, 3), torch.from_numpy(flat[3:].reshape(3, 2, 2, 2, 2)),
                                     torch.from_numpy(flat[:3]))
    ref = torch.nn.functional.avg_pool3d(ref, 2, 2).permute(0, 2, 3, 4, 1)
    ref = torch.where(ref >= 0, ref, ref * torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(y, ref, atol=1e-6)


def test_deconvolution2d_same_mode_as_libnd4j() -> None:
    """Deconvolution2D, convolutionMode Same: output = stride * input; libnd4j's deconv2d places
    input pixel i's kernel at output i*s + kk - floor((k - s) / 2)."""
    from tlexp.sources.dl4j import build_graph

    conf = _mln(("Deconvolution2D", {"nin": 2, "nout": 3, "kernelSize": [3, 4], "stride": [2, 2], "padding": [0, 0],
                                     "dilation": [1, 1], "convolutionMode": "Same", "activationFn": _IDENTITY}))
    g, built, _ = build_graph(conf)
    assert built[0].n_params == 3 + 2 * 3 * 3 * 4
    flat = np.linspace(-1, 1, built[0].n_params).astype(np.float32)
    built[0].assign(flat)  # b [3], then W [nIn, nOut, kH, kW] 'c'
    b, w = flat[:3], flat[3:].reshape(2, 3, 3, 4)
    x = np.random.default_rng(0).normal(size=(1, 2, 4, 5)).astype(np.float32)
    with torch.no_grad():
        y = g(torch.from_numpy(x))[0].numpy()
    assert y.shape == (3, 8, 10)
    want = np.zeros((3, 8, 10), np.float32) + b[:, None, None]
    ph, pw = (3 - 2) // 2, (4 - 2) // 2
    for ci in range(2):
        for i in range(4):
            for j in range(5):
                for a in range(3):
                    for c in range(4):
                        r, q = i * 2 + a - ph, j * 2 + c - pw
                        if 0 <= r < 8 and 0 <= q < 10:
                            want[:, r, q] += x[0, ci, i, j] * w[ci, :, a, c]
    np.testing.assert_allclose(y, want, atol=1e-5)
