"""Two-phase fine-tuning (the unfreeze group): phase 2 moves the cut back and trains on."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from tlexp.errors import ConfigError
from tlexp.train import prepare, run

#: a small conv net with BatchNorm, from a spec (seeded init), on 10 images per digit; SGD, since
#: Adam turns last-bit differences of near-zero gradients into lr-sized steps (see test_app)
NET = (
    "experiment=none", "source=spec", "data=digits", "data.max_per_class=10", "data.batch_size=16",
    "source.layers=[{name: conv1, type: conv2d, out_channels: 4, kernel_size: 3, padding: same, activation: relu},"
    "{name: bn1, type: batchnorm2d}, {name: conv2, type: conv2d, out_channels: 4, kernel_size: 3, padding: same},"
    "{name: bn2, type: batchnorm2d}, {name: flatten, type: flatten},"
    "{name: fc, type: dense, out_features: 16, activation: relu, dropout: 0.2},"
    "{name: output, type: dense, out_features: 10, activation: softmax}]",
    "freeze.up_to=flatten", "unfreeze.up_to=bn1", "unfreeze.epochs=2", "trainer.max_epochs=2", "finetune.optimizer=sgd", "finetune.lr=0.05",
    "callbacks=none",
)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "weights.safetensors"))


def _initial(cfg) -> dict[str, torch.Tensor]:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as run() does before it builds the model
    return {k: v.clone() for k, v in prepare(cfg).graph.state_dict().items()}


@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_two_phases_featurized_equal_in_model_and_keep_what_stays_frozen(compose_cfg, tmp_path: Path) -> None:
    feat_cfg = compose_cfg(*NET, "freeze.mode=featurize", out="featurize")
    feat = run(feat_cfg)
    model = run(compose_cfg(*NET, "freeze.mode=in_model", out="in_model"))
    p1, p2 = feat["phases"]
    assert p1["featurize"]["key"] and p2["featurize"]["key"] and p1["featurize"]["key"] != p2["featurize"]["key"]
    assert p1["frozen"] == ["conv1", "bn1", "conv2", "bn2", "flatten"] and p2["frozen"] == ["conv1", "bn1"]
    assert p2["unfrozen"] == ["conv2", "bn2", "flatten"] and p2["lr"] == pytest.approx(0.005)
    assert feat["epochs"] == 4 and model["phases"][1]["featurize"]["key"] is None
    a, b = _weights(tmp_path / "featurize"), _weights(tmp_path / "in_model")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-5, f"two-phase featurize vs in_model: max abs weight difference {diff}"
    before = _initial(feat_cfg)
    for k in before:
        layer = k.split(".")[1]
        if layer in ("conv1", "bn1"):  # frozen in both phases
            assert torch.equal(before[k], a[k]), k
        if layer == "bn2" and "running" in k:  # newly unfrozen, bn=frozen: statistics kept
            assert torch.equal(before[k], a[k]), k
    # and phase 2 did train the layers it unfroze (unless its best epoch was phase 1's)
    if feat["best_epoch"] > 2:
        conv2 = [k for k in a if k.startswith("layers.conv2.")]
        assert conv2 and any(not torch.equal(before[k], a[k]) for k in conv2)


@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_bn_train_updates_the_statistics_of_unfrozen_layers(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(*NET, "unfreeze.bn=train", "train.restore_best=false")
    run(cfg)
    before, after = _initial(cfg), _weights(tmp_path / "run")
    assert not torch.equal(before["layers.bn2.running_mean"], after["layers.bn2.running_mean"])
    assert torch.equal(before["layers.bn1.running_mean"], after["layers.bn1.running_mean"])


@pytest.mark.parametrize(("overrides", "field"), [
    (("unfreeze.up_to=fc",), "unfreeze.up_to"),
    (("unfreeze.up_to=flatten",), "unfreeze.up_to"),
    (("unfreeze.lr_scale=0",), "unfreeze.lr_scale"),
    (("freeze.up_to=null",), "unfreeze.epochs"),
])
def test_bad_unfreeze_is_a_config_error(compose_cfg, overrides, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        run(compose_cfg(*NET, *overrides))


def test_bad_unfreeze_bn_is_refused_when_the_config_is_composed(compose_cfg) -> None:
    """unfreeze.bn is a closed choice (tlexp.config.BatchNormMode): OmegaConf refuses a bad value
    at compose time, one line naming the key and the valid values; a TlexpConfig made in Python
    with a bad value is refused by the run's checks."""
    from tlexp.cli import _hydra_error_line
    from tlexp.config import typed_config

    with pytest.raises(Exception) as info:
        compose_cfg(*NET, "unfreeze.bn=sometimes")
    line = _hydra_error_line(info.value)
    assert line is not None and "\n" not in line
    assert "unfreeze.bn: 'sometimes' is not a valid choice; valid: frozen, train" in line
    cfg = typed_config(compose_cfg(*NET))
    cfg.unfreeze.bn = "sometimes"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="unfreeze.bn: 'sometimes' is not one of frozen, train"):
        prepare(cfg)


