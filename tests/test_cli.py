"""The console scripts as a user meets them: tlexp-inspect, and bad input (one line, exit 2,
nothing half-written)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import tlexp
from tests.conftest import REPO, cli_here, run_cli
from tlexp.data.tabular import synthetic_churn, write_csv


def _one_error_line(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tlexp: error: ") and "Traceback" not in res.stderr
    return lines[0]


def _no_run_or_marked_failed(run_dir: Path, line: str | None = None) -> None:
    """An error at compose time makes no folder; a later one leaves .hydra/, tlexp.log with the
    error and metrics.json with status failed, and nothing that looks like a finished run."""
    if not run_dir.exists():
        return
    assert {p.name for p in run_dir.iterdir()} == {".hydra", "tlexp.log", "metrics.json"}, list(run_dir.iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "test" not in metrics
    assert metrics["timing"]["started_at"] <= metrics["timing"]["finished_at"]
    if line is not None:
        message = line.removeprefix("tlexp: error: ")
        assert metrics["error"] == message
        assert message in (run_dir / "tlexp.log").read_text()


# ---- tlexp-inspect ---------------------------------------------------------------------------


@pytest.mark.slow
def test_inspect_default_model_draws_the_cut(tmp_path: Path) -> None:
    res = cli_here(["inspect.format=table"], cwd=tmp_path, script="tlexp-inspect", env={"COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for name in ("conv1", "pool2", "flatten", "fc1", "output"):
        assert name in out
    assert "frozen" in out and "trainable" in out and "[32, 2, 2]" in out
    assert "(= conv3)" in out  # pool2 and flatten train what conv3 trains: the README's sweep avoids them
    assert "the cache stores flatten" in out
    assert "128" in out  # the flatten boundary: 32*2*2 floats per sample
    assert list(tmp_path.iterdir()) == []  # inspecting writes nothing


@pytest.mark.slow
def test_inspect_json_is_the_architecture(tmp_path: Path) -> None:
    res = cli_here(["experiment=churn_transfer", "inspect.format=json"], cwd=tmp_path, script="tlexp-inspect")
    assert res.returncode == 0, res.stderr
    arch = json.loads(res.stdout)
    assert [n["name"] for n in arch["nodes"]] == ["dense0", "dense1", "dense2", "output"]
    assert arch["frozen"] == ["dense0", "dense1"]
    rebuilt = tlexp.LayerGraph.from_config(arch)
    assert rebuilt.node_names == ["dense0", "dense1", "dense2", "output"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["freeze.up_to=conv9"], "freeze.up_to: no layer named 'conv9'; valid: conv1, conv2"),
        (["freeze.up_to=42"], "freeze.up_to: index 42 is out of range; valid: 0..7"),
        (["surgery.ops=[{op: frobnicate}]"], "surgery.ops[0].op: unknown op 'frobnicate'; valid: add_inputs, add_layer"),
        (["surgery.ops=[{op: add_layer, name: x, type: conv2d, out_channels: 2, kernel_size: 3}]"],
         "surgery.ops[0] (add_layer 'x')"),
        (["inspect.format=yaml"], "inspect.format: 'yaml' is not a valid choice; valid: table, json"),
    ],
)
def test_inspect_bad_input_is_one_line(tmp_path: Path, args: list[str], expect: str) -> None:
    line = _one_error_line(cli_here(args, cwd=tmp_path, script="tlexp-inspect"))
    assert expect in line


# ---- tlexp: bad input --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["experiment=nope"], "Could not find 'experiment/nope'; valid: churn_pretrain, churn_transfer, continue"),
        (["source=nope"], "Could not find 'source/nope'; valid:"),
        (["finetune.lrr=1"], "finetune.lrr: no such key; valid keys here: optimizer, lr,"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs"),
        (["finetune.optimizer=adamx"], "finetune.optimizer: unknown value 'adamx'; valid: sgd, nesterov, adam"),
        (["freeze.up_to=conv9"], "freeze.up_to: no layer named 'conv9'"),
        (["freeze.mode=sometimes"], "freeze.mode: 'sometimes' is not a valid choice; valid: featurize, in_model"),
        (["featurize.dtype=int8"], "featurize.dtype: 'int8' is not a valid choice; valid: float32, float16, bfloat16"),
        (["unfreeze.bn=sometimes"], "unfreeze.bn: 'sometimes' is not a valid choice; valid: frozen, train"),
    ],
)
def test_run_bad_config_is_one_line_and_leaves_no_run_or_a_failed_one(tmp_path: Path, args: list[str], expect: str) -> None:
    run_dir = tmp_path / "run"
    line = _one_error_line(cli_here([*args, f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path))
    assert expect in line
    _no_run_or_marked_failed(run_dir, line)
    assert not list((tmp_path / "cache").glob("*.h5")) if (tmp_path / "cache").exists() else True


def _churn_file(tmp_path: Path, mutate=None) -> Path:
    header, rows = synthetic_churn(300, seed=3)
    if mutate:
        header, rows = mutate(header, rows)
    path = tmp_path / "churn.csv"
    write_csv(path, header, rows)
    return path


def _drop_label(header, rows):
    i = header.index("Exited")
    return header[:i] + header[i + 1:], [r[:i] + r[i + 1:] for r in rows]


def _bad_number(header, rows):
    rows[5][header.index("Balance")] = "n/a"
    return header, rows


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mutate", "expect"),
    [(_drop_label, "data.label: column 'Exited' is not in"), (_bad_number, "column 'Balance' has a non-numeric value 'n/a'")],
)
def test_run_bad_csv_is_one_line(tmp_path: Path, mutate, expect: str) -> None:
    path = _churn_file(tmp_path, mutate)
    run_dir = tmp_path / "run"
    res = cli_here(["experiment=churn_transfer", f"data.path={path}", f"hydra.run.dir={run_dir}",
                   f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    line = _one_error_line(res)
    assert expect in line
    _no_run_or_marked_failed(run_dir, line)


@pytest.mark.slow
def test_run_unreadable_model_folder_is_one_line(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    shipped = Path(tlexp.__file__).parent / "models" / "churn_net"
    (model / "config.json").write_text((shipped / "config.json").read_text())
    (model / "weights.safetensors").write_bytes((shipped / "weights.safetensors").read_bytes()[:200])
    run_dir = tmp_path / "run"
    res = cli_here(["experiment=churn_transfer", f"source.path={model}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    line = _one_error_line(res)
    assert "truncated or damaged" in line
    _no_run_or_marked_failed(run_dir, line)


@pytest.mark.slow
def test_run_truncated_cache_file_is_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    common = ["experiment=churn_transfer", "trainer.max_epochs=1", f"paths.cache_dir={cache}",
              "trainer.enable_progress_bar=false"]
    assert cli_here([*common, f"hydra.run.dir={tmp_path / 'ok'}"], cwd=tmp_path).returncode == 0
    victim = sorted(cache.glob("*-train.h5"))[0]
    victim.write_bytes(victim.read_bytes()[:64])
    res = cli_here([*common, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    line = _one_error_line(res)
    assert "unreadable or truncated" in line
    _no_run_or_marked_failed(tmp_path / "run", line)


# ---- packaging ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_carries_configs_and_base_models(tmp_path: Path) -> None:
    """A non-editable install (README's first command) needs conf/ and models/ inside the wheel."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("tlexp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("tlexp/conf/config.yaml", "tlexp/conf/experiment/digits_transfer.yaml", "tlexp/conf/__init__.py",
                   "tlexp/models/digits_cnn/weights.safetensors", "tlexp/models/churn_net/config.json",
                   "hydra_plugins/tlexp_gpu_pool/launcher.py", "hydra_plugins/tlexp_gpu_pool/_worker.py",
                   "tlexp/conf/hydra/launcher/ray.yaml", "tlexp/conf/hydra/launcher/slurm.yaml",
                   "tlexp/conf/hparams_search/optuna.yaml"):
        assert needed in names, needed
    # hydra_plugins stays a namespace package, shared with other Hydra plugins
    assert "hydra_plugins/__init__.py" not in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "tlexp-report = tlexp.cli:report_main" in scripts and "tlexp-cache = tlexp.cli:cache_main" in scripts


