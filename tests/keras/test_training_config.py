"""source.enforce_training_config: the stored optimizer and loss as fine-tune overrides, or a clear refusal."""

from __future__ import annotations

import pytest

from tests.keras._util import FIXTURES
from tlexp.errors import ConfigError
from tlexp.finetune import validate_finetune
from tlexp.sources.keras import load_keras


def _overrides(rel: str) -> dict:
    return load_keras(FIXTURES / rel, enforce_training_config=True).meta["finetune_overrides"]


@pytest.mark.parametrize("version", ["k3", "k2"])
def test_optimizers_map(version: str) -> None:
    rms = _overrides(f"{version}/opt_rmsprop.h5")
    assert rms["optimizer"] == {"_target_": "torch.optim.RMSprop", "alpha": 0.8, "momentum": 0.1, "eps": 1e-5}
    assert rms["lr"] == 0.01 and rms["loss"] == "cross_entropy"
    ada = _overrides(f"{version}/opt_adagrad.h5")
    assert ada["optimizer"]["_target_"] == "torch.optim.Adagrad" and ada["optimizer"]["initial_accumulator_value"] == 0.1
    assert ada["lr"] == 0.03
    adamw = _overrides(f"{version}/opt_adamw.h5")
    assert adamw["optimizer"] == "adamw" and adamw["betas"] == [0.8, 0.999] and adamw["weight_decay"] == 0.02
    ams = _overrides(f"{version}/opt_adam_amsgrad.h5")
    assert ams["optimizer"]["amsgrad"] is True
    digits = _overrides(f"{version}/digits.h5")
    assert digits["optimizer"] == "adam" and digits["lr"] == 0.002
    assert digits["betas"] == [0.85, 0.99] and digits["eps"] == 1e-6
    mlp = _overrides(f"{version}/mlp.h5")
    assert mlp["optimizer"] == "nesterov" and mlp["lr"] == 0.05 and mlp["momentum"] == 0.8
    for o in (rms, ada, adamw, ams, digits, mlp):
        validate_finetune(o)  # what train applies over the user's finetune config is valid


def test_keras3_native_zip_compile_config() -> None:
    mlp = _overrides("k3/mlp.keras")
    assert mlp["optimizer"] == "nesterov" and mlp["lr"] == 0.05 and mlp["loss"] == "cross_entropy"


@pytest.mark.parametrize(("rel", "match"), [
    ("k3/opt_nadam.h5", "'Nadam'.*supported: SGD, Adam"),
    ("k2/opt_nadam.h5", "'Nadam'"),
    ("k3/opt_sgd.h5", "loss 'mse'"),
    ("k2/opt_sgd.h5", "loss 'mse'"),
    ("k3/conv2d.h5", "no training config"),
])
def test_unmappable_configs_fail_clearly(rel: str, match: str) -> None:
    with pytest.raises(ConfigError, match=f"source.enforce_training_config: .*{match}"):
        load_keras(FIXTURES / rel, enforce_training_config=True)


def test_json_has_no_training_config() -> None:
    with pytest.raises(ConfigError, match="no training config"):
        load_keras(FIXTURES / "k2/mlp.json", FIXTURES / "k2/mlp_weights.h5", enforce_training_config=True)


def test_not_enforced_warns_and_adds_nothing() -> None:
    with pytest.warns(UserWarning, match="training config .* is ignored"):
        g = load_keras(FIXTURES / "k2/digits.h5")
    assert "finetune_overrides" not in g.meta
