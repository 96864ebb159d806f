"""User-facing errors.

Every mistake a user can make in a config or an input file raises a :class:`TlexpError` whose
message is one line naming the field, the value and what would be valid. The console scripts
print that line and exit with status 2; nothing else is caught that way, so a bug still shows
its traceback.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any, Literal, Union

__all__ = ["TlexpError", "ConfigError", "ShapeError", "SourceError", "check", "choices", "fits", "hint_name", "warn"]


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


def hint_name(hint: Any) -> str:
    """A type hint as an error message names it: ``int``, ``list``, ``float or null``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(hint_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def check(value: Any, hint: Any, where: str, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, text_numbers: bool = False) -> Any:
    """The one argument/type checker: ``value`` against a type hint, or a :class:`ConfigError`
    naming ``where``, the value and what is valid.

    Hints: ``Any``, ``bool``, ``int``, ``float``, ``str``, ``None``, ``X | Y``, ``Literal[...]``,
    an :class:`~enum.Enum` (a member or its value), ``list[X]``, ``tuple[X, Y]``/``tuple[X, ...]``,
    ``Sequence[X]``, ``dict``/``Mapping``. Lists become tuples where the hint says tuple, ints
    become floats where it says float. ``low``/``high`` bound a number (``*_open``: the bound
    itself is out); ``text_numbers`` reads numbers written as text (YAML reads ``1e-3`` as a
    string) and refuses inf/nan."""
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        for alt in args:
            try:
                return check(value, alt, where, low=low, high=high, low_open=low_open, high_open=high_open,
                             text_numbers=text_numbers)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a {hint_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: {value!r} is not null")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {choices(args)}")
    if isinstance(hint, type) and issubclass(hint, Enum):
        for member in hint:
            if value is member or value == member.value:
                return member
        raise ConfigError(f"{where}: {value!r} is not one of {choices(m.value for m in hint)}")
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {value!r} is not a {hint_name(hint)}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{where}: {value!r} needs {len(args)} values")
        if not args:
            item_hints = [Any] * len(value)
        elif origin is not tuple or args[-1:] == (Ellipsis,):
            item_hints = [args[0]] * len(value)
        else:
            item_hints = list(args)
        out = [check(v, h, where) for v, h in zip(value, item_hints)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: {value!r} is not a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {value!r} is not a bool (true/false)")
    if hint is int or hint is float:
        number = _number(value, hint, where, text_numbers)
        if low is not None and (number < low or (low_open and number == low)) or \
                high is not None and (number > high or (high_open and number == high)):
            raise ConfigError(f"{where}: {value!r} is out of range; valid: {_range(low, high, low_open, high_open)}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {value!r} is not a string")
    return value


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` passes :func:`check` against ``hint``."""
    try:
        check(value, hint, "")
    except ConfigError:
        return False
    return True


def _number(value: Any, hint: type, where: str, text_numbers: bool) -> int | float:
    if text_numbers and isinstance(value, str):
        try:
            value = int(value) if hint is int and value.lstrip("-").isdigit() else float(value) if hint is float else value
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float) if hint is float else int):
        raise ConfigError(f"{where}: {value!r} is not {'a number' if hint is float else 'an integer'}")
    if text_numbers and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return float(value) if hint is float else value


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


#: the "once per location" registry of tlexp's own warnings (see :func:`warn`)
_WARNED: dict[Any, Any] = {}


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn in one line. Python shows a ``warnings.warn`` as ``file:line: Category: message``
    followed by the source line of the call (``  warnings.warn(``), code the user never wrote;
    this goes through the same machinery (filters, ``-W``, ``pytest.warns``, ``catch_warnings``)
    but points at no source line, so a library user sees ``tlexp:0: UserWarning: message``."""
    warnings.warn_explicit(message, category, filename="tlexp", lineno=0, module="tlexp", registry=_WARNED)
