"""A zoo backbone frozen through its last stage: in_model vs featurize vs a hand-written loop.

resnet18 (timm, random weights: no download) on 64×64 images written from scikit-learn's digits,
frozen through ``layer4``, a new classifier trained for 10 epochs. Three ways, side by side:

- tlexp ``freeze.mode=in_model``: the frozen prefix runs on every batch of every epoch;
- tlexp ``freeze.mode=featurize``: the prefix runs once into the HDF5 cache;
- a hand-written plain-PyTorch loop that computes the features once with timm's model and trains
  the same head on them (the limit a framework can approach).

It prints wall times and ratios (target: featurize within 1.3× of the hand-written loop), and
what the cache's checksums cost (target: at most 5% of featurize + fit): hashing while writing
(each split written again with and without its SHA-256) and the verification a cache hit does
(every dataset read back and hashed). It asserts nothing.

Two-phase row (skip with ``--no-two-phase``; ``--only-two-phase`` runs just it): the head on
``layer4`` features for 5 epochs, then ``layer4`` unfrozen for 5 more (``unfreeze.up_to=layer3``),
featurized in both phases (phase 2 reads ``layer3`` features from its own cache key) vs in_model
in both phases (target: two-phase featurized ≥ 3× faster).

    python benchmarks/zoo_speedup.py [--model resnet18] [--epochs 10] [--per-class 60] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

import tlexp.config  # noqa: F401
from tlexp._resources import CONF_DIR
from tlexp.data.demo_images import write_digit_images
from tlexp.data.image_folder import ImageFolderDataModule
from tlexp.sources.zoo import data_config
from tlexp.train import run


def zoo_run_config(args: argparse.Namespace, images: Path, mode: str, epochs: int, extra: list[str]):
    """The benchmark's run: the zoo model frozen through ``args.freeze`` on the image folder, in ``mode``."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[
            "experiment=none", "source=zoo", f"source.name={args.model}",
            f"source.input_size=[3,{args.size},{args.size}]", "data=image_folder", f"data.path={images}",
            f"data.batch_size={args.batch_size}", "surgery=replace_output", f"freeze.up_to={args.freeze}",
            f"freeze.mode={mode}", f"trainer.max_epochs={epochs}", "finetune.lr=1e-3",
            "trainer.enable_progress_bar=false", "logger=none", "print_table=false", *extra])


