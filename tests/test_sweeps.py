"""Sweeps: the gpu_pool launcher, the one-pass featurize plan, the sweep report, the cache admin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import REPO, cli_here, run_cli

# A Hydra app that records what its process saw: the GPU it was given, its threads, its times.
APP = '''
import json, os, sys, time
from datetime import datetime, timezone

import hydra


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def task(cfg):
    from hydra.core.hydra_config import HydraConfig
    import torch

    start = datetime.now(timezone.utc).isoformat()
    # this app never imports Lightning: loaded here means the job was forked from the warm pool
    preloaded = "pytorch_lightning" in sys.modules
    time.sleep(float(cfg.sleep))
    out = HydraConfig.get().runtime.output_dir
    seen = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads(), "pid": os.getpid(),
            "start": start, "end": datetime.now(timezone.utc).isoformat(),
            "preloaded": preloaded, "ppid": os.getppid()}
    with open(os.path.join(out, "seen.json"), "w") as f:
        json.dump(seen, f)
    return float(cfg.sleep)


if __name__ == "__main__":
    task()
'''


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"}


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app.py"
    app.write_text(APP)
    return app


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux), and theirs."""
    out: list[int] = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in f.read_text().split():
            out += [int(c), *_children(int(c))]
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s)


@pytest.mark.slow
def test_gpu_pool_hands_each_job_one_of_four_simulated_gpus_and_refills_a_freed_slot(tmp_path: Path) -> None:
    app, sweep = _app(tmp_path), tmp_path / "sweep"
    # job 0 runs long; the next job must start when any of jobs 1-3 ends, not when the batch does
    res = subprocess.run(
        [sys.executable, str(app), "-m", "hydra/launcher=gpu_pool", "hydra.launcher.devices=[0,1,2,3]",
         "+sleep=8,0,0,0,0", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((sweep / "gpu_pool.json").read_text())
    assert summary["slots"] == 4 and summary["devices"] == ["0", "1", "2", "3"]
    jobs = {j["num"]: j for j in summary["jobs"]}
    seen = {n: json.loads((Path(j["dir"]) / "seen.json").read_text()) for n, j in jobs.items()}
    # each job saw exactly the device its slot holds, set before the process started
    for n in jobs:
        assert seen[n]["cuda"] == jobs[n]["device"]
        assert seen[n]["threads"] == max(1, len(os.sched_getaffinity(0)) // 4)
    assert {seen[n]["cuda"] for n in range(4)} == {"0", "1", "2", "3"}  # the first four: one per GPU
    assert len({seen[n]["pid"] for n in seen}) == 5  # a fresh process per job
    assert all(seen[n]["preloaded"] for n in seen)  # forked from the warm fork server
    assert summary["fork_server"] == "fresh interpreter"  # this app has no tlexp callback to fork it early
    # job 4 took a slot freed by a short job while job 0 still held GPU 0
    assert seen[4]["cuda"] != seen[0]["cuda"]
    assert _t(jobs[4]["started_at"]) < _t(jobs[0]["finished_at"])


@pytest.mark.slow
def test_gpu_pool_without_zygote_starts_a_fresh_interpreter_per_job(tmp_path: Path) -> None:
    app, sweep = _app(tmp_path), tmp_path / "sweep"
    res = subprocess.run(
        [sys.executable, str(app), "-m", "hydra/launcher=gpu_pool", "hydra.launcher.devices=[]", "hydra.launcher.slots=2",
         "hydra.launcher.zygote=false", "+sleep=0,0", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = json.loads((sweep / "gpu_pool.json").read_text())["jobs"]
    seen = [json.loads((Path(j["dir"]) / "seen.json").read_text()) for j in jobs]
    assert [s["cuda"] for s in seen] == ["", ""] and not any(s["preloaded"] for s in seen)
    assert len({s["pid"] for s in seen}) == 2
    assert json.loads((sweep / "gpu_pool.json").read_text())["fork_server"] is None


@pytest.mark.slow
def test_gpu_pool_ctrl_c_stops_every_job(tmp_path: Path) -> None:
    app, sweep = _app(tmp_path), tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, str(app), "-m", "hydra/launcher=gpu_pool", "hydra.launcher.slots=2", "hydra.launcher.devices=[]",
         "hydra.launcher.kill_timeout_s=5", "+sleep=300,300,300", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and len(pids) < 2:
        time.sleep(0.5)
        try:
            jobs = json.loads((sweep / "gpu_pool.json").read_text())["jobs"]
        except (OSError, ValueError):
            continue
        pids = [j["pid"] for j in jobs if j.get("status") == "running"]
    assert len(pids) == 2, "two jobs should be running"
    # every process the sweep started: the jobs, and the fork server (with its resource tracker)
    helpers = _children(proc.pid)
    assert set(pids) < set(helpers), (pids, helpers)  # the jobs are among them, and the fork server
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    deadline = time.time() + 30  # the fork server ends when the sweep's process has gone
    while time.time() < deadline and any(_alive(p) for p in helpers):
        time.sleep(0.5)
    assert not any(_alive(p) for p in helpers), [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in helpers if _alive(p)]
    summary = json.loads((sweep / "gpu_pool.json").read_text())
    assert summary["interrupted"] is True
    assert sorted(j["status"] for j in summary["jobs"]) == ["interrupted", "interrupted", "not started"]


@pytest.mark.slow
def test_gpu_pool_sweep_killed_outright_leaves_no_job_running(tmp_path: Path) -> None:
    app, sweep = _app(tmp_path), tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, str(app), "-m", "hydra/launcher=gpu_pool", "hydra.launcher.slots=2", "hydra.launcher.devices=[]",
         "+sleep=300,300", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and len(pids) < 2:
        time.sleep(0.5)
        try:
            pids = [j["pid"] for j in json.loads((sweep / "gpu_pool.json").read_text())["jobs"] if j.get("status") == "running"]
        except (OSError, ValueError):
            continue
    assert len(pids) == 2, "two jobs should be running"
    time.sleep(1)
    helpers = _children(proc.pid)
    proc.kill()  # SIGKILL: the sweep cannot stop its jobs itself
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in helpers):
        time.sleep(0.5)
    assert not any(_alive(p) for p in [*pids, *helpers])


@pytest.mark.slow
def test_depth_sweep_on_gpu_pool_one_pass_failure_recorded_and_report(tmp_path: Path) -> None:
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    # 2 cuts x 3 lr; lr=-1 is refused by each job that gets it (one per cut); the first two jobs,
    # which start together, both complete (a 1-epoch job is shorter than a job's start and exit,
    # so a job started when a failed one ends need not overlap the one still running)
    res = run_cli(["-m", "hydra/launcher=gpu_pool", "hydra.launcher.slots=2", "hydra.launcher.devices=[]",
                   "freeze.up_to=pool2,flatten", "finetune.lr=0.01,0.003,-1", "trainer.max_epochs=1",
                   "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache}"],
                  cwd=tmp_path, timeout=900)
    # the sweep's exit status is the number of failed jobs; the others finished
    assert res.returncode == 2, res.stderr[-3000:]
    assert "2 of 6 job(s) failed" in res.stderr
    summary = json.loads((sweep / "gpu_pool.json").read_text())
    assert summary["failed"] == 2 and summary["completed"] == 4
    # the jobs were forked from a fork server that was itself a fork of the sweep's process (after
    # its imports, before the plan's compute), not a fresh interpreter importing torch again
    assert summary["fork_server"] == "forked"
    jobs = {j["num"]: j for j in summary["jobs"]}
    for j in jobs.values():
        d = Path(j["dir"])
        if "finetune.lr=-1" in j["overrides"]:
            assert j["status"] == "failed" and j["exit_code"] == 2
            assert "finetune.lr" in (d / "error.txt").read_text()
        else:
            m = json.loads((d / "metrics.json").read_text())
            assert m["status"] == "completed"
            assert m["featurize"]["cache_hit"] is True  # the plan featurized before the jobs started
            assert "before_fit" in m["baseline"]
    # two jobs ran at once: their started/finished intervals overlap
    spans = [(_t(m["timing"]["started_at"]), _t(m["timing"]["finished_at"]))
             for m in (json.loads((Path(j["dir"]) / "metrics.json").read_text()) for j in jobs.values()
                       if j["status"] == "completed")]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])
    # one pass over each split for both cuts
    plan = json.loads((sweep / "featurize_plan.json").read_text())
    assert len(plan["groups"]) == 1
    group = plan["groups"][0]
    assert sorted(c["up_to"] for c in group["cuts"]) == ["flatten", "pool2"]
    assert group["passes"] == {"train": 1, "val": 1}
    # one model prepared per cut: the jobs that differ from it only in finetune.lr share its key
    by_num = {j["num"]: j for j in plan["jobs"]}
    assert sum("planned_as" not in j for j in plan["jobs"]) == 2
    assert all(by_num[j["planned_as"]]["key"] == j["key"] for j in plan["jobs"] if "planned_as" in j)
    # the report: every job, and a real PNG
    report = cli_here([str(sweep)], cwd=tmp_path, script="tlexp-report")
    assert report.returncode == 0, report.stderr
    rows = (sweep / "report.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6
    assert sum("failed" in r for r in rows[1:]) == 2
    # each run's baseline (the model before fitting) beside its fine-tuned result, in the CSV and the table
    import csv

    table = {r["job"]: r for r in csv.DictReader((sweep / "report.csv").open())}
    for j in jobs.values():
        if j["status"] == "completed":
            m = json.loads((Path(j["dir"]) / "metrics.json").read_text())
            row = table[str(j["num"])]
            assert float(row["before_fit/accuracy"]) == pytest.approx(m["baseline"]["before_fit"]["accuracy"], abs=1e-6)
            assert float(row["test/accuracy"]) == pytest.approx(m["test"]["accuracy"], abs=1e-6)
    assert "| before_fit/accuracy |" in (sweep / "report.md").read_text()
    assert "best run by val/accuracy" in report.stdout
    import matplotlib.image

    png = sweep / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).shape[0] > 100


@pytest.mark.slow
def test_basic_launcher_sweep_goes_on_past_a_failed_job_and_exits_with_the_count(tmp_path: Path) -> None:
    """Hydra's basic launcher runs the jobs in the sweep's own process: a job's user error
    (exit status 2 on its own) fails that job only; the sweep's exit status is how many failed."""
    sweep = tmp_path / "sweep"
    # lr=-1 is refused by the job that gets it, the first of the three
    res = run_cli(["-m", "freeze.up_to=flatten", "finetune.lr=-1,0.01,0.003", "trainer.max_epochs=1",
                   "trainer.enable_progress_bar=false", "logger=none", f"hydra.sweep.dir={sweep}",
                   f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, timeout=600)
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "tlexp: error: job #0 (" in res.stderr and "finetune.lr" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("tlexp: error: 1 of 3 job(s) failed: #0 (")
    jobs = {m.parent.name.split("_", 1)[0]: json.loads(m.read_text()) for m in sweep.glob("*/metrics.json")}
    assert sorted(jobs) == ["0", "1", "2"]
    assert jobs["0"]["status"] == "failed" and "finetune.lr" in jobs["0"]["error"]
    assert jobs["1"]["status"] == jobs["2"]["status"] == "completed"
    (failed_dir,) = sweep.glob("0_*")
    assert "finetune.lr" in (failed_dir / "error.txt").read_text()
    # the report of the whole sweep, the failed job in it
    rows = (sweep / "report.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 and sum("failed" in r for r in rows[1:]) == 1


def test_one_pass_is_bit_identical_to_each_cut_alone_and_reads_the_data_once(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    import pytorch_lightning as pl

    from tlexp.featurize import FEATURIZED_SPLITS, featurize, featurize_cuts
    from tlexp.freeze import resolve_cut
    from tlexp.train import prepare

    cfg = compose_cfg("freeze.up_to=flatten")
    pl.seed_everything(cfg.seed, verbose=False)
    p = prepare(cfg)
    graph, data = p.graph, p.data
    reads = {s: 0 for s in FEATURIZED_SPLITS}
    plain = data.dataset

    class Counting(list):  # the split, counting every sample read
        def __init__(self, split):
            self.split, self.ds = split, plain(split)

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            reads[self.split] += 1
            return self.ds[i]

    names = [n for n in graph.node_names if n in p.cut]
    cuts = [resolve_cut(graph, n) for n in names[-3:]]  # three nested cuts, the deepest last
    monkeypatch.setattr(data, "dataset", lambda split: Counting(split))
    # the dtype as the config holds it (a Choice), as the sweep's plan passes it
    res = featurize_cuts(graph, cuts, data, tmp_path / "one", dtype=cfg.featurize.dtype, batch_size=32)
    monkeypatch.setattr(data, "dataset", plain)
    assert reads == {s: len(plain(s)) for s in FEATURIZED_SPLITS}  # each split's data read once
    assert res.passes == {"train": 1, "val": 1}
    assert len(set(res.keys)) == 3
    for cut, key in zip(cuts, res.keys):
        graph.set_frozen(cut)
        prefix, _ = graph.split(cut)
        alone = featurize(prefix, graph.boundary(cut), data, tmp_path / "alone", batch_size=32)
        assert alone.key == key
        for split in FEATURIZED_SPLITS:
            with h5py.File(tmp_path / "one" / f"{key}-{split}.h5") as a, h5py.File(alone.files[split].path) as b:
                assert sorted(a.keys()) == sorted(b.keys())
                for name in a:
                    assert np.array_equal(a[name][()], b[name][()])  # bit for bit
                    assert a[name].dtype == b[name].dtype
    # a second plan finds everything cached and reads nothing
    again = featurize_cuts(graph, cuts, data, tmp_path / "one", batch_size=32)
    assert again.passes == {"train": 0, "val": 0}


def _fake_run(d: Path, overrides: list[str], metrics: dict | None) -> None:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


def test_report_orders_depth_by_network_and_picks_best_by_validation(tmp_path: Path) -> None:
    from tlexp.sweep.report import load_sweep, write_report

    sweep = tmp_path / "s"
    n = 0
    # deeper cuts freeze more nodes; test accuracy is best where validation is not
    for cut, frozen in (("layer4", 9), ("layer2", 5)):
        for lr in ("0.1", "0.01"):
            for seed in ("1", "2"):
                val = 0.5 + 0.1 * (cut == "layer2") + 0.05 * (lr == "0.01") + 0.01 * int(seed)
                test = 0.9 if cut == "layer4" else 0.1
                _fake_run(sweep / f"{n}_x", [f"freeze.up_to={cut}", f"finetune.lr={lr}", f"seed={seed}"],
                          {"status": "completed", "val": {"accuracy": val}, "test": {"accuracy": test},
                           "freeze": {"frozen": [f"n{i}" for i in range(frozen)]},
                           "timing": {"featurize_s": 1.0, "fit_s": 2.0}, "featurize": {"cache_hit": n % 2 == 1}})
                n += 1
    _fake_run(sweep / f"{n}_x", ["freeze.up_to=layer2", "finetune.lr=0.5", "seed=1"], None)  # died before metrics
    rep = load_sweep(sweep)
    assert rep.swept == ["finetune.lr", "freeze.up_to", "seed"]
    assert rep.best is not None and rep.best.overrides == {"freeze.up_to": "layer2", "finetune.lr": "0.01", "seed": "2"}
    assert [r.status for r in rep.failed] == ["failed"]
    from tlexp.sweep.report import _depth_order

    assert _depth_order(rep, "freeze.up_to") == ["layer2", "layer4"]
    paths = write_report(rep)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    md = paths["md"].read_text()
    assert md.count("\n| ") == 1 + 9 and "best run by val/accuracy: job 7" in md


def test_tlexp_cache_list_and_prune(tmp_path: Path) -> None:
    from tlexp.featurize._admin import prune, scan
    from tlexp.featurize._index import note_entry

    cache = tmp_path / "cache"
    cache.mkdir()
    now = time.time()
    for i, (age_days, size) in enumerate(((40, 1000), (10, 3000), (1, 2000))):
        key = f"{i:032x}"
        for split in ("train", "val"):
            (cache / f"{key}-{split}.h5").write_bytes(b"x" * size)
        note_entry(cache, key, {"up_to": f"layer{i}", "source": "zoo: resnet18", "data": {"data": "digits"},
                                "dtype": "float32", "writer": "test"}, wrote=True)
        for f in cache.glob(f"{key}*"):
            os.utime(f, (now - age_days * 86400, now - age_days * 86400))
    assert [e.key[-1] for e in scan(cache)] == ["2", "1", "0"]  # most recently used first
    removed, _ = prune(cache, older_than_s=30 * 86400, dry_run=True)
    assert [e.key[-1] for e in removed] == ["0"] and len(scan(cache)) == 3  # dry run: nothing removed
    removed, _ = prune(cache, older_than_s=30 * 86400, max_size=5000)
    assert [e.key[-1] for e in removed] == ["0", "1"]  # too old, then least recently used above the size
    assert [e.key for e in scan(cache)] == [f"{2:032x}"]


@pytest.mark.slow
def test_tlexp_cache_command_line(tmp_path: Path) -> None:
    from tlexp.featurize._admin import scan
    from tlexp.featurize._index import note_entry

    cache = tmp_path / "cache"
    cache.mkdir()
    key = "ab" * 16
    (cache / f"{key}-train.h5").write_bytes(b"x" * 10)
    note_entry(cache, key, {"up_to": "layer2", "source": "zoo: resnet18", "data": {"data": "digits"}}, wrote=True)
    # wide enough that no cell folds (at 80 columns the table folds long values over lines)
    res = cli_here(["--cache-dir", str(cache), "list"], cwd=tmp_path, script="tlexp-cache", env={"COLUMNS": "200"})
    assert res.returncode == 0 and "layer2" in res.stdout and "resnet18" in res.stdout
    bad = cli_here(["--cache-dir", str(cache), "prune", "--older-than", "soon"], cwd=tmp_path, script="tlexp-cache")
    assert bad.returncode == 2 and "--older-than" in bad.stderr and len(scan(cache)) == 1


def test_gpu_pool_slots_follow_the_visible_devices(monkeypatch) -> None:
    from hydra_plugins.tlexp_gpu_pool.launcher import GpuPoolLauncher

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [s.device for s in GpuPoolLauncher(jobs_per_gpu=2).make_slots()] == ["2", "3", "2", "3"]
    assert len(GpuPoolLauncher(jobs_per_gpu=2, slots=3).make_slots()) == 3  # slots caps the GPU slots
    assert [s.device for s in GpuPoolLauncher(devices=[0, 1, 2, 3]).make_slots()] == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert [s.device for s in GpuPoolLauncher(slots=2).make_slots()] == [None, None]  # CPU slots
    with pytest.raises(ValueError, match="jobs_per_gpu"):
        GpuPoolLauncher(jobs_per_gpu=0)


def test_gpu_pool_cpu_slots_and_threads_follow_the_cores_this_process_may_use(monkeypatch) -> None:
    """A process held to 4 of a machine's 64 cores (taskset, a SLURM allocation) splits those 4."""
    from hydra_plugins.tlexp_gpu_pool import launcher

    monkeypatch.setattr(launcher.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(launcher.os, "cpu_count", lambda: 64)
    pool = launcher.GpuPoolLauncher(devices=[])
    assert len(pool.make_slots()) == 2 and pool._threads(2) == 2
    assert launcher.GpuPoolLauncher(devices=[], slots=4)._threads(4) == 1


def test_cache_lock_says_when_it_holds_on_this_machine_only(tmp_path: Path, monkeypatch, caplog) -> None:
    from tlexp.featurize import _index

    shared = tmp_path / "shared dir"
    (shared / "cache").mkdir(parents=True)
    point = str(shared.resolve()).replace(" ", "\\040")  # mountinfo escapes a space

    def mounts(fstype: str, options: str) -> Path:
        f = tmp_path / f"mountinfo-{fstype}-{len(options)}"
        f.write_text("22 1 0:21 / / rw,relatime - ext4 /dev/sda1 rw\n"
                     f"90 22 0:50 / {point} rw,relatime - {fstype} server:/export {options}\n")
        return f

    cache = shared / "cache"
    ok = "rw,vers=4.2,hard,proto=tcp,local_lock=none,addr=10.0.0.1"
    assert _index.lock_scope_problem(cache, mounts("nfs4", ok)) is None
    assert _index.lock_scope_problem(tmp_path, mounts("nfs", "rw,nolock")) is None  # not under the mount
    for fstype, options, word in (("nfs", "rw,vers=3,nolock,local_lock=all", "local_lock=all"),
                                  ("nfs4", "rw,local_lock=flock", "local_lock=flock"),
                                  ("cifs", "rw,nobrl", "nobrl"), ("lustre", "rw,localflock", "localflock")):
        problem = _index.lock_scope_problem(cache, mounts(fstype, options))
        assert problem and problem.startswith("paths.cache_dir:") and word in problem and "this machine only" in problem
    # a run's key lock warns once per cache folder, and still locks
    monkeypatch.setattr(_index, "MOUNTINFO", str(mounts("nfs", "rw,nolock,local_lock=all")))
    monkeypatch.setattr(_index, "_warned", set())
    with caplog.at_level("WARNING"), _index.key_lock(cache, "k1"), _index.key_lock(cache, "k2"):
        pass
    assert sum("this machine only" in r.getMessage() for r in caplog.records) == 1


def test_cache_lock_refuses_a_file_system_without_locks(tmp_path: Path, monkeypatch) -> None:
    import errno
    import fcntl

    from tlexp.errors import ConfigError
    from tlexp.featurize import _index

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ConfigError, match="paths.cache_dir: .* does not support file locks"), _index.key_lock(tmp_path, "k"):
        pass
