"""tlexp-inspect starts light: on the default experiment it imports neither Lightning nor timm
(nor the data modules), and it shows the model a run would build (one assembly, tlexp.assemble)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "timm", "sklearn", "h5py")


@pytest.mark.slow
def test_inspect_on_the_default_experiment_imports_neither_lightning_nor_timm(tmp_path: Path) -> None:
    # called at the program's top level (as the console script does), inspect_main ends the
    # process when done: the exit handler below still runs and prints, Python's finalization of
    # the objects (as long as importing torch took) is skipped
    code = (
        "import atexit, sys\n"
        "from pathlib import Path\n"
        "class AtFinalization:\n"
        "    def __del__(self):\n"
        "        Path('finalized').write_text('yes')\n"
        "kept = AtFinalization()\n"
        "sys.argv = ['tlexp-inspect']\n"
        f"atexit.register(lambda: print(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
        "from tlexp.cli import inspect_main\n"
        "inspect_main()\n"
        "print('not reached')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "flatten" in res.stdout and "not reached" not in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "finalized").exists()


def test_inspect_and_a_run_assemble_the_model_in_one_place() -> None:
    import tlexp.inspect
    import tlexp.train
    from tlexp import assemble

    assert tlexp.train.build_model is assemble.build_model
    source = Path(tlexp.inspect.__file__).read_text()
    assert "tlexp.train" not in source and "from tlexp.assemble import" in source


def test_inspect_composes_the_config_once_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    # Hydra's app composes twice (once to learn the run mode); inspect uses the compose API once
    import json
    import sys

    from hydra._internal.hydra import Hydra

    from tlexp.cli import inspect_main

    calls: list[int] = []
    real = Hydra.compose_config

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Hydra, "compose_config", counting)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tlexp-inspect", "inspect.format=json"])
    inspect_main()
    assert len(calls) == 1
    assert json.loads(capsys.readouterr().out)["format"] == "tlexp.layergraph/1"
    assert list(tmp_path.iterdir()) == []


def test_a_run_composes_the_config_once_in_hydras_run_folder(tmp_path: Path, monkeypatch) -> None:
    # a plain command line is one run: Hydra's runner (run folder, .hydra/, logging) without the
    # app's first composition; -m, --help, --config-dir and sweepers still go through Hydra's app
    import sys

    from hydra._internal.hydra import Hydra

    from tlexp import cli

    calls: list[int] = []
    seen: list = []
    real = Hydra.compose_config

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Hydra, "compose_config", counting)
    monkeypatch.setattr(cli, "_run_task", lambda cfg: seen.append(cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tlexp", f"hydra.run.dir={tmp_path}/run", "finetune.lr=0.5"])
    cli.main()
    assert len(calls) == 1 and len(seen) == 1 and seen[0].finetune.lr == 0.5
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    from hydra.core.global_hydra import GlobalHydra

    assert not GlobalHydra.instance().is_initialized()  # an in-process compose after a run still works
    assert cli._one_run_overrides(["-m", "finetune.lr=0.1,0.2"]) is None
    assert cli._one_run_overrides(["hparams_search=optuna"]) is None
    assert cli._one_run_overrides(["freeze=none", "finetune.lr=1"]) == ["freeze=none", "finetune.lr=1"]


@pytest.mark.slow
def test_openmp_threads_sleep_when_idle_unless_the_user_chose(tmp_path: Path) -> None:
    # set before torch loads (OpenMP reads it once): spinning threads on a busy machine made a
    # run of the default experiment several times slower (benchmarks/startup.py)
    code = "import os, sys; import tlexp; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["PASSIVE", "True"]
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, timeout=300)
    assert res.stdout.split() == ["ACTIVE", "True"], res.stderr[-2000:]


@pytest.mark.slow
def test_a_plain_run_imports_no_sklearn_and_writes_hydras_files(tmp_path: Path) -> None:
    # importing scikit-learn cost a run of the default experiment about 0.3 s of its start-up
    # (the digits come from its bundled file, the splits are its draws made with numpy)
    code = (
        "import atexit, sys\n"
        f"sys.argv = ['tlexp', 'trainer.max_epochs=1', 'hydra.run.dir={tmp_path}/run', 'paths.cache_dir={tmp_path}/cache']\n"
        # main() at the top level ends the process when done; exit handlers still run
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn')))\n"
        "from tlexp.cli import main\n"
        "main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
    hydra_dir = tmp_path / "run" / ".hydra"
    assert sorted(p.name for p in hydra_dir.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "trainer.max_epochs=1" in (hydra_dir / "overrides.yaml").read_text()
    assert "max_epochs: 1" in (hydra_dir / "config.yaml").read_text()
