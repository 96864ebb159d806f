"""A model file cannot decide what to allocate or load; run names stay inside the run folder;
model/ follows the umask; metrics.json is strict JSON."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import pytest
import torch

import tlexp
from tlexp._resources import MODELS_DIR
from tlexp.errors import SourceError
from tlexp.sources.saved import load_model, save_model


def _copy_churn(tmp_path: Path) -> tuple[Path, dict]:
    model = tmp_path / "model"
    shutil.copytree(MODELS_DIR / "churn_net", model)
    return model, json.loads((model / "config.json").read_text())


@pytest.mark.parametrize(("size", "expect"), [(10**9, "above the limit"), (50_000, "does not fit config.json")])
def test_absurd_layer_sizes_are_refused_before_allocation(tmp_path: Path, size: int, expect: str) -> None:
    model, cfg = _copy_churn(tmp_path)
    cfg["architecture"]["nodes"][1]["args"]["out_features"] = size
    cfg["architecture"]["nodes"][2]["args"]["in_features"] = size
    (model / "config.json").write_text(json.dumps(cfg))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SourceError, match=expect):
        load_model(model)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200_000, f"{grown_kib} KiB allocated for a refused file"  # 1e9×6 floats would be 24 GB


def test_smuggled_timm_kwarg_is_refused_and_nothing_is_loaded(tmp_path: Path, monkeypatch) -> None:
    from tlexp.sources.zoo import load_zoo

    graph = load_zoo("test_resnet", input_size=[3, 32, 32])
    save_model(graph, tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    cfg = json.loads(path.read_text())
    timm_nodes = [n for n in cfg["architecture"]["nodes"] if n["type"] == "timm_module"]
    assert timm_nodes
    victim = tmp_path / "elsewhere.pth"
    torch.save({"x": torch.zeros(1)}, victim)
    timm_nodes[0]["args"]["kwargs"] = {**(timm_nodes[0]["args"].get("kwargs") or {}), "checkpoint_path": str(victim)}
    path.write_text(json.dumps(cfg))

    def no_load(*a, **k):
        raise AssertionError("torch.load was called on a path the model file names")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(SourceError, match="checkpoint_path.*not an allowed timm.create_model argument"):
        load_model(tmp_path / "model")
    assert load_model(MODELS_DIR / "churn_net") is not None  # ordinary files still load


def test_load_model_takes_pkg_paths_and_not_outside_the_package() -> None:
    graph = tlexp.load_model("pkg://models/churn_net")
    assert graph.node_names[-1] == "output"
    with pytest.raises(tlexp.TlexpError, match="inside the tlexp package"):
        tlexp.load_model("pkg://../../etc")


def test_run_names_with_dot_dot_stay_inside_the_run_folder(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig  # noqa: F401
    from omegaconf import OmegaConf

    from tlexp._resources import CONF_DIR

    root = tmp_path / "root"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["name=../../../../ESCAPED", f"paths.root_dir={root}"], return_hydra_config=True)
    OmegaConf.resolve(cfg.hydra.run)
    run_dir = Path(cfg.hydra.run.dir).resolve()
    assert run_dir.is_relative_to((root / "outputs" / "runs").resolve()), run_dir
    assert "ESCAPED" in run_dir.name and ".." not in run_dir.parts


def test_model_folder_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = save_model(load_model(MODELS_DIR / "churn_net"), tmp_path / "model", optimizer_state=None)
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    for f in out.iterdir():
        assert oct(f.stat().st_mode & 0o777) == oct(0o644), f
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_metrics_json_is_strict_json(tmp_path: Path) -> None:
    from tlexp.train import write_metrics

    write_metrics(tmp_path, {"val": {"loss": float("nan"), "accuracy": 0.5}, "test": {"loss": float("inf")}},
                  status="completed", started_at="2026-01-01T00:00:00.000Z")

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    m = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert m["val"]["loss"] is None and m["test"]["loss"] is None and m["val"]["accuracy"] == 0.5
    assert m["status"] == "completed" and m["timing"]["finished_at"] > m["timing"]["started_at"]


@pytest.mark.slow  # starts a process (for a dead PID) and trains a whole run
def test_a_killed_runs_model_temp_folder_is_removed_by_the_next_run(compose_cfg, tmp_path: Path) -> None:
    """A run killed while writing model/ leaves `.model~HOST~PID~….tmp/` in its folder; the next
    run there removes it (its writer is gone) before anything else, never a live writer's."""
    import subprocess

    from tlexp._tempfiles import temp_path
    from tlexp.errors import ConfigError
    from tlexp.train import run

    out = tmp_path / "run"
    out.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = temp_path(out / "model")
    dead = live.with_name(live.name.replace(f"~{os.getpid()}~", f"~{gone.pid}~"))
    for d in (live, dead):
        d.mkdir()
        (d / "weights.safetensors").write_bytes(b"partial")
    with pytest.raises(ConfigError, match="data.batch_size"):  # the next run (here one that stops at once)
        run(compose_cfg("data.batch_size=0"))
    assert live.is_dir() and not dead.exists()
