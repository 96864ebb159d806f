"""The paths a new user takes in the first hour, end to end."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import tlexp
from tests.conftest import cli_here, run_cli
from tlexp._resources import MODELS_DIR

QUICK = ["trainer.enable_progress_bar=false", "print_table=false"]
KERAS_H5 = Path(__file__).parent / "fixtures" / "keras" / "k2" / "digits.h5"


def _own_csv(path: Path, width: int = 4, rows: int = 300) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, width))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*(f"c{i}" for i in range(width)), "label"])
        for row, t in zip(x, y):
            w.writerow([*(f"{v:.4f}" for v in row), t])
    return path


@pytest.mark.slow
def test_churn_model_on_own_csv_of_another_width(tmp_path: Path) -> None:
    data = _own_csv(tmp_path / "own.csv")
    common = ["experiment=churn_transfer", "data=csv", f"data.path={data}", "data.label=label", "data.where={}",
              f"paths.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=2", *QUICK]
    res = cli_here([*common, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert res.returncode == 2
    assert "data.preprocessing=refit" in res.stderr  # the shipped model's statistics are for its own columns
    common.append("data.preprocessing=refit")
    res = cli_here([*common, f"hydra.run.dir={tmp_path / 'a2'}"], cwd=tmp_path)
    assert res.returncode == 2
    assert "{op: n_in_replace, layer: dense0, n_in: 4}" in res.stderr  # the message leads there
    ops = ("surgery.ops=[{op: n_in_replace, layer: dense0, n_in: 4}, {op: remove_output_layer}, "
           "{op: add_layer, name: output, type: dense, out_features: auto, activation: softmax}]")
    res = cli_here([*common, ops, "freeze.up_to=null", "unfreeze.epochs=0", f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["samples"]["train"] > 100  # the filter was cleared
    assert tlexp.load_model(tmp_path / "b" / "model").graph_inputs[0].shape == (4,)


@pytest.mark.slow
def test_experiment_continue_loads_the_optimizer_state(tmp_path: Path) -> None:
    common = [f"paths.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    # one phase (the recipe's phase 2 unfreezes everything): the frozen set continued is freeze.up_to's
    first = cli_here(["experiment=churn_transfer", *common, "unfreeze.epochs=0", "print_table=false",
                      f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    res = run_cli(["experiment=continue", f"source.path={tmp_path / 'a' / 'model'}", "data=churn",
                   "data.where={Geography: [Germany]}", *common, f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["optimizer_state_loaded"] is True and metrics["freeze"]["frozen"] == ["dense0", "dense1"]
    assert "state loaded from" in res.stdout
    # console hygiene: no Lightning advertisement, in the console or the log
    _assert_no_lightning_ads(res.stdout, res.stderr, (tmp_path / "b" / "tlexp.log").read_text())


def test_spec_on_csv_selects_defaults_for_a_fresh_network(compose_cfg) -> None:
    """source=spec + data=csv picks source_data/spec_csv (lr 1e-2, up to 100 epochs, early
    stopping); every other pairing and every experiment keeps its own values."""
    fresh = compose_cfg("experiment=none", "source=spec", "data=csv", "data.path=x.csv", "data.label=y")
    assert (fresh.finetune.lr, fresh.trainer.max_epochs) == (1e-2, 100)
    assert "early_stopping" in fresh.callbacks
    mine = compose_cfg("experiment=none", "source=spec", "data=csv", "finetune.lr=0.5", "trainer.max_epochs=3")
    assert (mine.finetune.lr, mine.trainer.max_epochs) == (0.5, 3)  # the command line wins
    for other in (("experiment=none", "source=spec", "data=churn"), ("experiment=none", "source=spec", "data=digits"),
                  ("experiment=none", "source=saved", "source.path=x", "data=csv")):
        cfg = compose_cfg(*other)
        assert (cfg.finetune.lr, cfg.trainer.max_epochs) == (1e-3, 10), other
    assert compose_cfg().finetune.lr == 3e-3  # the default experiment as before
    churn = compose_cfg("experiment=churn_transfer")
    assert (churn.finetune.lr, churn.trainer.max_epochs) == (0.01, 20)


def _xor_csv(path: Path, rows: int = 600) -> Path:
    """Two classes by the sign of c0*c1 (not linearly separable) among 6 columns; chance is 0.5."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 6))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*(f"c{i}" for i in range(6)), "y"])
        for row, t in zip(x, y):
            w.writerow([*(f"{v:.4f}" for v in row), t])
    return path


