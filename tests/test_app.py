"""The experiment app end to end: runs, equivalence of the freeze modes, sweeps, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tlexp
from tests.conftest import cli_here
from tlexp.train import run


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "weights.safetensors"))


@pytest.mark.slow
def test_default_experiment_as_a_user_runs_it(tmp_path: Path) -> None:
    """`tlexp` with no arguments but where to write: the shipped digits transfer, end to end."""
    res = cli_here([f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = tmp_path / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["name"] == "digits_transfer"
    assert metrics["test"]["accuracy"] > 0.85, metrics["test"]
    assert metrics["featurize"]["cache_hit"] is False and len(metrics["featurize"]["key"]) == 32
    assert set(metrics["timing"]) == {"featurize_s", "fit_s", "total_s", "started_at", "finished_at"}
    assert metrics["status"] == "completed" and metrics["timing"]["started_at"] < metrics["timing"]["finished_at"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # the table a person reads
    assert "tlexp run: digits_transfer" in res.stdout and "accuracy" in res.stdout
    # the saved model reloads without unpickling and gives the accuracy the run reported
    model = tlexp.load_model(run_dir / "model")
    assert model.node_names[-1] == "output"
    assert (run_dir / "model" / "optimizer.safetensors").is_file()


@pytest.mark.parametrize(
    ("experiment", "epochs"),
    [("digits_transfer", 3), ("churn_transfer", 2)],
)
@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_featurize_and_in_model_train_the_same_weights(compose_cfg, tmp_path: Path, experiment: str, epochs: int) -> None:
    results = {}
    for mode in ("in_model", "featurize"):
        cfg = compose_cfg(f"experiment={experiment}", f"freeze.mode={mode}", f"trainer.max_epochs={epochs}", out=mode)
        results[mode] = run(cfg)
    a, b = _weights(tmp_path / "in_model"), _weights(tmp_path / "featurize")
    assert a.keys() == b.keys()
    # Adam's step is lr·m/√v: on a weight whose gradient is ~0 in both modes, last-bit differences
    # (another matmul layout for cached vs computed features) become steps of up to ~lr/100 —
    # seen on AVX-512 CPUs for a single fc1 weight; every other weight agrees within 1e-6
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert float(diffs.max()) <= 1e-4, f"max abs weight difference {float(diffs.max())}"
    assert int((diffs > 1e-5).sum()) <= 2, f"{int((diffs > 1e-5).sum())} weights differ by more than 1e-5"
    # and the suffix really trained: its weights moved away from the base model's
    base = tlexp.load_model(tlexp._resources.resolve_path(str(cfg.source.path)))
    moved = [k for k in a if k.startswith("layers.fc1") or k.startswith("layers.dense2")]
    if moved:
        assert any(not torch.equal(a[k], base.state_dict()[k]) for k in moved)
    for split in ("val", "test"):
        assert results["in_model"][split]["accuracy"] == pytest.approx(results["featurize"][split]["accuracy"], abs=1e-6)
        assert results["in_model"][split]["loss"] == pytest.approx(results["featurize"][split]["loss"], abs=1e-5)
    assert results["featurize"]["featurize"]["key"] and results["in_model"]["featurize"]["key"] is None


def test_frozen_prefix_is_unchanged_and_cut_is_the_named_layer(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("experiment=digits_transfer", "trainer.max_epochs=2")
    metrics = run(cfg)
    assert metrics["freeze"]["frozen"] == ["conv1", "conv2", "pool1", "conv3", "pool2", "flatten"]
    assert metrics["freeze"]["boundary"] == ["flatten"]
    base = tlexp.load_model(tlexp._resources.MODELS_DIR / "digits_cnn").state_dict()
    after = _weights(tmp_path / "run")
    for k in base:
        if k.split(".")[1] in {"conv1", "conv2", "conv3"}:
            assert torch.equal(base[k], after[k]), k


@pytest.mark.slow
def test_sweep_2x2_reuses_the_cache(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = cli_here(
        ["-m", "freeze.up_to=pool2,flatten", "finetune.lr=1e-3,3e-3", "trainer.max_epochs=1",
         f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert len(runs) == 4, [p.name for p in sweep.iterdir()]
    by_cut: dict[str, list[dict]] = {}
    for r in runs:  # job numbers order the runs as the launcher ran them
        m = json.loads((r / "metrics.json").read_text())
        by_cut.setdefault(m["freeze"]["up_to"], []).append(m)
    assert set(by_cut) == {"pool2", "flatten"}
    for cut, ms in by_cut.items():
        # the sweep's featurize plan computed both cuts before the jobs ran: every job hits
        assert [m["featurize"]["cache_hit"] for m in ms] == [True, True], cut
        assert ms[0]["featurize"]["key"] == ms[1]["featurize"]["key"]
    plan = json.loads((sweep / "featurize_plan.json").read_text())
    assert sorted(c["key"] for g in plan["groups"] for c in g["cuts"]) == sorted(m["featurize"]["key"] for m in (by_cut["pool2"][0], by_cut["flatten"][0]))  # noqa: E501
    assert by_cut["pool2"][0]["featurize"]["key"] != by_cut["flatten"][0]["featurize"]["key"]


@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_rerun_hits_the_cache_and_trains_the_same(compose_cfg, tmp_path: Path) -> None:
    first = run(compose_cfg("experiment=churn_transfer", "trainer.max_epochs=1", out="a"))
    second = run(compose_cfg("experiment=churn_transfer", "trainer.max_epochs=1", out="b"))
    assert first["featurize"]["cache_hit"] is False and second["featurize"]["cache_hit"] is True
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_saved_model_continues_with_its_optimizer_state(compose_cfg, tmp_path: Path) -> None:
    # one phase: the optimizer state saved is that of the layers freeze.up_to=1 leaves trainable
    run(compose_cfg("experiment=churn_transfer", "trainer.max_epochs=1", "unfreeze.epochs=0", out="first"))
    first = tmp_path / "first" / "model"
    assert (first / "optimizer.safetensors").is_file()
    cfg = compose_cfg("experiment=none", "source=saved", f"source.path={first}", "source.load_optimizer_state=true",
                      "data=churn", "data.where={Geography:[Germany]}", "finetune=nesterov",
                      "freeze.up_to=1", "trainer.max_epochs=1", out="second")
    metrics = run(cfg)
    assert metrics["test"]["accuracy"] > 0.5


@pytest.mark.parametrize(("schedule", "expected"), [("step", 1e-2 * 0.5**3), ("cosine", 0.0)])
@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_schedule_steps_during_a_run(compose_cfg, tmp_path: Path, schedule: str, expected: float) -> None:
    """The module steps its scheduler itself (manual optimization): the saved lr shows it (the
    last epoch's optimizer state, train.restore_best=false; the default saves the best epoch's)."""
    args = {"step": "finetune.schedule_args={step_size: 1, gamma: 0.5}", "cosine": "finetune.schedule_args={min_lr: 0.0}"}
    run(compose_cfg("experiment=churn_transfer", "trainer.max_epochs=3", f"finetune.schedule={schedule}", args[schedule],
                    "train.restore_best=false", "unfreeze.epochs=0"))
    from tlexp.sources.saved import load_optimizer_state

    state = load_optimizer_state(tmp_path / "run" / "model")
    assert state["param_groups"][0]["lr"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(("experiment", "shipped"), [("digits_pretrain", "digits_cnn"), ("churn_pretrain", "churn_net")])
@pytest.mark.slow  # a whole training run (or several): the full suite runs it
def test_shipped_base_models_are_reproduced_by_their_experiments(compose_cfg, tmp_path: Path, experiment: str, shipped: str) -> None:
    """A fresh pretrain run gives the shipped model back: the same predictions on the test split.

    Weights match bit for bit only on the CPU that wrote them: MKL/oneDNN pick other kernels on
    other processors (AVX2 vs AVX-512, Intel vs AMD), and Adam turns last-bit gradient
    differences on near-zero gradients into lr-sized steps that 20 epochs carry on. What must
    reproduce everywhere is the model's behaviour.
    """
    cfg = compose_cfg(f"experiment={experiment}")
    metrics = run(cfg)
    fresh = tlexp.load_model(tmp_path / "run" / "model")
    old = tlexp.load_model(tlexp._resources.MODELS_DIR / shipped)
    assert [n for n in fresh.node_names] == [n for n in old.node_names]
    from omegaconf import OmegaConf

    from tlexp.data import build_datamodule

    data = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed)
    data.setup()
    x, y = (torch.cat(t) for t in zip(*data.test_dataloader()))
    with torch.no_grad():
        p_fresh, p_old = fresh(x).argmax(-1), old(x).argmax(-1)
    agree = float((p_fresh == p_old).float().mean())
    assert agree >= 0.97, f"{shipped}: a fresh {experiment} run agrees on only {agree:.3f} of test predictions"
    old_accuracy = float((p_old == y).float().mean())
    assert metrics["test"]["accuracy"] == pytest.approx(old_accuracy, abs=0.02)
