"""Helpers for the Keras import tests: fixture discovery and running a graph on Keras-layout data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras"
VERSIONS = ("k3", "k2")


def manifest(version: str) -> dict:
    return json.loads((FIXTURES / version / "manifest.json").read_text())


def cases() -> list[tuple[str, str, str]]:
    """(version, fixture, format) for every committed model file with saved predictions."""
    out = []
    for v in VERSIONS:
        for name, info in sorted(manifest(v)["fixtures"].items()):
            for fmt in sorted(info["files"]):
                out.append((v, name, fmt))
    return out


def files(version: str, name: str, fmt: str) -> tuple[Path, Path | None]:
    f = manifest(version)["fixtures"][name]["files"][fmt]
    return FIXTURES / version / f[0], (FIXTURES / version / f[1]) if len(f) > 1 else None


def data(version: str, name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    info = manifest(version)["fixtures"][name]
    d = np.load(FIXTURES / version / f"{name}.npz")
    return [d[f"x{i}"] for i in range(info["inputs"])], [d[f"y{i}"] for i in range(info["outputs"])]


def to_torch(xs: list[np.ndarray], layout: str) -> list[torch.Tensor]:
    """Keras-layout arrays as the imported model takes them (images channels-first by default)."""
    out = []
    for x in xs:
        t = torch.from_numpy(x)
        if not t.is_floating_point():
            t = t.long()
        if layout == "channels_first" and t.dim() == 4:
            t = t.permute(0, 3, 1, 2).contiguous()
        out.append(t)
    return out


def run(graph, xs: list[np.ndarray], layout: str) -> list[np.ndarray]:
    """Outputs in Keras's layout (image outputs of a channels_first model transposed back)."""
    graph.eval()
    with torch.no_grad():
        out = graph(*to_torch(xs, layout))
    out = out if isinstance(out, tuple) else (out,)
    res = []
    for o in out:
        if layout == "channels_first" and o.dim() == 4:
            o = o.permute(0, 2, 3, 1)
        res.append(o.numpy())
    return res


def max_diff(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    assert len(got) == len(want), f"{len(got)} outputs, Keras has {len(want)}"
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"output {i}: shape {g.shape}, Keras {w.shape}"
        worst = max(worst, float(np.abs(g - w).max()))
    return worst