@pytest.mark.slow
def test_spec_model_on_csv_learns_with_the_defaults(tmp_path: Path) -> None:
    """README's spec example, no learning rate or epochs set: a fresh network on a CSV learns
    (with Adam at 1e-3 for 10 epochs it stayed near chance: val accuracy 0.49-0.57)."""
    data = _xor_csv(tmp_path / "t.csv")
    layers = ("source.layers=[{name: h, type: dense, out_features: 16, activation: relu}, "
              "{name: out, type: dense, out_features: auto, activation: softmax}]")
    run_dir = tmp_path / "outputs" / "a_run_folder_with_a_long_name_that_does_not_fit_in_eighty_columns_at_all"
    # not a terminal, 80 columns: the summary table is printed as a user piping it would see it
    res = run_cli(["source=spec", "data=csv", f"data.path={data}", "data.label=y", layers,
                   f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"],
                  cwd=tmp_path, env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["num_classes"] == 2
    assert metrics["val"]["accuracy"] >= 0.85 and metrics["test"]["accuracy"] >= 0.85, (metrics["val"], metrics["test"])
    assert metrics["epochs"] > 10  # more than the generic 10 epochs (early stopping may end it before 100)
    # console hygiene on a real run: no Lightning banner or advertisement, in the console or tlexp.log
    _assert_no_lightning_ads(res.stdout, res.stderr, (run_dir / "tlexp.log").read_text())
    # the table fits 80 columns and folds the long run folder instead of cutting it to "…"
    assert "tlexp run:" in res.stdout and "…" not in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    assert run_dir.name[:30] in res.stdout and run_dir.name[-12:] in res.stdout


@pytest.mark.slow
def test_gpu_pool_jobs_keep_the_console_quiet_too(tmp_path: Path) -> None:
    """A launcher runs each job in its own process (not through `tlexp`'s main): its job.out and
    tlexp.log carry no Lightning banner or advertisement either."""
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "hydra/launcher=gpu_pool", "hydra.launcher.slots=1", "hydra.launcher.devices=[]",
                   "finetune.lr=0.01", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                   f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = sorted(sweep.glob("*/tlexp.log"))
    outs = sorted(sweep.glob("*/job.out"))
    assert logs and outs
    assert "tlexp.train" in logs[0].read_text()  # the job did log
    _assert_no_lightning_ads(res.stdout, res.stderr, *(p.read_text() for p in [*logs, *outs]))


def _assert_no_lightning_ads(*texts: str) -> None:
    for text in texts:
        for ad in ("GPU available", "TPU available", "HPU available", "\N{ELECTRIC LIGHT BULB}", "Tip:", "litlogger",
                   "litmodels", "lightning.ai"):
            assert ad.lower() not in text.lower(), (ad, text[-3000:])


def test_spec_layers_take_auto_sizes(compose_cfg) -> None:
    from omegaconf import OmegaConf

    from tlexp.data import build_datamodule
    from tlexp.train import build_model

    cfg = compose_cfg("experiment=none", "source=spec", "data=digits",
                      "source.layers=[{name: f, type: flatten}, {name: h, type: dense, out_features: 8, activation: relu},"
                      "{name: out, type: dense, out_features: auto, activation: softmax}]",
                      "surgery=none", "freeze=none")
    data = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), seed=0)
    data.setup()
    graph, _ = build_model(cfg, data)
    assert graph.trace_shapes()["out"][0] == (data.num_classes,)


def test_inspect_marks_cuts_that_train_the_same_layers() -> None:
    from tlexp._report import equivalent_cuts

    same = equivalent_cuts(tlexp.load_model(MODELS_DIR / "digits_cnn"))
    assert same == {"pool1": "conv2", "pool2": "conv3", "flatten": "conv3"}


def test_zoo_random_weights_are_said_loudly(compose_cfg, tmp_path: Path) -> None:
    from rich.console import Console

    from tlexp._report import print_run_table

    cfg = compose_cfg("experiment=none", "source=zoo_tiny")
    metrics = {"name": "x", "freeze": {"up_to": None, "frozen": []}, "featurize": {"mode": "featurize"},
               "samples": {"train": 1, "val": 1, "test": 1}, "num_classes": 2, "epochs": 1,
               "timing": {"featurize_s": 0.0, "fit_s": 0.0, "total_s": 0.0},
               "val": {"accuracy": 0.5, "loss": 1.0}, "test": {"accuracy": 0.5, "loss": 1.0}}
    console = Console(width=80, record=True)
    print_run_table(cfg, metrics, tmp_path / "a" / "very" / "long" / "path" / "that" / "must" / "not" / "be" / "cut", console)
    text = console.export_text()
    assert "RANDOM WEIGHTS" in text and "source.weights" in text
    assert "…" not in text and "cut" in text


