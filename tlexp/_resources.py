"""Files that ship inside the package (base models, configs)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE_DIR / "models"
CONF_DIR = PACKAGE_DIR / "conf"

__all__ = ["PACKAGE_DIR", "MODELS_DIR", "CONF_DIR", "resolve_path"]


def resolve_path(path: str) -> Path:
    """``pkg://models/x`` names a file shipped in the package; anything else is a normal path."""
    if path.startswith("pkg://"):
        return PACKAGE_DIR / path[len("pkg://"):]
    return Path(path).expanduser()
