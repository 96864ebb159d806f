"""How long tlexp takes to import a Keras file, beside Keras's own load_model of the same file.

    python benchmarks/keras_import.py                       # MobileNetV2 (alpha 0.35) and ResNet50, 224x224
    python benchmarks/keras_import.py --models MobileNetV2 --repeat 5 --profile

The models are written by Keras 3 (the ``keras`` test dependency, torch backend; weights=None)
into a temporary folder as ``.keras`` and ``.h5``. Each timing is the best of ``--repeat`` runs
in this process (imports of torch, h5py and keras are warmed up first and not counted).
Targets (issue 12): MobileNetV2 alpha 0.35 under 1 s, ResNet50 under 3 s on 2 cores.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "torch")

MODELS = {
    "MobileNetV2": ("MobileNetV2", {"alpha": 0.35}, 1.0),
    "ResNet50": ("ResNet50", {}, 3.0),
    "EfficientNetB0": ("EfficientNetB0", {}, None),
}


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=["MobileNetV2", "ResNet50"], choices=sorted(MODELS))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print the importer's top functions (cumulative)")
    args = ap.parse_args(argv)

    import keras
    import torch

    from tlexp.sources.keras import load_keras

    torch.set_num_threads(min(2, torch.get_num_threads()))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch threads {torch.get_num_threads()}, keras {keras.__version__} ({keras.backend.backend()}), "
          f"{os.cpu_count()} CPUs, load average {load}")
    print(f"{'model':<16}{'format':<8}{'tlexp s':>9}{'keras s':>9}{'target s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            cls, kwargs, target = MODELS[name]
            model = getattr(keras.applications, cls)(weights=None, input_shape=(args.size, args.size, 3), **kwargs)
            for fmt in ("keras", "h5"):
                path = Path(tmp) / f"{name}.{fmt}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.save(path)

                    def ours(path: Path = path) -> None:
                        load_keras(path)

                    def theirs(path: Path = path) -> None:
                        keras.saving.load_model(path, compile=False)

                    ours()  # warm-up: imports, first-call costs
                    t_ours = best_of(ours, args.repeat)
                    t_keras = best_of(theirs, args.repeat)
                print(f"{name:<16}{fmt:<8}{t_ours:>9.3f}{t_keras:>9.3f}{target if target else '-':>10}")
                if args.profile and fmt == "keras":
                    prof = cProfile.Profile()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        prof.runcall(ours)
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(18)


if __name__ == "__main__":
    main()
