"""``data=image_folder``: images in class sub-folders (torchvision's ImageFolder layout).

``data.path`` holds one sub-folder per class. It is split by ``data.split_seed`` into train/val/test
(stratified, ``val_fraction``/``test_fraction``), or, with ``split_dirs`` (e.g.
``{train: train, val: val, test: test}``), each split is its own folder of class sub-folders;
a split left out of ``split_dirs`` is carved from train by its fraction. Images are
transformed as timm transforms them for the chosen model (``data_config``: input size, mean,
std, interpolation, crop — from the zoo source's ``graph.meta["data_config"]``), without
random augmentation; ``augment=true`` adds timm's training augmentation to the train split
(random, so it cannot be featurized once).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tlexp._resources import resolve_path
from tlexp.data._base import SPLITS, TlexpDataModule
from tlexp.data._split import cap_per_class, train_test_indices
from tlexp.errors import ConfigError, SourceError

__all__ = ["ImageFolderDataModule", "DEFAULT_DATA_CONFIG"]

#: timm's defaults (ImageNet statistics, 224 pixels) when no model data config is given
DEFAULT_DATA_CONFIG: dict[str, Any] = {
    "input_size": [3, 224, 224],
    "interpolation": "bicubic",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "crop_pct": 0.875,
    "crop_mode": "center",
}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
Sample = tuple[str, int]


class _Images(Dataset):
    """(image tensor, class index) pairs read from files."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Any], torch.Tensor], mode: str) -> None:
        self.samples = list(samples)
        self.targets = [y for _, y in self.samples]
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, y = self.samples[i]
        try:
            with open(path, "rb") as f:
                img = Image.open(f).convert(self.mode)
        except (OSError, SyntaxError, ValueError) as e:  # changed or damaged since the folder was scanned
            raise SourceError(f"data.path: {path} cannot be read as an image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return self.transform(img), y


def _data_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(DEFAULT_DATA_CONFIG)
    unknown = sorted(set(cfg or {}) - set(out))
    if unknown:
        raise ConfigError(f"data.data_config.{unknown[0]}: unknown key; valid: {', '.join(out)}")
    out.update({k: v for k, v in (cfg or {}).items() if v is not None})
    size = out["input_size"]
    if not isinstance(size, Sequence) or len(size) != 3 or not all(isinstance(d, int) and d > 0 for d in size):
        raise ConfigError(f"data.data_config.input_size: {size!r} is not [channels, height, width]")
    if size[0] not in _MODES:
        raise ConfigError(f"data.data_config.input_size: {size[0]} channels; image files give {', '.join(map(str, _MODES))}")
    for key in ("mean", "std"):
        if len(out[key]) != size[0]:
            raise ConfigError(f"data.data_config.{key}: {list(out[key])} needs {size[0]} values (one per channel)")
    return json.loads(json.dumps({k: list(v) if isinstance(v, (tuple, list)) else v for k, v in out.items()}))


def _find_classes(directory: Path, field: str) -> list[str]:
    from torchvision.datasets.folder import find_classes

    if not directory.is_dir():
        raise SourceError(f"{field}: {str(directory)!r} is not a folder (expected one sub-folder of images per class)")
    try:
        return find_classes(str(directory))[0]
    except FileNotFoundError:
        raise SourceError(f"{field}: {str(directory)!r} has no class sub-folders (expected one sub-folder of images per class)") from None


def _samples(directory: Path, classes: Sequence[str], field: str, allow_empty: bool) -> list[Sample]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        found = make_dataset(str(directory), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=allow_empty)
    except FileNotFoundError as e:
        raise SourceError(f"{field}: {str(directory)!r}: {str(e).splitlines()[0]} ({', '.join(IMG_EXTENSIONS)})") from None
    found = sorted(found)
    for path, _ in found:
        _check_image(path, field)
    return found


def _check_image(path: str, field: str) -> None:
    """The file's header names an image format PIL reads (cheap: no pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.size  # noqa: B018
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SourceError(f"{field}: {path} is not an image PIL can read ({why}); remove it or move it out of the folder") from None


def _carve(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Seeded (rest, part) index arrays, stratified where the classes allow; None if too few samples."""
    idx = np.arange(len(y))
    if fraction <= 0:
        return idx, idx[:0]
    present = np.bincount(y)[np.unique(y)] if len(y) else np.zeros(0)
    for strat in ((y if len(present) and present.min() >= 3 else None), None):
        try:
            rest, part = train_test_indices(idx, fraction, strat, seed)
            return np.sort(rest), np.sort(part)
        except ValueError:  # too few samples to stratify, or to split at all
            continue
    return None


class ImageFolderDataModule(TlexpDataModule):
    """Images in class sub-folders, transformed as timm does for the chosen model."""

    def __init__(
        self,
        path: str,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        split_seed: int = 42,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_dirs: Mapping[str, str] | None = None,
        augment: bool = False,
        data_config: Mapping[str, Any] | None = None,
        max_per_class: int | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if not path:
            raise ConfigError("data.path: an image folder needs data.path=DIR (one sub-folder of images per class)")
        for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigError(f"data.{name}: {v!r} is not a fraction in [0, 1)")
        if val_fraction + test_fraction >= 1:
            raise ConfigError(f"data.val_fraction + data.test_fraction: {val_fraction + test_fraction} leaves no training images")
        if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
            raise ConfigError(f"data.max_per_class: {max_per_class!r} is not a positive count")
        self.path = resolve_path(str(path)).expanduser().resolve()
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.split_seed = int(split_seed)
        self.split_dirs = self._check_split_dirs(split_dirs)
        self.augment = bool(augment)
        self.has_random_augment = self.augment
        self.max_per_class = max_per_class
        self.data_config = _data_config(data_config)
        self.input_shape = tuple(self.data_config["input_size"])
        self._mode = _MODES[self.input_shape[0]]
        self._split_samples = self._scan()
        self.num_classes = len(self.class_names)

    # ---- files -------------------------------------------------------------------------------

    @staticmethod
    def _check_split_dirs(split_dirs: Mapping[str, str] | None) -> dict[str, str] | None:
        if split_dirs is None:
            return None
        dirs = dict(split_dirs)
        unknown = sorted(set(dirs) - set(SPLITS))
        if unknown:
            raise ConfigError(f"data.split_dirs.{unknown[0]}: not a split; valid: {', '.join(SPLITS)}")
        if not dirs.get("train"):
            raise ConfigError("data.split_dirs.train: the training folder is needed when the data is pre-split")
        return {k: str(v) for k, v in dirs.items() if v}

    def _cap(self, samples: list[Sample], salt: str) -> list[Sample]:
        if self.max_per_class is None or not samples:
            return samples
        y = np.asarray([s[1] for s in samples])
        rng = np.random.default_rng([self.split_seed, zlib.crc32(salt.encode())])
        keep = cap_per_class(rng.permutation(len(samples)), y, self.max_per_class)
        return [samples[i] for i in sorted(keep)]

    def _scan(self) -> dict[str, list[Sample]]:
        """The files of each split (path, class index), sorted, before any transform."""
        if not self.path.exists():
            raise SourceError(f"data.path: {str(self.path)!r} does not exist")
        if self.split_dirs is None:
            self.class_names = _find_classes(self.path, "data.path")
            pool = self._cap(_samples(self.path, self.class_names, "data.path", allow_empty=False), "all")
            given: dict[str, list[Sample]] = {}
        else:
            train_dir = self.path / self.split_dirs["train"]
            self.class_names = _find_classes(train_dir, "data.split_dirs.train")
            pool = self._cap(_samples(train_dir, self.class_names, "data.split_dirs.train", allow_empty=False), "train")
            given = {}
            for split, sub in self.split_dirs.items():
                if split == "train":
                    continue
                field = f"data.split_dirs.{split}"
                extra = sorted(set(_find_classes(self.path / sub, field)) - set(self.class_names))
                if extra:
                    raise SourceError(f"{field}: class folder(s) {extra} are not in the training folder {str(train_dir)!r}")
                given[split] = self._cap(_samples(self.path / sub, self.class_names, field, allow_empty=True), split)
        return self._split(pool, given)

    def _split(self, pool: list[Sample], given: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
        y = np.asarray([s[1] for s in pool], dtype=np.int64)
        rest = np.arange(len(pool))
        out = dict(given)
        for split, fraction in (("test", self.test_fraction), ("val", self.val_fraction)):
            if split in out:
                continue
            # the share of what is left, so that the fractions are of the whole folder
            share = fraction / (1 - (self.test_fraction if split == "val" and "test" not in given else 0))
            carved = _carve(y[rest], share, self.split_seed)
            if carved is None or (fraction > 0 and not len(carved[1])):
                raise SourceError(
                    f"data.path: {len(pool)} images are too few for data.{split}_fraction={fraction}; add images or set it to 0"
                )
            keep, part = carved
            out[split] = [pool[i] for i in rest[part]]
            rest = rest[keep]
        out["train"] = [pool[i] for i in rest]
        return out

    def _fingerprint(self) -> tuple[str, int]:
        """A hash of every file's name, size and modification time, and the file count."""
        h = hashlib.sha256()
        n = 0
        for split in SPLITS:
            for path, _ in sorted(self._split_samples[split]):
                st = Path(path).stat()
                h.update(f"{Path(path).relative_to(self.path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                n += 1
        return h.hexdigest(), n

    # ---- transforms and datasets -----------------------------------------------------------------

    def transform(self, training: bool = False) -> Callable[[Any], torch.Tensor]:
        """timm's transform for the data config: eval (resize, center crop, normalize) or training."""
        from timm.data import create_transform

        c = self.data_config
        return create_transform(
            input_size=tuple(c["input_size"]),
            is_training=training,
            interpolation=c["interpolation"],
            mean=tuple(c["mean"]),
            std=tuple(c["std"]),
            crop_pct=c["crop_pct"],
            crop_mode=c["crop_mode"],
        )

    def _build(self) -> dict[str, Dataset]:
        tf = self.transform(False)
        return {s: _Images(self._split_samples[s], tf, self._mode) for s in SPLITS}

    def augmented_dataset(self, split: str) -> Dataset:
        if not self.augment or split != "train":
            return self.dataset(split)
        return _Images(self._split_samples[split], self.transform(True), self._mode)

    def preprocessing(self) -> Any:
        from tlexp.data.preprocessing import ImagePreprocessing

        return ImagePreprocessing(data_config=json.loads(json.dumps(self.data_config)), classes=list(self.class_names))

    def labels(self, split: str) -> torch.Tensor:
        return torch.as_tensor([y for _, y in self._split_samples[split]], dtype=torch.long)

    def identity(self) -> dict[str, Any]:
        files, count = self._fingerprint()
        return {
            "kind": "image_folder",
            "path": str(self.path),
            "files": files,
            "num_files": count,
            "classes": list(self.class_names),
            "split": {
                "split_seed": self.split_seed,
                "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction,
                "split_dirs": self.split_dirs,
                "max_per_class": self.max_per_class,
                "sizes": {s: len(self._split_samples[s]) for s in SPLITS},
            },
            "transform": {"data_config": self.data_config, "eval": repr(self.transform(False))},
            "augment": repr(self.transform(True)) if self.augment else None,
        }
