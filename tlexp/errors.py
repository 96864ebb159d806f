"""User-facing errors.

Every mistake a user can make in a config or an input file raises a :class:`TlexpError` whose
message is one line naming the field, the value and what would be valid. The console scripts
print that line and exit with status 2; nothing else is caught that way, so a bug still shows
its traceback.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

__all__ = ["TlexpError", "ConfigError", "ShapeError", "SourceError", "choices", "warn"]


class TlexpError(ValueError):
    """A user error: bad config or bad input. Printed as one line, exit status 2."""

    exit_code = 2


class ConfigError(TlexpError):
    """A config value is invalid (unknown name, wrong type, out of range)."""


class ShapeError(TlexpError):
    """An edit or input produces shapes that do not fit together."""


class SourceError(TlexpError):
    """A model or data file cannot be read (missing, truncated, wrong format)."""


def choices(values: Iterable[object], limit: int = 40) -> str:
    """Format valid choices for an error message, shortened when there are many."""
    vals = [str(v) for v in values]
    if len(vals) > limit:
        return ", ".join(vals[:limit]) + f", … ({len(vals)} in all)"
    return ", ".join(vals)


#: the "once per location" registry of tlexp's own warnings (see :func:`warn`)
_WARNED: dict[Any, Any] = {}


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn in one line. Python shows a ``warnings.warn`` as ``file:line: Category: message``
    followed by the source line of the call (``  warnings.warn(``), code the user never wrote;
    this goes through the same machinery (filters, ``-W``, ``pytest.warns``, ``catch_warnings``)
    but points at no source line, so a library user sees ``tlexp:0: UserWarning: message``."""
    warnings.warn_explicit(message, category, filename="tlexp", lineno=0, module="tlexp", registry=_WARNED)
