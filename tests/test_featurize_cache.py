"""The HDF5 feature cache: keyed, complete or absent, verified, rebuilt when it does not fit."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest
import torch

import tlexp.featurize as fz
from tlexp.data.digits import DigitsDataModule
from tlexp.errors import SourceError
from tlexp.featurize import FeaturizedDataModule, featurize
from tlexp.graph import LayerGraph
from tlexp.sources.spec import build_spec


def _model() -> LayerGraph:
    torch.manual_seed(0)
    return build_spec(
        [
            {"name": "conv", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
            {"name": "flat", "type": "flatten"},
            {"name": "head", "type": "dense", "out_features": 3},
        ],
        input_shape=[1, 8, 8],
    )


def _data() -> DigitsDataModule:
    dm = DigitsDataModule(classes=[0, 1, 2], max_per_class=10, seed=0)
    dm.setup()
    return dm


def _featurize(cache: Path, **kw):
    g = _model().eval()
    prefix, _ = g.split({"conv", "flat"})
    return featurize(prefix, ["flat"], _data(), cache, **kw), prefix


def test_features_equal_the_prefix_outputs_and_second_call_hits(tmp_path: Path) -> None:
    res, prefix = _featurize(tmp_path)
    assert not res.cache_hit and set(res.files) == {"train", "val"}  # test: evaluated on raw data
    data = _data()
    with h5py.File(res.files["val"].path) as f:
        stored = torch.from_numpy(f["f0"][...])
        assert f.attrs["key"] == res.key and f.attrs["complete"]
    x = data.dataset("val").tensors[0]
    with torch.no_grad():
        assert torch.allclose(stored, prefix(x), atol=1e-6)
    again, _ = _featurize(tmp_path)
    assert again.cache_hit and again.key == res.key


def test_key_changes_with_weights_cut_data_and_dtype(tmp_path: Path) -> None:
    base, prefix = _featurize(tmp_path / "a")
    half, _ = _featurize(tmp_path / "b", dtype="float16")
    assert half.key != base.key
    assert half.files["train"].nbytes < base.files["train"].nbytes
    with torch.no_grad():
        prefix.module("conv").weight.add_(1.0)
    other = featurize(prefix, ["flat"], _data(), tmp_path / "a")
    assert other.key != base.key and not other.cache_hit
    dm = DigitsDataModule(classes=[0, 1, 2], max_per_class=11, seed=0)
    assert featurize(prefix, ["flat"], dm, tmp_path / "a").key != other.key


def test_interrupted_write_leaves_no_file_and_the_next_run_rebuilds(tmp_path: Path, monkeypatch) -> None:
    real = fz._batches

    def crashing(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise KeyboardInterrupt("simulated crash mid-write")
            yield item

    monkeypatch.setattr(fz, "_batches", crashing)
    with pytest.raises(KeyboardInterrupt):
        _featurize(tmp_path, batch_size=4)
    assert list(tmp_path.glob("*.h5")) == [] and list(tmp_path.glob(".*.tmp")) == []
    monkeypatch.setattr(fz, "_batches", real)
    res, _ = _featurize(tmp_path, batch_size=4)
    assert not res.cache_hit and all(f.path.exists() for f in res.files.values())


@pytest.mark.slow
def test_killed_process_leaves_no_cache_file(tmp_path: Path) -> None:
    """A hard crash (SIGKILL) mid-write: only a temporary file remains; the key is rebuilt."""
    script = textwrap.dedent(
        f"""
        import time, torch
        from torch.utils.data import TensorDataset
        import tests.test_featurize_cache as t
        from tlexp.featurize import featurize
        class Slow(TensorDataset):
            def __getitem__(self, i):
                time.sleep(0.05)
                return super().__getitem__(i)
        dm = t._data()
        dm._splits = {{k: Slow(*v.tensors) for k, v in dm._splits.items()}}
        prefix, _ = t._model().eval().split({{"conv", "flat"}})
        featurize(prefix, ["flat"], dm, {str(tmp_path)!r}, batch_size=2)
        """
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob(".*.tmp")):
            assert proc.poll() is None, "featurize finished before it could be killed"
            assert time.time() < deadline, "no temporary cache file appeared"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert list(tmp_path.glob("*.h5")) == []
    assert list(tmp_path.glob(".*.tmp"))
    res, _ = _featurize(tmp_path)
    assert not res.cache_hit and all(f.path.exists() for f in res.files.values())


def test_file_with_wrong_key_or_shape_is_rebuilt_not_used(tmp_path: Path) -> None:
    res, _ = _featurize(tmp_path)
    path = res.files["val"].path
    with h5py.File(path, "r+") as f:
        f.attrs["key"] = "somethingelse"
    again, _ = _featurize(tmp_path)
    assert again.hits == {"train": True, "val": False}
    with h5py.File(path) as f:
        assert f.attrs["key"] == res.key
    with h5py.File(path, "r+") as f:  # right key, wrong number of rows
        del f["y"]
        f.create_dataset("y", data=torch.zeros(3, dtype=torch.int64).numpy())
    third, _ = _featurize(tmp_path)
    assert third.hits["val"] is False


def test_unreadable_cache_file_is_one_clear_error(tmp_path: Path) -> None:
    res, _ = _featurize(tmp_path)
    path = res.files["train"].path
    path.write_bytes(path.read_bytes()[:100])  # truncated by something outside tlexp
    with pytest.raises(SourceError, match="unreadable or truncated.*featurize.overwrite=true"):
        _featurize(tmp_path)
    fixed, _ = _featurize(tmp_path, overwrite=True)
    assert fixed.hits["train"] is False


def test_streaming_gives_every_sample_once_per_epoch(tmp_path: Path) -> None:
    res, _ = _featurize(tmp_path)
    mem = FeaturizedDataModule(res, batch_size=4, seed=1, max_memory="1GB")
    stream = FeaturizedDataModule(res, batch_size=4, seed=1, max_memory=0)
    assert mem.in_memory["train"] and not stream.in_memory["train"]
    for dm in (mem, stream):
        for _ in range(2):
            ys = torch.cat([y for _, y in dm.train_dataloader()])
            assert sorted(ys.tolist()) == sorted(_data().labels("train").tolist())
    # in memory, batches are tensor slices in the seeded order the raw loader uses too
    raw = [y for _, y in _data().train_dataloader()]
    feat = [y for _, y in FeaturizedDataModule(res, batch_size=_data().batch_size, seed=0).train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(raw, feat))


def test_augment_copies_store_k_passes_and_random_augment_is_refused(tmp_path: Path) -> None:
    dm = _data()
    dm.has_random_augment = True
    prefix, _ = _model().eval().split({"conv", "flat"})
    with pytest.raises(Exception, match="featurize.augment_copies"):
        featurize(prefix, ["flat"], dm, tmp_path)
    res = featurize(prefix, ["flat"], dm, tmp_path, augment_copies=3)
    assert res.files["train"].copies == 3 and res.files["train"].rows == 3 * len(dm.dataset("train"))
    loader = FeaturizedDataModule(res, batch_size=8, seed=0).train_dataloader()
    assert sum(len(y) for _, y in loader) == len(dm.dataset("train"))


def _flip_bytes(path: Path, dataset: str) -> None:
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 40)
        b = fh.read(8)
        fh.seek(offset + 40)
        fh.write(bytes(x ^ 0xFF for x in b))


def _rewrite(path: Path, name: str, shape, data=None, dtype="float32") -> None:
    with h5py.File(path, "r+") as f:
        chunks = (1, *shape[1:])
        del f[name]
        ds = f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)
        ds.attrs["sha256"] = "0" * 64
        if data is not None:
            ds[...] = data
            ds.attrs["sha256"] = hashlib.sha256(ds[...].tobytes()).hexdigest()  # a consistent forgery


def _assert_rebuilt_equal_to_prefix(res, path: Path, caplog) -> None:
    assert res.hits["val"] is False, "a damaged cache file was used"
    assert sum("failed verification" in r.message for r in caplog.records) == 1
    prefix = _model().eval().split({"conv", "flat"})[0]
    with h5py.File(path) as f, torch.no_grad():
        assert torch.allclose(torch.from_numpy(f["f0"][...]), prefix(_data().dataset("val").tensors[0]), atol=1e-6)


def test_flipped_bytes_fail_the_checksum_and_are_rebuilt(tmp_path: Path, caplog) -> None:
    res, _ = _featurize(tmp_path)
    path = res.files["val"].path
    with h5py.File(path) as f:
        assert f["f0"].attrs["sha256"] and f["y"].attrs["sha256"]
    _flip_bytes(path, "f0")
    again, _ = _featurize(tmp_path)
    _assert_rebuilt_equal_to_prefix(again, path, caplog)
    assert "checksum" in caplog.text


def test_wrong_shape_absurd_shape_and_bad_labels_are_rebuilt_before_any_read(tmp_path: Path, caplog) -> None:
    res, _ = _featurize(tmp_path)
    path, rows = res.files["val"].path, res.files["val"].n
    # metadata matches, the feature dataset has another width
    _rewrite(path, "f0", (rows, 7), data=torch.zeros(rows, 7).numpy())
    again, _ = _featurize(tmp_path)
    _assert_rebuilt_equal_to_prefix(again, path, caplog)
    caplog.clear()
    # a declared (rows, 1e6, 1e6) dataset: about 4 EB if it were read; never allocated
    _rewrite(path, "f0", (rows, 10**6, 10**6))
    from tlexp.featurize._store import check_split

    why: list[str] = []
    assert check_split(path, res.key, "val", ["flat"], rows, 1, "float32", reasons=why) is None
    assert "stores" in why[0]  # caught by the bytes stored even without the expected shape
    third, _ = _featurize(tmp_path)
    _assert_rebuilt_equal_to_prefix(third, path, caplog)
    caplog.clear()
    # labels outside the class count (3 classes here)
    _rewrite(path, "y", (rows,), data=torch.full((rows,), 99).numpy(), dtype="int64")
    fourth, _ = _featurize(tmp_path)
    _assert_rebuilt_equal_to_prefix(fourth, path, caplog)
    assert "labels range" in caplog.text


@pytest.mark.slow
def test_leftovers_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    from tlexp._tempfiles import temp_path

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "abc-train.h5"
    mine = temp_path(target)
    theirs = mine.with_name(mine.name.replace(f"~{os.getpid()}~", f"~{dead.pid}~"))
    legacy = tmp_path / f".abc-val.h5.{dead.pid}.0123abcd.tmp"
    for p in (mine, theirs, legacy):
        p.write_bytes(b"partial")
    (tmp_path / "oldkey.lock").write_text("")
    res, _ = _featurize(tmp_path)
    assert mine.exists() and not theirs.exists() and not legacy.exists()
    assert not (tmp_path / "oldkey.lock").exists()
    assert all(f.path.exists() for f in res.files.values())


def test_lock_files_held_are_kept_unheld_removed(tmp_path: Path) -> None:
    """The filelock API tlexp uses (FileLock(path, blocking=False, fallback_to_soft=False),
    acquire/release, Timeout): pyproject's filelock range starts where all of it exists (3.30)."""
    from filelock import FileLock

    from tlexp._tempfiles import remove_unheld_locks

    held, free = tmp_path / "held.lock", tmp_path / "free.lock"
    free.write_text("")
    with FileLock(str(held)):
        assert remove_unheld_locks(tmp_path) == [free]
        assert held.exists() and not free.exists()


