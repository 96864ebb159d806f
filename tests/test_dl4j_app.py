"""source=dl4j through the app: inspect, a featurized transfer run on a DL4J file, reload, CLI refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tlexp
from tests.conftest import cli_here, run_cli
from tlexp.sources.dl4j import load_dl4j
from tlexp.train import run as train_run

FIX = Path(__file__).parent / "fixtures" / "dl4j"
MOON = FIX / "integration" / "MLPMoon" / "Model_RANDOM_INIT_UNTRAINED.zip"


def _moons_csv(path: Path, n: int = 120) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    rows = ["a,b,label"] + [f"{a:.4f},{b:.4f},{c}" for (a, b), c in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_inspect_lists_the_dl4j_layer_names(compose_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    from tlexp.inspect import inspect_config

    cfg = compose_cfg("source=dl4j", f"source.path={FIX / 'regression' / '100b4' / 'SyntheticCNN_100b4.bin'}",
                      "experiment=none", "inspect.format=json")
    inspect_config(cfg)
    arch = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in arch["nodes"]] == [f"layer{i}" for i in range(10)]


def test_featurized_transfer_run_on_a_dl4j_file_saves_and_reloads(compose_cfg, tmp_path: Path) -> None:
    csv = _moons_csv(tmp_path / "moons.csv")
    cfg = compose_cfg("source=dl4j", f"source.path={MOON}", "experiment=none", "data=csv", f"data.path={csv}",
                      "data.label=label", "freeze.up_to=layer0", "freeze.mode=featurize", "trainer.max_epochs=1")
    metrics = train_run(cfg)
    assert metrics["freeze"]["frozen"] == ["layer0"]
    saved = tlexp.load_model(tmp_path / "run" / "model")
    dl4j = load_dl4j(MOON)
    for k, v in dl4j.state_dict().items():
        if k.startswith("layers.layer0."):
            assert torch.equal(saved.state_dict()[k], v), k
    assert "accuracy" in json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]


def test_saved_model_with_dl4j_layer_types_reloads(tmp_path: Path) -> None:
    from tlexp.sources.saved import save_model

    g = load_dl4j(FIX / "regression" / "100b4" / "SyntheticBidirectionalRNNGraph_100b4.bin")
    save_model(g, tmp_path / "m")
    back = tlexp.load_model(tmp_path / "m")
    x = torch.rand(2, 10, 6)
    with torch.no_grad():
        torch.testing.assert_close(back(x), g(x))


@pytest.mark.slow
def test_cli_refuses_a_custom_layer_with_exit_status_2(tmp_path: Path) -> None:
    bad = run_cli(["source=dl4j", f"source.path={FIX / 'regression' / '100b4' / 'CustomLayerExample_100b4_float.bin'}"],
                  cwd=tmp_path, script="tlexp-inspect")
    assert bad.returncode == 2, bad.stderr
    assert "org.deeplearning4j.regressiontest.customlayer100a.CustomLayer" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert len([line for line in bad.stderr.splitlines() if line.strip()]) == 1


def test_run_continues_from_the_dl4j_updater_state(compose_cfg, tmp_path: Path) -> None:
    csv = _moons_csv(tmp_path / "moons.csv")
    cfg = compose_cfg("source=dl4j", f"source.path={MOON}", "source.load_optimizer_state=true", "experiment=none",
                      "data=csv", f"data.path={csv}", "data.label=label", "freeze.up_to=layer0",
                      "freeze.mode=in_model", "trainer.max_epochs=1")
    from tlexp.train import build_model

    g = load_dl4j(MOON, load_optimizer_state=True)
    _, finetune = build_model(cfg)
    for k, v in g.meta["finetune_overrides"].items():
        assert finetune[k] == v
    metrics = train_run(cfg)
    assert "accuracy" in metrics["test"]
    assert (tmp_path / "run" / "model" / "optimizer.safetensors").exists()


def test_dl4j_churn_transfer_recipe_end_to_end(compose_cfg, tmp_path: Path) -> None:
    from tlexp.data import build_datamodule
    from tlexp.sources.dl4j._write import churn_dl4j_model

    model = churn_dl4j_model(tmp_path / "churn_dl4j.zip")  # a DL4J-layout MultiLayerNetwork zip
    cfg = compose_cfg("experiment=dl4j_churn_transfer", f"source.path={model}", "trainer.max_epochs=1",
                      "data.synthetic_rows=3000")
    from omegaconf import OmegaConf

    data = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), seed=0)
    assert data.feature_names == ["CreditScore", "Geography=Germany", "Geography=Spain", "Gender=Female", "Age",
                                  "Tenure", "Balance", "NumOfProducts", "HasCrCard", "IsActiveMember",
                                  "EstimatedSalary"]
    metrics = train_run(cfg)
    assert metrics["freeze"]["frozen"] == ["normalizer", "layer0", "layer1"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= saved["test"]["accuracy"] <= 1.0
    # evaluated before fit (the book's first eval): the DL4J model as loaded, output layer kept
    from tlexp.module import evaluate

    before = saved["baseline"]["before_fit"]
    run_data = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), seed=int(cfg.seed))
    run_data.setup()
    want = evaluate(load_dl4j(model), run_data.test_dataloader(), run_data.num_classes, torch.device("cpu"))
    assert before["accuracy"] == pytest.approx(want["accuracy"])
    g = load_dl4j(model)
    assert g._nodes[0].name == "normalizer" and [n.name for n in g._nodes][-1] == "layer3"


def test_continuing_a_saved_run_keeps_its_frozen_set(compose_cfg, tmp_path: Path) -> None:
    csv = _moons_csv(tmp_path / "moons.csv")
    common = ("experiment=none", "data=csv", f"data.path={csv}", "data.label=label", "freeze.mode=in_model",
              "trainer.max_epochs=1")
    first = train_run(compose_cfg("source=dl4j", f"source.path={MOON}", "freeze.up_to=layer0", *common, out="a"))
    assert first["freeze"]["frozen"] == ["layer0"]
    model = tmp_path / "a" / "model"
    cont = compose_cfg("source=saved", f"source.path={model}", "source.load_optimizer_state=true", *common, out="b")
    assert train_run(cont)["freeze"]["frozen"] == ["layer0"]
    told = compose_cfg("source=saved", f"source.path={model}", "source.load_optimizer_state=false", *common, out="c")
    assert train_run(told)["freeze"]["frozen"] == []


# ---- continuing a saved run: the schedule and the counters come back with the optimizer state --


def _moon_common(tmp_path: Path) -> tuple[str, ...]:
    csv = _moons_csv(tmp_path / "moons.csv")
    return ("experiment=none", "data=csv", f"data.path={csv}", "data.label=label", "freeze.mode=in_model",
            "freeze.up_to=layer0", "finetune=nesterov", "finetune.lr=0.1")


def test_continued_step_schedule_uses_the_lr_an_uninterrupted_run_would(compose_cfg, tmp_path: Path) -> None:
    common = (*_moon_common(tmp_path), "finetune.schedule=step", "finetune.schedule_args={step_size: 1, gamma: 0.5}")
    whole = train_run(compose_cfg("source=dl4j", f"source.path={MOON}", *common, "trainer.max_epochs=3", out="whole"))
    # stopped after 2 epochs, the last epoch saved (train.restore_best=false; by default the best
    # epoch's weights and optimizer state are saved, and a run continued from those is not this one)
    train_run(compose_cfg("source=dl4j", f"source.path={MOON}", *common, "trainer.max_epochs=2", "train.restore_best=false",
                          out="a"))
    # continued without naming a schedule: the saved one comes back, where it stopped
    cont = train_run(compose_cfg("source=saved", f"source.path={tmp_path / 'a' / 'model'}",
                                 "source.load_optimizer_state=true", *_moon_common(tmp_path)[:-2],
                                 "trainer.max_epochs=1", out="b"))
    p, w = cont["progress"], whole["progress"]
    assert p["schedule_restored"] is True
    assert p["lr_first"] == pytest.approx(0.1 * 0.5**2) == pytest.approx(w["lr_last"])
    assert p["continued_from"]["epochs"] == 2 and p["epochs"] == w["epochs"] == 3
    assert p["global_step"] == w["global_step"] == 3 * (p["global_step"] - p["continued_from"]["global_step"])
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())["progress"]
    assert saved["epochs"] == 3 and saved["lr_first"] == pytest.approx(0.025)
    # told to start afresh (load_optimizer_state=false): the configured lr, counters from zero
    fresh = train_run(compose_cfg("source=saved", f"source.path={tmp_path / 'a' / 'model'}",
                                  "source.load_optimizer_state=false", *common, "trainer.max_epochs=1", out="c"))
    assert fresh["progress"]["lr_first"] == pytest.approx(0.1) and fresh["progress"]["epochs"] == 1


def test_restored_best_epoch_saves_its_schedule_position_and_counters(compose_cfg, tmp_path: Path) -> None:
    """model/ holds the best epoch's weights and optimizer state: the schedule position and the
    counters saved beside them are that epoch's too, and experiment=continue goes on from there."""
    from tlexp.sources.saved import load_optimizer_state

    common = (*_moon_common(tmp_path), "finetune.schedule=step", "finetune.schedule_args={step_size: 1, gamma: 0.5}")
    # val/loss chosen by its largest value: the first epoch is the best one (the loss falls)
    first = train_run(compose_cfg("source=dl4j", f"source.path={MOON}", *common, "trainer.max_epochs=3",
                                  "train.monitor=val/loss", "train.mode=max", out="a"))
    best, steps = first["best_epoch"], first["progress"]["global_step"] // 3
    assert first["monitor"]["restored"] is True and best < first["epochs"] == 3
    saved = first["progress"]["saved"]
    assert saved == {"at": "best_epoch", "epochs": best, "global_step": best * steps}
    model = tmp_path / "a" / "model"
    state = load_optimizer_state(model)
    assert state["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.5**best)  # stepped at the end of that epoch
    assert state["progress"]["schedule"]["state"]["last_epoch"] == best
    assert json.loads((model / "config.json").read_text())["meta"]["progress"] == {"epochs": best, "global_step": best * steps}
    cont = train_run(compose_cfg("experiment=continue", f"source.path={model}", *_moon_common(tmp_path)[1:4],
                                 "trainer.max_epochs=1", out="b"))
    p = cont["progress"]
    assert p["schedule_restored"] is True and p["lr_first"] == pytest.approx(0.1 * 0.5**best)
    assert p["continued_from"] == {"epochs": best, "global_step": best * steps}
    assert p["epochs"] == best + 1 and p["global_step"] == (best + 1) * steps
    # train.restore_best=false: the last epoch's state, said so
    last = train_run(compose_cfg("source=dl4j", f"source.path={MOON}", *common, "trainer.max_epochs=2",
                                 "train.restore_best=false", out="c"))
    assert last["progress"]["saved"] == {"at": "last_epoch", "epochs": 2, "global_step": 2 * steps}


def test_two_phases_whose_best_epoch_is_in_phase_one_save_phase_ones_state(compose_cfg, tmp_path: Path) -> None:
    """Phase 2 never beats phase 1's best: model/ holds phase 1's best epoch, and the counters
    and schedule saved with it are phase 1's then, not the end of phase 2."""
    from tlexp.sources.saved import load_optimizer_state

    common = (*_moon_common(tmp_path), "finetune.schedule=step", "finetune.schedule_args={step_size: 1, gamma: 0.5}")
    m = train_run(compose_cfg("source=dl4j", f"source.path={MOON}", *common, "trainer.max_epochs=2",
                              "unfreeze.epochs=2", "unfreeze.up_to=null", "train.monitor=val/loss", "train.mode=max"))
    assert m["best_epoch"] == 1 and m["epochs"] == 4, m["monitor"]
    assert len(m["phases"]) == 2
    steps = m["progress"]["global_step"] // 4  # steps per epoch (the same in both phases)
    assert m["progress"]["saved"] == {"at": "best_epoch", "epochs": 1, "global_step": steps}
    state = load_optimizer_state(tmp_path / "run" / "model")
    assert state["progress"]["schedule"]["state"]["last_epoch"] == 1
    assert state["param_groups"][0]["lr"] == pytest.approx(0.05)


def test_continued_cosine_schedule_steps_on_from_its_position(compose_cfg, tmp_path: Path) -> None:
    common = (*_moon_common(tmp_path), "finetune.schedule=cosine", "finetune.schedule_args={min_lr: 0.01}",
              "trainer.max_epochs=1")
    first = train_run(compose_cfg("source=dl4j", f"source.path={MOON}", *common, out="a"))
    steps = first["progress"]["global_step"]
    cont = train_run(compose_cfg("source=saved", f"source.path={tmp_path / 'a' / 'model'}",
                                 "source.load_optimizer_state=true", *common, out="b"))
    # the same scheduler stepped on without a break: torch's CosineAnnealingLR over the first run's steps
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.01)
    lrs = []
    for _ in range(2 * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert first["progress"]["lr_first"] == pytest.approx(lrs[0]) and first["progress"]["lr_last"] == pytest.approx(lrs[steps - 1])
    assert cont["progress"]["schedule_restored"] is True
    assert cont["progress"]["lr_first"] == pytest.approx(lrs[steps])  # not 0.1: the schedule did not restart
    assert cont["progress"]["lr_last"] == pytest.approx(lrs[2 * steps - 1])
    assert cont["progress"]["global_step"] == 2 * steps


def _trained_moon(tmp_path: Path, iterations: int, epochs: int, schedule: dict | None = None) -> Path:
    """MLPMoon as DL4J would save it after some training: its counters (and an lr schedule) set."""
    import zipfile

    src = zipfile.ZipFile(MOON)
    conf = json.loads(src.read("configuration.json"))
    conf["iterationCount"], conf["epochCount"] = iterations, epochs
    for c in conf["confs"]:
        c["iterationCount"], c["epochCount"] = iterations, epochs
        if schedule is not None:
            c["layer"]["iupdater"].update({"learningRate": "NaN", "learningRateSchedule": schedule})
    path = tmp_path / "moon_trained.zip"
    with zipfile.ZipFile(path, "w") as out:
        for name in src.namelist():
            out.writestr(name, json.dumps(conf) if name == "configuration.json" else src.read(name))
    return path


def test_dl4j_iteration_and_epoch_counts_carry_into_a_continued_run(compose_cfg, tmp_path: Path) -> None:
    path = _trained_moon(tmp_path, 7, 3)
    m = train_run(compose_cfg("source=dl4j", f"source.path={path}", "source.load_optimizer_state=true",
                              *_moon_common(tmp_path)[:-2], "trainer.max_epochs=1"))
    assert m["progress"]["continued_from"] == {"epochs": 3, "global_step": 7}
    assert m["progress"]["epochs"] == 4 and m["progress"]["global_step"] > 7
    assert m["progress"]["lr_first"] == pytest.approx(0.005)  # the file's Nesterovs learning rate


def test_dl4j_learning_rate_schedule_continues_at_the_saved_iteration(compose_cfg, tmp_path: Path) -> None:
    from tlexp.sources.dl4j._schedule import value_at

    step = {"@class": "org.nd4j.linalg.schedule.StepSchedule", "scheduleType": "ITERATION", "initialValue": 0.1,
            "decayRate": 0.5, "step": 2.0}
    path = _trained_moon(tmp_path, 5, 1, step)
    m = train_run(compose_cfg("source=dl4j", f"source.path={path}", "source.load_optimizer_state=true",
                              *_moon_common(tmp_path)[:-2], "trainer.max_epochs=1"))
    p = m["progress"]
    n = p["global_step"] - 5
    assert p["schedule_restored"] is True
    # DL4J's next iteration is 5: lr 0.1 * 0.5^floor(5/2); the last one this run took is 5 + n - 1
    assert p["lr_first"] == pytest.approx(value_at(step, 5)) == pytest.approx(0.025)
    assert p["lr_last"] == pytest.approx(0.1 * 0.5 ** ((5 + n - 1) // 2))
    expo = {"@class": "org.nd4j.linalg.schedule.ExponentialSchedule", "scheduleType": "EPOCH", "initialValue": 0.1,
            "gamma": 0.5}
    assert [value_at(expo, e) for e in range(3)] == [0.1, 0.05, 0.025]
    poly = {"@class": "org.nd4j.linalg.schedule.MapSchedule", "scheduleType": "ITERATION",
            "values": {"0": 0.1, "10": 0.01}}
    assert [value_at(poly, i) for i in (0, 9, 10, 50)] == [0.1, 0.1, 0.01, 0.01]
    from tlexp.errors import ConfigError
    from tlexp.sources.dl4j._schedule import check_schedule

    with pytest.raises(ConfigError, match="CycleSchedule is not supported; supported: FixedSchedule"):
        check_schedule({"@class": "org.nd4j.linalg.schedule.CycleSchedule"})


@pytest.mark.slow
def test_experiment_continue_from_the_command_line_continues_the_schedule(tmp_path: Path) -> None:
    common = [f"paths.cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]
    first = cli_here(["experiment=churn_transfer", *common, "unfreeze.epochs=0", "finetune.schedule=step", "print_table=false",
                      "finetune.schedule_args={step_size: 1, gamma: 0.5}", f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["progress"]
    res = cli_here(["experiment=continue", f"source.path={tmp_path / 'a' / 'model'}", "data=churn", *common,
                    f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["progress"]
    assert b["schedule_restored"] is True and b["lr_first"] == pytest.approx(a["lr_first"] * 0.5)
    assert b["continued_from"] == {"epochs": 1, "global_step": a["global_step"]} and b["epochs"] == 2
    assert "continued" in res.stdout  # the summary table's row for a continued run