def hand_loop(model_name: str, images: Path, size: int, epochs: int, batch_size: int, lr: float, seed: int) -> tuple[float, float]:
    """timm's model, features computed once under inference_mode, a linear head trained on them."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="").eval()
    dm = ImageFolderDataModule(str(images), batch_size=batch_size, seed=seed,
                               data_config=data_config(model_name) | {"input_size": (3, size, size)})
    dm.setup()
    feats, labels = {}, {}
    with torch.inference_mode():
        for split in ("train", "val"):
            xs, ys = [], []
            for x, y in torch.utils.data.DataLoader(dm.dataset(split), batch_size=256):
                xs.append(model(x).mean(dim=(2, 3)))
                ys.append(y)
            feats[split], labels[split] = torch.cat(xs), torch.cat(ys)
    head = torch.nn.Linear(feats["train"].shape[1], dm.num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(labels["train"])
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(batch_size):
            loss = F.cross_entropy(head(feats["train"][idx]), labels["train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = float((head(feats["val"]).argmax(-1) == labels["val"]).float().mean())
    return time.perf_counter() - start, acc


def checksum_cost(metrics: dict, repeats: int = 3) -> tuple[float, float]:
    """Seconds the checksums add: (hashing while writing every split, verifying them on a hit)."""
    import h5py

    from tlexp.featurize._store import check_split, write_split

    write_extra = verify = 0.0
    for split, name in metrics["featurize"]["files"].items():
        path = Path(name)
        with h5py.File(path) as f:
            names = json.loads(f.attrs["names"])
            n, copies, dtype, key = int(f.attrs["n"]), int(f.attrs["copies"]), f.attrs["dtype"], f.attrs["key"]
            feats = [torch.from_numpy(f[f"f{i}"][...]) for i in range(len(names))]
            y = torch.from_numpy(f["y"][...])
        batches = [([t[s : s + 256] for t in feats], y[s : s + 256]) for s in range(0, len(y), 256)]
        times = {}
        for checksum in (True, False):
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                write_split(path.with_name(f"bench-{checksum}.h5"), key, split, names, n, copies, dtype, batches, checksum=checksum)
                best = min(best, time.perf_counter() - t)
            times[checksum] = best
        write_extra += max(times[True] - times[False], 0.0)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            assert check_split(path, key, split, names, n, copies, dtype, verify=True) is not None
            with_verify = time.perf_counter() - t
            t = time.perf_counter()
            check_split(path, key, split, names, n, copies, dtype, verify=False)
            best = min(best, with_verify - (time.perf_counter() - t))
        verify += max(best, 0.0)
    return write_extra, verify


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--freeze", default="layer4")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--phase-epochs", type=int, default=5, help="epochs of each phase in the two-phase row")
    p.add_argument("--unfreeze", default="layer3", help="phase 2's cut (unfreeze.up_to)")
    p.add_argument("--no-two-phase", action="store_true")
    p.add_argument("--only-two-phase", action="store_true")
    args, overrides = p.parse_known_args()
    console = Console(width=150)
    if not args.no_two_phase:
        two_phase(console, args, overrides)
    if args.only_two_phase:
        return
    with tempfile.TemporaryDirectory() as tmp:
        images = write_digit_images(Path(tmp) / "images", size=args.size, per_class=args.per_class)
        results = {}
        for mode in ("in_model", "featurize"):
            cfg = zoo_run_config(args, images, mode, args.epochs, [
                f"paths.output_dir={tmp}/{mode}", f"paths.cache_dir={tmp}/cache", *overrides])
            t = time.perf_counter()
            metrics = run(cfg)
            results[mode] = (time.perf_counter() - t, metrics)
        checksum = checksum_cost(results["featurize"][1])
        hand_s, hand_acc = hand_loop(args.model, images, args.size, args.epochs, args.batch_size, 1e-3, int(cfg.seed))
    (im_s, im), (fz_s, fz) = results["in_model"], results["featurize"]
    fz_work = fz["timing"]["featurize_s"] + fz["timing"]["fit_s"]
    t = Table(title=f"{args.model} frozen through {args.freeze}, {args.size}×{args.size} images, {args.epochs} epochs, "
                    f"{fz['samples']['train']} training images ({torch.get_num_threads()} threads, {os.cpu_count()} cores)")
    for col in ("way", "featurize s", "fit s", "featurize + fit s", "run total s", "vs hand loop", "val acc"):
        t.add_column(col, justify="right")
    t.add_row("in_model", "-", f"{im['timing']['fit_s']:.2f}", f"{im['timing']['fit_s']:.2f}", f"{im_s:.2f}",
              f"{im['timing']['fit_s'] / hand_s:.2f}×", f"{im['val']['accuracy']:.3f}")
    t.add_row("featurize", f"{fz['timing']['featurize_s']:.2f}", f"{fz['timing']['fit_s']:.2f}", f"{fz_work:.2f}",
              f"{fz_s:.2f}", f"{fz_work / hand_s:.2f}×", f"{fz['val']['accuracy']:.3f}")
    t.add_row("hand-written loop", "", "", f"{hand_s:.2f}", f"{hand_s:.2f}", "1.00×", f"{hand_acc:.3f}")
    console.print(t)
    write_s, verify_s = checksum
    console.print(f"cache checksums: {write_s:.3f}s hashing while writing + {verify_s:.3f}s verifying a cache hit = "
                  f"{(write_s + verify_s) / fz_work:.1%} of featurize + fit ({fz_work:.2f}s; target ≤ 5%)")
    console.print(f"featurize speedup over in_model (featurize + fit): {im['timing']['fit_s'] / fz_work:.2f}×; "
                  "run total includes loading, the raw-data evaluation of the reassembled model and saving")


def two_phase(console: Console, args: argparse.Namespace, overrides: list[str]) -> None:
    """Both phases featurized vs both phases in_model: featurize + fit seconds of each phase."""
    work: dict[str, float] = {}
    t = Table(title=f"two-phase: head on {args.freeze} features for {args.phase_epochs} epochs, then the cut moved back "
                    f"to {args.unfreeze} for {args.phase_epochs} ({torch.get_num_threads()} threads, {os.cpu_count()} cores)")
    for col in ("way", "phase 1 featurize + fit s", "phase 2 featurize + fit s", "featurize + fit s", "run total s",
                "val acc", "phase-2 cache key"):
        t.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        images = write_digit_images(Path(tmp) / "images", size=args.size, per_class=args.per_class)
        for mode in ("in_model", "featurize"):
            cfg = zoo_run_config(args, images, mode, args.phase_epochs, [
                f"unfreeze.up_to={args.unfreeze}", f"unfreeze.epochs={args.phase_epochs}", "baseline.source=false",
                f"paths.output_dir={tmp}/two-{mode}", f"paths.cache_dir={tmp}/cache-two", *overrides])
            start = time.perf_counter()
            m = run(cfg)
            total = time.perf_counter() - start
            p1, p2 = m["phases"]
            w1 = p1["timing"]["featurize_s"] + p1["timing"]["fit_s"]
            w2 = p2["timing"]["featurize_s"] + p2["timing"]["fit_s"]
            work[mode] = w1 + w2
            t.add_row(f"{mode}, both phases", f"{w1:.2f}", f"{w2:.2f}", f"{w1 + w2:.2f}", f"{total:.2f}",
                      f"{m['val']['accuracy']:.3f}", (p2["featurize"]["key"] or "-")[:12])
    console.print(t)
    console.print(f"two-phase featurized speedup over in_model (featurize + fit): "
                  f"{work['in_model'] / work['featurize']:.2f}× (target ≥ 3×)")


if __name__ == "__main__":
    main()
