"""source=keras through the real entry points: inspect, a featurized transfer run, reload as source=saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tlexp
from tests.conftest import run_cli
from tests.keras._util import FIXTURES, data, run
from tlexp.sources.keras import load_keras
from tlexp.train import run as train_run


def test_inspect_lists_the_keras_layers(compose_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    from tlexp.inspect import inspect_config

    cfg = compose_cfg("source=keras", f"source.path={FIXTURES / 'k3' / 'digits.h5'}", "experiment=none",
                      "inspect.format=json")
    inspect_config(cfg)
    arch = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in arch["nodes"]] == ["conv", "pool", "pool/channels_last", "flat", "hidden", "output"]


@pytest.mark.slow
def test_cli_refuses_a_lambda_file_with_exit_status_2(tmp_path: Path) -> None:
    bad = run_cli(["source=keras", f"source.path={FIXTURES / 'k2' / 'lambda_model.h5'}"], cwd=tmp_path,
                  script="tlexp-inspect")
    assert bad.returncode == 2
    assert "armed_lambda" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "tlexp_lambda_was_run.txt").exists()


@pytest.mark.parametrize("version", ["k2", "k3"])
def test_featurized_transfer_run_saves_and_reloads(compose_cfg, tmp_path: Path, version: str) -> None:
    path = FIXTURES / version / "digits.h5"
    cfg = compose_cfg("source=keras", f"source.path={path}", "experiment=none", "surgery=replace_output",
                      "freeze.up_to=hidden", "freeze.mode=featurize", "trainer.max_epochs=1", "data=digits")
    metrics = train_run(cfg)
    assert metrics["featurize"]["cache_hit"] is False
    assert metrics["freeze"]["frozen"] == ["conv", "pool", "pool/channels_last", "flat", "hidden"]
    saved = tlexp.load_model(tmp_path / "run" / "model")
    keras = load_keras(path)
    # the frozen Keras layers are unchanged in the saved model; the new head replaced 'output'
    for k, v in keras.state_dict().items():
        if not k.startswith("layers.output"):
            assert torch.equal(saved.state_dict()[k], v), k
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["accuracy"] >= 0.0
    xs, _ = data(version, "digits")
    assert run(saved, xs, "channels_first")[0].shape == (3, 10)


def test_enforced_training_config_reaches_the_run(compose_cfg) -> None:
    cfg = compose_cfg("source=keras", f"source.path={FIXTURES / 'k3' / 'digits.h5'}", "experiment=none",
                      "source.enforce_training_config=true", "freeze.up_to=hidden", "trainer.max_epochs=1")
    from tlexp.train import build_model

    _, finetune = build_model(cfg)
    assert finetune["optimizer"] == "adam" and finetune["lr"] == 0.002 and finetune["betas"] == [0.85, 0.99]


@pytest.mark.slow
def test_import_never_imports_keras_or_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from tlexp.sources.keras import load_keras\n"
        f"load_keras({str(FIXTURES / 'k3' / 'nested.keras')!r})\n"
        f"load_keras({str(FIXTURES / 'k2' / 'merge.h5')!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow', 'tf_keras'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
