"""Every committed Keras fixture, in every format and both layouts, equals Keras's predictions."""

from __future__ import annotations

import warnings

import pytest

from tests.keras._util import cases, data, files, max_diff, run
from tlexp.graph import LayerGraph
from tlexp.sources.keras import load_keras

TOL = 1e-4


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize(("version", "name", "fmt"), cases(), ids=lambda v: str(v))
def test_matches_keras_predict(version: str, name: str, fmt: str, layout: str) -> None:
    path, weights = files(version, name, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stored training configs are ignored here on purpose
        graph = load_keras(path, weights, input_layout=layout)
    assert isinstance(graph, LayerGraph)
    xs, ys = data(version, name)
    diff = max_diff(run(graph, xs, layout), ys)
    assert diff <= TOL, f"{version}/{name} ({fmt}, {layout}): max abs difference {diff:.3g}"


def test_every_format_and_version_is_covered() -> None:
    got = {(v, f) for v, _, f in cases()}
    assert {("k3", "h5"), ("k3", "json"), ("k3", "keras"), ("k2", "h5"), ("k2", "json")} <= got
    names = {n for _, n, _ in cases()}
    assert {"mlp", "activations", "conv2d", "conv2d_b", "conv1d", "norm_act", "merge", "reshape", "rnn",
            "timedist", "nested", "mobilenet"} <= names


def test_generator_writes_files_that_import_exactly(tmp_path) -> None:
    """The fixtures come from Keras itself: regenerate two with the committed script and compare."""
    pytest.importorskip("keras")
    import json

    import numpy as np

    from tests.keras import make_fixtures
    from tests.keras._util import max_diff as diff_of

    make_fixtures.main(["--only", "mlp", "conv2d", "--out", str(tmp_path)])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for name in ("mlp", "conv2d"):
        d = np.load(tmp_path / f"{name}.npz")
        for fmt, f in manifest["fixtures"][name]["files"].items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = load_keras(tmp_path / f[0], tmp_path / f[1] if len(f) > 1 else None)
            assert diff_of(run(graph, [d["x0"]], "channels_first"), [d["y0"]]) <= TOL, (name, fmt)