@pytest.mark.parametrize("err", ["ENOSYS", "ENOLCK"])
def test_a_file_system_without_flock_stops_the_run_not_a_soft_lock(tmp_path: Path, monkeypatch, err: str) -> None:
    """No flock (ENOSYS) or no lock daemon (ENOLCK): one line naming paths.cache_dir, never a
    silent fallback to a marker-file lock that a killed run would leave behind."""
    import errno
    import fcntl

    from tlexp.errors import ConfigError
    from tlexp.featurize._index import key_lock

    def no_flock(fd: int, op: int) -> None:
        raise OSError(getattr(errno, err), err)

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(ConfigError, match="paths.cache_dir: .* does not support file locks"), key_lock(tmp_path, "k"):
        pass
    assert not (tmp_path / "k.lock").exists() or (tmp_path / "k.lock").stat().st_size == 0


@pytest.mark.slow
def test_a_corrupted_cache_is_one_warning_line_on_the_console_and_rebuilt(tmp_path: Path) -> None:
    """From the command line: flipped bytes in a cached split are said in one console line (and
    in tlexp.log), the entry is rebuilt, and the run trains on the rebuilt features."""
    import json

    from tests.conftest import cli_here, run_cli

    cache = tmp_path / "cache"
    common = [f"paths.cache_dir={cache}", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "print_table=false"]
    first = cli_here([*common, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert first.returncode == 0 and not first.stderr.strip(), first.stderr[-2000:]
    (train,) = cache.glob("*-train.h5")
    _flip_bytes(train, "f0")
    res = run_cli([*common, f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tlexp: warning: featurize: cache file"), lines
    assert "rebuilding it" in lines[0] and "rebuilding it" in (tmp_path / "b" / "tlexp.log").read_text()
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["featurize"]["cache_hit"] is False and m["test"]["accuracy"] > 0.5