@pytest.mark.slow
def test_a_users_own_config_folder_adds_experiments(tmp_path: Path) -> None:
    """README: `tlexp --config-dir my_conf experiment=my_recipe`."""
    exp = tmp_path / "my_conf" / "experiment"
    exp.mkdir(parents=True)
    (exp / "my_recipe.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /source: saved\n  - override /data: churn\n  - override /surgery: replace_output\n"
        "name: my_recipe\nsource:\n  path: pkg://models/churn_net\nfreeze:\n  up_to: dense1\n"
    )
    res = cli_here(["--config-dir", str(tmp_path / "my_conf"), "experiment=my_recipe", "inspect.format=json"],
                  cwd=tmp_path, script="tlexp-inspect")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["frozen"] == ["dense0", "dense1"]


@pytest.mark.slow
def test_missing_logger_package_is_one_line_before_any_compute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the test extra installs tensorboard; Lightning decides from these two flags that neither
    # tensorboard nor tensorboardX is installed, as on a machine without them
    monkeypatch.setattr("lightning_fabric.loggers.tensorboard._TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr("lightning_fabric.loggers.tensorboard._TENSORBOARDX_AVAILABLE", False)
    run_dir = tmp_path / "run"
    res = cli_here(["logger=tensorboard", f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    line = _one_error_line(res)
    assert "logger: cannot create pytorch_lightning.loggers.TensorBoardLogger (Neither `tensorboard`" in line
    _no_run_or_marked_failed(run_dir, line)
    assert not list((tmp_path / "cache").glob("*.h5"))


@pytest.mark.slow
def test_tensorboard_logger_writes_every_epochs_scalars(tmp_path: Path) -> None:
    # a real process: the console script ends without Python's finalization, so the event file
    # must be complete by then (the writer is flushed and closed when the run ends)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    res = run_cli(["logger=tensorboard", "trainer.max_epochs=3", "~callbacks.early_stopping", "print_table=false",
                   f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (events,) = run_dir.glob("tensorboard/**/events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    val = acc.Scalars("val/accuracy")
    assert [e.step for e in val] == sorted({e.step for e in val}) and len(val) == 3
    assert 0.0 <= val[-1].value <= 1.0 and len(acc.Scalars("train/loss")) == 3


# A program whose top level calls tlexp's main(), as the console script does; it records what
# runs at its exit: its exit handler (must run) and Python's finalization of its objects (skipped).
TOP_LEVEL = """
import atexit, sys
from pathlib import Path

class AtFinalization:
    def __del__(self):
        Path("finalized").write_text("yes")

kept = AtFinalization()
atexit.register(lambda: Path("exit_handler").write_text("ran"))
sys.stdout.write("unflushed line from the program ")
sys.argv = ["tlexp", *sys.argv[1:]]
from tlexp.cli import main
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["trainer.max_epochs=-1"], 2)])
def test_console_main_ends_the_process_without_finalization_keeping_its_status_output_and_exit_handlers(
        tmp_path: Path, args: list[str], code: int) -> None:
    """Called from a program's top level, main() ends the process once done: its exit handlers
    run and its output is flushed, its exit status kept, but Python's finalization of every
    module (seconds with torch and Lightning loaded) is skipped."""
    import os
    import subprocess
    import sys

    (tmp_path / "prog.py").write_text(TOP_LEVEL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "prog.py", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == code, res.stderr[-2000:]
    assert res.stdout.startswith("unflushed line from the program")
    if code == 0:
        assert res.stdout.rstrip().endswith("Use --hydra-help to view Hydra specific help")  # the help, whole
    else:
        assert res.stderr.strip().splitlines()[-1].startswith("tlexp: error: trainer.max_epochs")
    assert (tmp_path / "exit_handler").read_text() == "ran"
    assert not (tmp_path / "finalized").exists()
