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


@pytest.mark.slow
def test_optuna_search_goes_on_past_a_failed_trial(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    # lr=-1 is refused by the run that gets it; with this seed the sampler draws it in each batch of 2
    res = run_cli(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                   "freeze.up_to=flatten", "finetune.lr=choice(0.01,-1)", "seed=10",
                   "hydra/launcher=gpu_pool", "hydra.launcher.slots=2", "hydra.launcher.devices=[]",
                   "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none",
                   f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"],
                  cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Failed experiment" in res.stdout + res.stderr
    pool = json.loads((sweep / "gpu_pool.json").read_text())["jobs"]
    assert len(pool) == 4  # every trial ran: the failed one did not stop the search
    failed = [j for j in pool if j["status"] == "failed"]
    assert failed and all("finetune.lr=-1" in j["overrides"] for j in failed)
    assert len(failed) < 4
    jobs = [m for m in _jobs(sweep) if m["status"] == "completed"]
    assert len(jobs) == 4 - len(failed)
    from omegaconf import OmegaConf

    best = OmegaConf.create((sweep / "optimization_results.yaml").read_text())
    assert best.best_params["finetune.lr"] == 0.01
    assert best.best_value == pytest.approx(max(m["val"]["accuracy"] for m in jobs))
    report = (sweep / "report.csv").read_text().strip().splitlines()
    assert len(report) == 1 + 4 and sum("failed" in r for r in report[1:]) == len(failed)
    # a search whose every trial fails ends with one line, not Optuna's traceback
    res = run_cli(["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1",
                   "freeze.up_to=flatten", "finetune.lr=choice(-1)", "hydra/launcher=gpu_pool", "hydra.launcher.slots=1",
                   "hydra.launcher.devices=[]", f"hydra.sweep.dir={tmp_path / 'all_failed'}",
                   f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, timeout=900)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("tlexp: error: hparams_search: every trial failed")


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


@pytest.mark.parametrize("gpu", [False, True])
def test_throughput_benchmark_sweeps_compose(gpu: bool) -> None:
    """benchmarks/sweep_throughput.py's sweeps compose as written (``--gpu``: jobs_per_gpu=2 on
    trainer=gpu), so a GPU machine runs them without a first failed try."""
    import importlib.util

    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tests.conftest import REPO
    from tlexp._resources import CONF_DIR

    spec = importlib.util.spec_from_file_location("sweep_throughput", REPO / "benchmarks" / "sweep_throughput.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (basic_name, basic), (pool_name, pool) = bench.sweep_overrides(3, gpu)
    assert basic_name == "basic" and not any(a.startswith("hydra/launcher") for a in basic)
    parser = OverridesParser.create()
    # the first job of the sweep, as the launcher composes it
    first = [o.key_or_group + "=" + str(next(iter(o.sweep_string_iterator()))) if o.is_sweep_override() else o.input_line
             for o in parser.parse_overrides(pool)]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=first, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("GpuPoolLauncher")
    if gpu:
        assert cfg.hydra.launcher.jobs_per_gpu == 2 and cfg.hydra.launcher.devices is None
        assert cfg.trainer.accelerator == "gpu"
    else:
        assert cfg.hydra.launcher.slots == 2 and list(cfg.hydra.launcher.devices) == []
    assert cfg.trainer.max_epochs == 3 and cfg.freeze.up_to == "pool2"
    # every job does the same work (no early stop), on every training image: jobs of seconds, not a fraction of one
    assert "early_stopping" not in cfg.callbacks and cfg.data.max_per_class is None
    assert [a for a in basic if not a.startswith("hydra")] == [a for a in pool if not a.startswith("hydra")]


def test_throughput_benchmark_splits_the_sweep_into_its_jobs_phase_and_the_fixed_part(tmp_path: Path) -> None:
    """sweep_throughput.py's jobs phase: the first job's start to the last job's end, from the jobs'
    metrics.json; the fixed part: process start to the first job, the last job to the end."""
    import importlib.util
    from datetime import datetime, timezone

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("sweep_throughput", REPO / "benchmarks" / "sweep_throughput.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    for i, (start, end) in enumerate([(10.0, 14.0), (11.0, 13.0), (14.5, 19.0)]):
        (tmp_path / str(i)).mkdir()
        timing = {"started_at": datetime.fromtimestamp(t0 + start, timezone.utc).isoformat(),
                  "finished_at": datetime.fromtimestamp(t0 + end, timezone.utc).isoformat()}
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps({"status": "completed", "timing": timing}))
    times = bench.sweep_times(tmp_path, t0, t0 + 21.0)
    assert times == pytest.approx({"phase": 9.0, "before": 10.0, "after": 2.0})