def test_pretrained_without_network_fails_fast_naming_source_weights(monkeypatch) -> None:
    from tlexp.errors import SourceError
    from tlexp.sources.zoo import _create

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(_create, "_cached", lambda cfg: False)
    with pytest.raises(SourceError, match="cannot reach 127.0.0.1.*source.weights=FILE"):
        _create.create_model("test_resnet", True, None, {})


def test_warnings_are_one_line_without_source(capsys) -> None:
    from tlexp.cli import _quiet_console

    saved = warnings.showwarning
    try:
        _quiet_console()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("something odd\nsecond line", UserWarning, stacklevel=1)
    finally:
        warnings.showwarning = saved
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["tlexp: warning: something odd"]


def test_library_warnings_are_one_line_without_source() -> None:
    """Python's own display of a warning (what a library user sees) is one line: tlexp's
    warnings point at no source line, so no `  warnings.warn(` echo follows them."""
    from tlexp.sources.keras import load_keras

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_keras(KERAS_H5)  # a Keras file with a training config, which is ignored
    shown = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught]
    assert len(shown) == 1 and "training config" in shown[0], shown
    assert shown[0].count("\n") == 1 and "warn(" not in shown[0]


@pytest.mark.slow
def test_inspect_prints_a_warning_as_one_line(tmp_path: Path) -> None:
    res = run_cli([f"source.path={KERAS_H5}", "source=keras"], cwd=tmp_path, script="tlexp-inspect",
                  env={"PYTHONWARNINGS": "default", "COLUMNS": "80"})
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tlexp: warning: digits.h5: the stored Keras training config"), lines
    assert "…" not in res.stdout and max(len(line) for line in res.stdout.splitlines()) <= 80


def test_cache_list_fits_80_columns_without_cutting_paths(tmp_path: Path) -> None:
    from rich.console import Console

    from tlexp.featurize._admin import CacheEntry, list_table

    model = "/home/someone/projects/transfer/experiments/2026-12-02/a_long_folder_name/model"
    table_csv = "/data/some/where/quite/deep/inside/a/tree/train_set_2026.csv"
    entry = CacheEntry("ab" * 32, [], {"up_to": "layer4", "source": f"saved: {model}", "dtype": "float32",
                                       "data": {"data": "csv", "path": table_csv}, "writer": "host:1234"})
    console = Console(width=80, record=True)
    console.print(list_table([entry], tmp_path / "cache"))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "abababababab" in text and "float32" in text
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    column = ["".join(cells[i].strip() for cells in rows) for i in range(len(rows[0]))]
    assert column[2] == f"saved:{model}" and column[3] == f"csv:{table_csv}"  # folded, whole


@pytest.mark.slow
def test_help_lists_options_not_schemas(tmp_path: Path) -> None:
    res = cli_here(["--help"], cwd=tmp_path)
    assert res.returncode == 0
    assert "data: churn, csv, digits, image_folder" in res.stdout
    assert "base_" not in res.stdout.split("== Config ==")[0]


def test_sweep_report_fits_80_columns_when_not_a_terminal(tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.test_sweeps import _fake_run
    from tlexp.sweep.report import print_sweep_report

    sweep = tmp_path / "sweep"
    for n, (cut, lr) in enumerate((("layer4", "0.1"), ("layer4", "0.01"), ("layer2", "0.1"), ("layer2", "0.01"))):
        _fake_run(sweep / f"{n}", [f"freeze.up_to={cut}", f"finetune.lr={lr}", "seed=1"],
                  {"status": "completed", "val": {"accuracy": 0.5 + n / 10}, "test": {"accuracy": 0.6},
                   "baseline": {"before_fit": {"accuracy": 0.2}, "source": {"accuracy": 0.1}},
                   "freeze": {"frozen": ["a"] * (5 if cut == "layer2" else 9)},
                   "timing": {"featurize_s": 12.3456, "fit_s": 2.0}, "featurize": {"cache_hit": n % 2 == 1}})
    _fake_run(sweep / "4", ["freeze.up_to=layer2", "finetune.lr=0.5", "seed=2"], None)  # died before metrics
    monkeypatch.setenv("COLUMNS", "80")
    print_sweep_report(sweep, write=False)
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80, out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    # every column whole on one line: job, lr, up_to, seed, val, test, before_fit, source, feat s, fit s, hit, status
    assert rows[0] == ["0", "0.1", "layer4", "1", "0.5000", "0.6000", "0.2000", "0.1000", "12.3", "2.0", "no", "completed"]
    assert rows[-1][-1] == "failed"
