"""Models saved before the layer contract (Keras and timm layer types in tlexp/graph) still load.

The folders under ``fixtures/saved_before`` were written by main at bd4b55c (see its make.py)
with reference inputs and outputs; loading them today must give the same numbers exactly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tlexp

HERE = Path(__file__).parent / "fixtures" / "saved_before"
MODELS = sorted(p.name for p in HERE.iterdir() if p.is_dir())


def test_the_fixture_has_keras_and_zoo_models():
    assert {"keras_activations", "keras_rnn", "keras_recurrent", "zoo_test_vit"} <= set(MODELS)


def test_the_two_recurrent_names_are_one_type_and_load_as_it():
    from tlexp.graph import get_layer_type, layer_names, list_layers

    lt = get_layer_type("keras_recurrent")
    assert lt is get_layer_type("keras_rnn") and lt.name == "keras_rnn" and "keras_recurrent" in lt.aliases
    assert [t.name for t in list_layers()].count("keras_rnn") == 1
    assert "keras_recurrent" not in [t.name for t in list_layers()] and "keras_recurrent" in layer_names()
    for name in ("keras_rnn", "keras_recurrent"):  # saved under either name: saved again as keras_rnn
        graph = tlexp.load_model(HERE / name)
        types = {n["type"] for n in graph.to_config()["nodes"]}
        assert "keras_rnn" in types and "keras_recurrent" not in types


@pytest.mark.parametrize("name", MODELS)
def test_a_model_saved_before_loads_with_identical_outputs(name):
    graph = tlexp.load_model(HERE / name).eval()
    assert graph.preprocessing is None  # written before preprocessing travelled with a model
    io = load_file(str(HERE / name / "io.safetensors"))
    xs = [io[f"x{i}"] for i in range(sum(k.startswith("x") for k in io))]
    want = [io[f"y{i}"] for i in range(sum(k.startswith("y") for k in io))]
    with torch.no_grad():
        y = graph(*xs)
    got = list(y) if isinstance(y, tuple) else [y]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.slow
def test_a_saved_keras_model_loads_with_only_its_layer_provider_imported():
    code = (
        "import sys, tlexp\n"
        "assert 'tlexp.sources.keras' not in sys.modules, 'imported before it was needed'\n"
        f"g = tlexp.load_model({str(HERE / 'keras_norm_act')!r})\n"
        "assert 'tlexp.sources.keras' in sys.modules\n"
        "assert 'timm' not in sys.modules and 'tlexp.sources.zoo' not in sys.modules\n"
        "assert 'pytorch_lightning' not in sys.modules and 'lightning' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
