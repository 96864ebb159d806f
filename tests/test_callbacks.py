"""Choosing the epoch: train.monitor, the best epoch restored, early stopping, the callbacks group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlexp.errors import ConfigError
from tlexp.train import run

#: digits transfer with a learning rate high enough that validation loss worsens after epoch 3
# by val/loss, the loss a too-high rate drives up (digits_transfer itself chooses by val/accuracy)
DIVERGING = ("experiment=digits_transfer", "finetune.optimizer=sgd", "finetune.lr=0.3", "train.monitor=val/loss")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "weights.safetensors"))


@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_best_epoch_weights_are_restored_and_saved(compose_cfg, tmp_path: Path) -> None:
    metrics = run(compose_cfg(*DIVERGING, "trainer.max_epochs=6", "callbacks=none", out="long"))
    k = metrics["best_epoch"]
    assert metrics["epochs"] == 6 and 1 <= k < 6, metrics["monitor"]
    assert metrics["monitor"]["name"] == "val/loss" and metrics["monitor"]["mode"] == "min"
    saved = json.loads((tmp_path / "long" / "metrics.json").read_text())
    assert saved["best_epoch"] == k and saved["monitor"]["best"] == pytest.approx(metrics["val"]["loss"], abs=1e-5)
    # the same run stopped after epoch k, last weights kept: exactly what the long run saved
    short = run(compose_cfg(*DIVERGING, f"trainer.max_epochs={k}", "callbacks=none", "train.restore_best=false", out="short"))
    assert short["epochs"] == k
    a, b = _weights(tmp_path / "long"), _weights(tmp_path / "short")
    assert all(torch.equal(a[n], b[n]) for n in a)
    # without restoring, the long run keeps its (worse) last epoch
    last = run(compose_cfg(*DIVERGING, "trainer.max_epochs=6", "callbacks=none", "train.restore_best=false", out="last"))
    c = _weights(tmp_path / "last")
    assert any(not torch.equal(a[n], c[n]) for n in a)
    assert last["monitor"]["restored"] is False and last["best_epoch"] == k


def test_early_stopping_stops_and_checkpoint_is_the_best(compose_cfg, tmp_path: Path) -> None:
    metrics = run(compose_cfg(*DIVERGING, "trainer.max_epochs=12", "callbacks.early_stopping.patience=2"))
    assert metrics["epochs"] == metrics["best_epoch"] + 2 < 12
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_featurize_and_in_model_agree_with_early_stopping(compose_cfg, tmp_path: Path) -> None:
    results = {}
    for mode in ("in_model", "featurize"):
        results[mode] = run(compose_cfg(*DIVERGING, f"freeze.mode={mode}", "trainer.max_epochs=12",
                                        "callbacks.early_stopping.patience=2", out=mode))
    assert results["in_model"]["epochs"] == results["featurize"]["epochs"] < 12
    assert results["in_model"]["best_epoch"] == results["featurize"]["best_epoch"]
    a, b = _weights(tmp_path / "in_model"), _weights(tmp_path / "featurize")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5


@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_monitor_auroc_on_two_classes(compose_cfg) -> None:
    metrics = run(compose_cfg("experiment=churn_transfer", "train.monitor=val/auroc", "trainer.max_epochs=3"))
    assert metrics["monitor"]["mode"] == "max"
    assert metrics["monitor"]["best"] == pytest.approx(metrics["val"]["auroc"], abs=1e-4)


@pytest.mark.parametrize(("overrides", "field"), [
    (("train.monitor=val/f2",), "train.monitor"),
    (("experiment=digits_transfer", "train.monitor=val/auroc"), "val/auroc needs two classes"),
    (("+callbacks.bad={_target_: torch.nn.Linear, in_features: 1, out_features: 1}",), "callbacks.bad"),
    (("+callbacks.nope={_target_: pytorch_lightning.callbacks.NoSuchCallback}",), "callbacks.nope"),
])
def test_bad_monitor_and_callbacks_are_config_errors(compose_cfg, overrides, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        run(compose_cfg(*overrides, "trainer.max_epochs=1"))


def test_bad_mode_is_refused_when_composed(compose_cfg) -> None:
    with pytest.raises(Exception, match="biggest"):
        compose_cfg("train.mode=biggest")


def _momentum(run_dir: Path) -> list[torch.Tensor]:
    from tlexp.sources.saved import load_optimizer_state

    state = load_optimizer_state(run_dir / "model")["state"]
    return [state[k]["momentum_buffer"] for k in sorted(state, key=int)]


def test_saved_optimizer_state_is_the_best_epochs(compose_cfg, tmp_path: Path) -> None:
    """The optimizer state saved beside the restored weights is that epoch's, not the last one's."""
    args = (*DIVERGING, "finetune.momentum=0.9", "callbacks=none")
    long = run(compose_cfg(*args, "trainer.max_epochs=6", out="long"))
    k = long["best_epoch"]
    assert long["epochs"] == 6 and 1 <= k < 6, long["monitor"]
    run(compose_cfg(*args, f"trainer.max_epochs={k}", "train.restore_best=false", out="short"))
    run(compose_cfg(*args, "trainer.max_epochs=6", "train.restore_best=false", out="last"))
    best, short, last = (_momentum(tmp_path / d) for d in ("long", "short", "last"))
    assert best and len(best) == len(short) == len(last)
    assert all(torch.equal(a, b) for a, b in zip(best, short))
    assert any(not torch.equal(a, c) for a, c in zip(best, last))
    # and a run continued from it loads it (same parameters, same groups)
    cont = run(compose_cfg("experiment=continue", f"source.path={tmp_path / 'long' / 'model'}", "data=digits",
                           "data.classes=[5,6,7,8,9]", "data.max_per_class=20", "finetune.optimizer=sgd",
                           "finetune.momentum=0.9", "trainer.max_epochs=1", "callbacks=none", out="cont"))
    assert cont["optimizer_state_loaded"] is True