def test_lr_scale_applies_to_every_absolute_rate() -> None:
    from tlexp.phases import scale_lrs

    ft = {"lr": 0.1, "groups": [{"pattern": "conv*", "lr": 0.02}, {"pattern": "fc", "lr_scale": 0.5}],
          "bias_lr": 0.04, "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.3}, "schedule_args": {"min_lr": 1e-3}}
    out = scale_lrs(ft, 0.1)
    assert out["lr"] == pytest.approx(0.01) and out["bias_lr"] == pytest.approx(0.004)
    assert out["groups"][0]["lr"] == pytest.approx(0.002) and out["groups"][1] == {"pattern": "fc", "lr_scale": 0.5}
    assert out["optimizer"]["lr"] == pytest.approx(0.03) and out["schedule_args"]["min_lr"] == pytest.approx(1e-4)
    assert ft["groups"][0]["lr"] == 0.02  # the phase-1 settings are left as they were


def test_phase2_scales_group_rates_in_the_optimizer(compose_cfg, tmp_path: Path) -> None:
    """finetune.groups with an absolute lr: phase 2 trains that group at lr × unfreeze.lr_scale."""
    import warnings

    from tlexp.sources.saved import load_optimizer_state

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run(compose_cfg(*NET, "finetune.groups=[{pattern: conv2, lr: 0.02}]", "train.restore_best=false"))
    assert metrics["epochs"] == 4
    # conv2 is frozen in phase 1 and trained in phase 2: no "matches no trainable parameter" warning
    assert not [w for w in caught if "matches no trainable parameter" in str(w.message)]
    lrs = {g["name"]: g["lr"] for g in load_optimizer_state(tmp_path / "run" / "model")["param_groups"]}
    assert lrs["conv2"] == pytest.approx(0.002) and lrs["default"] == pytest.approx(0.005), lrs


def test_phase2_logs_and_checkpoint_continue_after_phase1(compose_cfg, tmp_path: Path) -> None:
    """metrics.csv numbers phase-2 epochs after phase 1's, and checkpoints/best.ckpt is the best
    epoch over both phases: here phase 2 (a far too high rate) never beats phase 1."""
    import csv

    metrics = run(compose_cfg(*NET, "unfreeze.lr_scale=60", "logger=csv", "callbacks=[model_checkpoint]"))
    assert metrics["epochs"] == 4 and metrics["best_epoch"] <= 2, metrics["monitor"]
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()))
    val = [(int(r["epoch"]), int(r["step"]), float(r["val/loss"])) for r in rows if r.get("val/loss")]
    assert [e for e, _, _ in val] == [0, 1, 2, 3]
    steps = [s for _, s, _ in val]
    assert steps == sorted(steps) and len(set(steps)) == 4
    finite = [(v, e) for e, _, v in val if v == v]
    assert min(finite)[1] + 1 == metrics["best_epoch"]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    saved = _weights(tmp_path / "run")
    kept = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert kept and all(torch.equal(v, saved[k]) for k, v in kept.items())
