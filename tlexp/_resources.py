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
        inside = (PACKAGE_DIR / path[len("pkg://"):]).resolve()
        if not inside.is_relative_to(PACKAGE_DIR):
            from tlexp.errors import ConfigError

            raise ConfigError(f"{path!r}: a pkg:// path names a file inside the tlexp package, not outside it")
        return inside
    return Path(path).expanduser()
