"""Sweeps on the engines beyond one process: a local Ray, submitit's local executor, Optuna."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

SMALL = ["freeze.up_to=flatten", "finetune.lr=0.01,0.003", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
         "logger=none"]


def _jobs(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "submitit_local"])
def test_small_sweep_on_an_engine(engine: str, tmp_path: Path) -> None:
    if engine == "ray":
        pytest.importorskip("hydra_plugins.hydra_ray_launcher")
        launcher = ["hydra/launcher=ray", "++hydra.launcher.ray.init.num_cpus=2",
                    "++hydra.launcher.ray.init.include_dashboard=false"]
    else:
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
        launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", *launcher, *SMALL, f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"],
                  cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 2 and all(m["status"] == "completed" for m in jobs)
    # the plan featurized the shared cut once, before the engine ran the jobs
    assert all(m["featurize"]["cache_hit"] for m in jobs)
    plan = json.loads((sweep / "featurize_plan.json").read_text())
    assert plan["groups"][0]["passes"] == {"train": 1, "val": 1}
    assert (sweep / "report.csv").is_file()  # the report printed at the sweep's end


@pytest.mark.slow
def test_optuna_search_of_three_trials_on_gpu_pool(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                   "hydra/launcher=gpu_pool", "hydra.launcher.slots=2", "hydra.launcher.devices=[]",
                   "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none",
                   f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"],
                  cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 3
    # the pool's summary keeps every batch the sweeper launched
    assert len(json.loads((sweep / "gpu_pool.json").read_text())["jobs"]) == 3
    cuts = [m["freeze"]["up_to"] for m in jobs]
    assert set(cuts) <= {"pool2", "flatten"}
    result = (sweep / "optimization_results.yaml").read_text()
    from omegaconf import OmegaConf

    best = OmegaConf.create(result)
    # the value optimized is the runs' val/accuracy, and the best is the best of them
    assert best.best_value == pytest.approx(max(m["val"]["accuracy"] for m in jobs))
    assert set(best.best_params) == {"freeze.up_to", "finetune.lr"}


@pytest.mark.parametrize(("launcher", "target", "keys"), [
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
     {"partition", "timeout_min", "gpus_per_node", "mem_gb", "cpus_per_task"}),
    ("ray", "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", {"ray"}),
    ("gpu_pool", "hydra_plugins.tlexp_gpu_pool.launcher.GpuPoolLauncher", {"slots", "jobs_per_gpu", "devices"}),
])
def test_launcher_configs_compose(launcher: str, target: str, keys: set[str]) -> None:
    from hydra import compose, initialize_config_dir

    from tlexp._resources import CONF_DIR

    pytest.importorskip(target.rsplit(".", 2)[0])
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    node = cfg.hydra.launcher
    assert node._target_ == target
    assert keys <= set(node)
    if launcher == "ray":
        assert node.ray.remote.max_calls == 1  # a fresh worker per job
