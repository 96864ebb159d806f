"""Every user error a newcomer hits is one line naming the key, exit status 2, before compute
where it can be, and a failed run's folder says so (.hydra/, tlexp.log, status: failed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_here
from tests.test_cli import _no_run_or_marked_failed, _one_error_line
from tlexp.data.tabular import synthetic_churn, write_csv

pytestmark = pytest.mark.slow

QUICK = ["trainer.max_epochs=1", "trainer.enable_progress_bar=false", "print_table=false"]


def _images(root: Path) -> Path:
    from PIL import Image

    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    (root / "cat" / "notes.png").write_text("not an image")
    return root


def _case(name: str, tmp: Path) -> tuple[list[str], str]:
    """(arguments, what the one line must say) for each listed mistake."""
    if name == "batch_size_0":
        return ["data.batch_size=0"], "data.batch_size: 0 must be at least 1"
    if name == "batch_size_negative":
        return ["data.batch_size=-5"], "data.batch_size: -5 must be at least 1"
    if name == "not_an_image":
        return (["source=zoo_tiny", "data=image_folder", f"data.path={_images(tmp / 'img')}", "surgery=replace_output"],
                "notes.png is not an image")
    if name == "header_only_csv":
        (tmp / "h.csv").write_text("a,b,y\n")
        return (["experiment=none", "data=csv", f"data.path={tmp / 'h.csv'}", "data.label=y"],
                "has a header but no data rows")
    if name == "cache_under_a_file":
        (tmp / "afile").write_text("")
        return [f"paths.cache_dir={tmp / 'afile' / 'cache'}"], "paths.cache_dir: cannot write the feature cache"
    if name == "cache_read_only":
        if os.geteuid() == 0:  # root writes anywhere on disk: use a read-only file system
            return ["paths.cache_dir=/proc/tlexp-cache"], "paths.cache_dir: cannot write the feature cache"
        ro = tmp / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return [f"paths.cache_dir={ro / 'cache'}"], "paths.cache_dir: cannot write the feature cache"
    if name == "gpu_without_gpu":
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        return ["trainer=gpu"], "trainer.accelerator: 'gpu' but this machine has no usable CUDA GPU"
    if name == "missing_config_dir":
        return ["--config-dir", str(tmp / "nope")], "--config-dir must name an existing folder"
    if name == "required_value":
        return ["experiment=none", "source=saved"], "source.path: a value is required"
    if name == "nothing_trainable":
        return ["freeze.up_to=-1"], "freeze.up_to: nothing is left to train"
    if name == "refused_optimizer":
        return (["finetune.optimizer={_target_: torch.optim.SGD, _partial_: true, momentum: -3}"],
                "finetune.optimizer: cannot build torch.optim.SGD")
    raise AssertionError(name)


CASES = ["batch_size_0", "batch_size_negative", "not_an_image", "header_only_csv", "cache_under_a_file",
         "cache_read_only", "gpu_without_gpu", "missing_config_dir", "required_value", "nothing_trainable",
         "refused_optimizer"]


@pytest.mark.parametrize("name", CASES)
def test_user_error_is_one_line_exit_2_and_the_folder_is_marked_failed(tmp_path: Path, name: str) -> None:
    args, expect = _case(name, tmp_path)
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    extra = [a for a in (f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}") if a.split("=")[0] not in str(args)]
    line = _one_error_line(cli_here([*args, *extra, *QUICK], cwd=tmp_path))
    assert expect in line, line
    if name != "missing_config_dir":  # composing fails before any folder is made
        assert run_dir.is_dir()
    _no_run_or_marked_failed(run_dir, line)  # and no Lightning logs/ for a refused optimizer
    # said before any compute: nothing featurized (the default experiment featurizes its prefix)
    assert not list(cache.glob("*.h5")) if cache.is_dir() else True


def _nan_churn(tmp: Path) -> Path:
    header, rows = synthetic_churn(300, seed=3)
    rows[5][header.index("Balance")] = "NaN"
    rows[9][header.index("Age")] = ""
    path = tmp / "churn.csv"
    write_csv(path, header, rows)
    return path


def test_nan_csv_names_column_and_row_and_dropna_or_fillna_train(tmp_path: Path) -> None:
    path = _nan_churn(tmp_path)
    common = ["experiment=churn_transfer", f"data.path={path}", f"paths.cache_dir={tmp_path / 'cache'}", *QUICK]
    line = _one_error_line(cli_here([*common, f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path))
    assert "column 'Balance' has a missing value 'NaN' in data row 6" in line
    assert "data.dropna=true" in line and "data.fillna=" in line
    _no_run_or_marked_failed(tmp_path / "bad", line)
    for fix in ("data.dropna=true", "data.fillna=0"):
        run_dir = tmp_path / fix.replace("=", "_")
        res = cli_here([*common, fix, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert metrics["val"]["loss"] is not None and metrics["val"]["loss"] < 5
