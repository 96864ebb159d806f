"""One config schema: the composed config becomes typed objects once (tlexp.config.typed_config,
``OmegaConf.to_object``) at the entry points, and the code past them reads typed attributes."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from tlexp import config as c
from tlexp.errors import ConfigError

PACKAGE = Path(c.__file__).resolve().parent

#: what a Choice's repr or its class-qualified name looks like in a written file
ENUM_TEXT = re.compile(r"\b(" + "|".join(e.__name__ for e in vars(c).values()
                                         if isinstance(e, type) and issubclass(e, c.Choice) and e is not c.Choice) + r")\.")


def test_the_composed_config_becomes_typed_objects_once(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("experiment=digits_transfer")
    typed = c.typed_config(cfg)
    assert isinstance(typed, c.TlexpConfig) and c.typed_config(typed) is typed
    assert type(typed.source) is c.SavedSource and type(typed.data) is c.DigitsData
    assert typed.freeze.mode is c.FreezeMode.featurize and typed.unfreeze.bn is c.BatchNormMode.frozen
    assert typed.paths.output_dir == str(tmp_path / "run")  # interpolations resolved
    # callbacks stay plain _target_ mappings for instantiate, ${train.mode} as they take it (auto → max)
    assert typed.train.mode is c.MonitorMode.auto and typed.train.monitor == "val/accuracy"
    ckpt = typed.callbacks["model_checkpoint"]
    assert type(ckpt["mode"]) is str and ckpt["mode"] == "max" and ckpt["dirpath"] == str(tmp_path / "run" / "checkpoints")
    assert all(type(op) is dict for op in typed.surgery.ops)
    # the loaders' plain data: closed choices as their strings, schema dataclasses as dicts
    assert c.plain(typed.source)["init"] == "pretrained" and type(c.plain(typed.source)["init"]) is str
    assert c.plain(c.typed_config(compose_cfg("finetune.groups=[{pattern: fc*, lr: 0.1}]")).finetune)["groups"] == [
        {"pattern": "fc*", "lr": 0.1, "lr_scale": None, "weight_decay": None, "l2": None}]


def test_a_required_value_is_named_before_the_conversion(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"^source\.path: a value is required and none is set"):
        c.typed_config(compose_cfg("experiment=none", "source=saved"))
    with pytest.raises(ConfigError, match="expected a composed config"):
        c.typed_config({"seed": 1})  # type: ignore[arg-type]


def test_composed_outside_a_hydra_job_the_output_folder_is_the_current_one(tmp_path: Path, monkeypatch) -> None:
    """A notebook's compose, or a sweep's plan before its jobs exist: ${hydra:runtime.output_dir}
    has nothing to resolve to; the conversion takes the current folder, as Hydra's default would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from tlexp._resources import CONF_DIR

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # no Hydra job (an earlier test's may linger)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.cache_dir={tmp_path / 'cache'}"])
    typed = c.typed_config(cfg)
    assert typed.paths.output_dir == str(tmp_path) and typed.logger["save_dir"] == str(tmp_path)


def test_code_past_the_entry_points_receives_a_TlexpConfig(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    import tlexp.assemble
    import tlexp.train
    from tlexp.inspect import inspect_config

    seen: list[object] = []

    def stop(cfg: object, *args: object) -> None:
        seen.append(cfg)
        raise ConfigError("stop here")

    monkeypatch.setattr(tlexp.train, "prepare", stop)
    with pytest.raises(ConfigError, match="stop here"):
        tlexp.train.run(compose_cfg())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"
    monkeypatch.setattr(tlexp.assemble, "build_model", stop)
    with pytest.raises(ConfigError, match="stop here"):
        inspect_config(compose_cfg())
    assert len(seen) == 2 and all(type(s) is c.TlexpConfig for s in seen)


def _cfg_reads(path: Path) -> list[str]:
    """``cfg.get(...)``, ``open_dict``, ``OmegaConf.is_dict`` and
    ``plain_choices`` in a module: reading the composed DictConfig instead of typed attributes."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            root = node.func.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id == "cfg":
                found.append(f"{path.name}:{node.lineno} cfg….get")
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name in ("open_dict", "is_dict", "plain_choices"):
            found.append(f"{path.name}:{node.lineno} {name}")
    return found


def test_the_run_path_reads_typed_attributes() -> None:
    modules = ["train.py", "assemble.py", "phases.py", "inspect.py", "helper.py", "_report.py", "sweep/plan.py"]
    assert [hit for m in modules for hit in _cfg_reads(PACKAGE / m)] == []


@pytest.mark.slow  # a whole training run: the full suite runs it
def test_written_files_carry_choices_as_plain_strings(compose_cfg, tmp_path: Path) -> None:
    """metrics.json, the saved model's JSON, the log and the feature cache's HDF5 attributes hold
    the closed choices as their strings (no ``FreezeMode.featurize``)."""
    import h5py

    from tlexp.train import run

    metrics = run(compose_cfg("experiment=digits_transfer", "trainer.max_epochs=1", "data.max_per_class=5",
                              "callbacks=none", "baseline.source=false"))
    assert metrics["featurize"]["mode"] == "featurize" and type(metrics["featurize"]["mode"]) is str
    texts = [p for p in (tmp_path / "run").rglob("*") if p.suffix in (".json", ".yaml", ".log", ".csv")]
    assert any(p.name == "metrics.json" for p in texts)
    for p in texts:
        assert not ENUM_TEXT.search(p.read_text()), p
    caches = list((tmp_path / "cache").rglob("*.h5"))
    assert caches
    for path in caches:
        with h5py.File(path, "r") as f:
            values = [str(v) for obj in [f, *(f[k] for k in f)] for v in obj.attrs.values()]
        assert values and not [v for v in values if ENUM_TEXT.search(v)]
