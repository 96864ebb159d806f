"""Write scikit-learn's bundled digits as an image-folder tree, to try ``data=image_folder``
(and the zoo) without downloading anything.

    python -m tlexp.data.demo_images OUT_DIR [--size 64] [--per-class 60] [--classes 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_digit_images"]


def write_digit_images(out_dir: str | Path, size: int = 64, per_class: int | None = 60,
                       classes: Sequence[int] = tuple(range(10))) -> Path:
    """One RGB PNG per digit image, ``size``×``size``, under ``out_dir/<digit>/``; returns out_dir."""
    from PIL import Image

    from tlexp.data.digits import load_digits_arrays

    out = Path(out_dir)
    images, target = load_digits_arrays()
    counts: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(images, target)):
        label = int(label)
        if label not in classes or (per_class is not None and counts.get(label, 0) >= per_class):
            continue
        counts[label] = counts.get(label, 0) + 1
        gray = (img / 16.0 * 255).astype(np.uint8)
        # a coloured digit on a tinted background, so all three channels carry signal
        rgb = np.stack([gray, 255 - gray // 2, (gray // 3 + 40 * (label % 3)).astype(np.uint8)], axis=-1)
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).resize((size, size), Image.BILINEAR).save(folder / f"{i:04d}.png")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    a = p.parse_args()
    print(write_digit_images(a.out_dir, a.size, a.per_class, a.classes))


if __name__ == "__main__":
    main()
