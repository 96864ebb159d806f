"""Files tlexp must refuse: one clear line (a SourceError, exit status 2 from the CLI), never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.keras._util import FIXTURES
from tlexp.errors import ConfigError, SourceError
from tlexp.sources.keras import load_keras

MARKER = "tlexp_lambda_was_run.txt"  # what the Lambda fixture's code would write (make_fixtures.py)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("rel", ["k3/lambda_model.h5", "k3/lambda_model.keras", "k2/lambda_model.h5"])
def test_lambda_is_refused_and_never_run(rel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError) as e:
        load_keras(FIXTURES / rel)
    msg = _one_line(e)
    assert "armed_lambda" in msg and "Lambda" in msg
    assert "surgery" in msg and "replace" in msg
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("version", ["k3", "k2"])
def test_lambda_json_is_refused(version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match="armed_lambda"):
        load_keras(FIXTURES / version / "lambda_model.json", FIXTURES / version / "lambda_model.h5")
    assert not (tmp_path / MARKER).exists()


def test_lambda_fixture_is_armed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal test could fail: Keras itself, told to trust the file, does run the code."""
    keras = pytest.importorskip("keras")
    monkeypatch.chdir(tmp_path)
    model = keras.saving.load_model(FIXTURES / "k3" / "lambda_model.keras", safe_mode=False)
    model.predict(np.zeros((1, 4), np.float32), verbose=0)
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("version", ["k3", "k2"])
def test_unknown_layer_class(version: str) -> None:
    with pytest.raises(SourceError) as e:
        load_keras(FIXTURES / version / "unknown.h5")
    msg = _one_line(e)
    assert "'unitnorm'" in msg and "'UnitNormalization'" in msg
    assert "supported:" in msg and "Conv2D" in msg and "LSTM" in msg


def test_truncated_hdf5(tmp_path: Path) -> None:
    src = FIXTURES / "k3" / "conv2d.h5"
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(SourceError) as e:
        load_keras(bad)
    assert "truncated" in _one_line(e)


def test_truncated_keras_zip(tmp_path: Path) -> None:
    src = FIXTURES / "k3" / "mlp.keras"
    bad = tmp_path / "truncated.keras"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(SourceError) as e:
        load_keras(bad)
    _one_line(e)


def test_non_keras_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(10)
    with pytest.raises(SourceError) as e:
        load_keras(path)
    assert "not a Keras model" in _one_line(e)


def test_not_hdf5_at_all(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    path.write_text("hello")
    with pytest.raises(SourceError):
        load_keras(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_keras(tmp_path / "nope.h5")


def test_weights_only_file_as_model() -> None:
    with pytest.raises(SourceError, match="weights-only"):
        load_keras(FIXTURES / "k2" / "mlp_weights.h5")


@pytest.mark.parametrize("version", ["k3", "k2"])
def test_json_without_weights(version: str) -> None:
    with pytest.raises(SourceError, match="weights_path"):
        load_keras(FIXTURES / version / "mlp.json")


@pytest.mark.parametrize(("arch", "weights"), [
    ("k3/mlp.json", "k3/conv2d.weights.h5"),
    ("k2/mlp.json", "k2/conv2d_weights.h5"),
    ("k2/conv2d.json", "k2/nested_weights.h5"),
    ("k3/mlp.json", "k3/nested.weights.h5"),
    ("k2/mlp.json", "k2/nested_weights.h5"),
])
def test_json_with_weights_of_another_model(arch: str, weights: str) -> None:
    with pytest.raises(SourceError) as e:
        load_keras(FIXTURES / arch, FIXTURES / weights)
    assert "do not fit" in _one_line(e)


def test_json_with_weights_of_wrong_shape(tmp_path: Path) -> None:
    weights = tmp_path / "mlp.weights.h5"
    shutil.copy(FIXTURES / "k3" / "mlp.weights.h5", weights)
    with h5py.File(weights, "r+") as f:
        del f["layers/dense_1/vars/0"]
        f["layers/dense_1/vars/0"] = np.zeros((8, 9), np.float32)  # d2 is 8 -> 7
    with pytest.raises(SourceError) as e:
        load_keras(FIXTURES / "k3" / "mlp.json", weights)
    msg = _one_line(e)
    assert "'d2'" in msg and "[9, 8]" in msg and "[7, 8]" in msg


def test_legacy_weights_with_a_missing_layer(tmp_path: Path) -> None:
    weights = tmp_path / "mlp_weights.h5"
    shutil.copy(FIXTURES / "k2" / "mlp_weights.h5", weights)
    with h5py.File(weights, "r+") as f:
        del f["d2"]
    with pytest.raises(SourceError, match="'d2'.*do not fit"):
        load_keras(FIXTURES / "k2" / "mlp.json", weights)


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"class_name": "Sequential", "config": {"layers": 3}}')
    with pytest.raises(SourceError):
        load_keras(path, FIXTURES / "k3" / "mlp.weights.h5")
    cfg = json.loads((FIXTURES / "k3" / "mlp.json").read_text())
    cfg["config"]["layers"][2]["config"]["rate"] = "abc"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="malformed Keras model config"):
        load_keras(path, FIXTURES / "k3" / "mlp.weights.h5")


def test_bad_layout_and_input_shape() -> None:
    with pytest.raises(ConfigError, match="channels_first, channels_last"):
        load_keras(FIXTURES / "k3" / "mlp.h5", input_layout="nhwc")
    with pytest.raises(ConfigError, match="does not fit"):
        load_keras(FIXTURES / "k3" / "mlp.h5", input_shape=[7])


def test_model_saved_without_input_shape(tmp_path: Path) -> None:
    """A config with no InputLayer and no shape: refused until source.input_shape supplies one."""
    cfg = json.loads((FIXTURES / "k3" / "mlp.json").read_text())
    cfg["config"]["layers"] = [lc for lc in cfg["config"]["layers"] if lc["class_name"] != "InputLayer"]
    cfg["config"].pop("build_input_shape", None)
    path = tmp_path / "noshape.json"
    path.write_text(json.dumps(cfg))
    weights = FIXTURES / "k3" / "mlp.weights.h5"
    with pytest.raises(SourceError, match="source.input_shape"):
        load_keras(path, weights)
    from tests.keras._util import data, max_diff, run

    graph = load_keras(path, weights, input_shape=[6])
    xs, ys = data("k3", "mlp")
    assert max_diff(run(graph, xs, "channels_first"), ys) <= 1e-4
