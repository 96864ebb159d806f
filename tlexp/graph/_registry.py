"""The layer registry: layer type name -> builder with typed arguments.

A saved architecture names layer types from this registry and gives their arguments as JSON
values, never import paths. ``build_layer`` checks the arguments against the builder's
signature (names and types) so a typo fails with the valid choices, and fills arguments that
can be read off the input shapes (``in_features`` of a dense layer, say) when they are left
out.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from torch import nn

from tlexp.errors import ConfigError, choices

__all__ = [
    "LayerType",
    "register_layer",
    "get_layer_type",
    "list_layers",
    "build_layer",
    "layer_spec",
    "rebuild_layer",
]

Shape = tuple[int, ...]
InferFn = Callable[[Sequence[Shape]], dict[str, Any]]


@dataclass(frozen=True)
class LayerType:
    """One registered layer type."""

    name: str
    builder: Callable[..., nn.Module]
    params: dict[str, inspect.Parameter]
    hints: dict[str, Any]
    infer: InferFn | None = None
    #: argument used as an example value in tests (required args without defaults)
    example: dict[str, Any] = field(default_factory=dict)
    #: input shapes (without batch) that ``example`` accepts; used by the round-trip tests
    example_inputs: tuple[Shape, ...] = ((4,),)
    doc: str = ""

    def required(self) -> list[str]:
        return [n for n, p in self.params.items() if p.default is inspect.Parameter.empty]


_LAYERS: dict[str, LayerType] = {}


def register_layer(
    name: str,
    *,
    infer: InferFn | None = None,
    example: dict[str, Any] | None = None,
    example_inputs: Sequence[Shape] = ((4,),),
    aliases: Sequence[str] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder`` under ``name`` (and ``aliases``).

    ``infer(input_shapes)`` returns arguments that can be read off the input shapes; they are
    used only where the config leaves them out.
    """

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        sig = inspect.signature(builder)
        hints = typing.get_type_hints(builder)
        lt = LayerType(
            name=name,
            builder=builder,
            params=dict(sig.parameters),
            hints=hints,
            infer=infer,
            example=dict(example or {}),
            example_inputs=tuple(tuple(s) for s in example_inputs),
            doc=(inspect.getdoc(builder) or "").split("\n")[0],
        )
        for n in (name, *aliases):
            if n in _LAYERS:
                raise RuntimeError(f"layer type {n!r} registered twice")
            _LAYERS[n] = lt
        return builder

    return deco


def list_layers() -> list[str]:
    """Every registered layer type name (aliases included), sorted."""
    return sorted(_LAYERS)


#: layer-type name prefix -> the source module that registers those types (imported on first use)
_LAZY_SOURCES = {"dl4j_": "tlexp.sources.dl4j._layers"}


def get_layer_type(name: str, field_name: str = "type") -> LayerType:
    if name not in _LAYERS:
        for prefix, module in _LAZY_SOURCES.items():
            if name.startswith(prefix):
                import importlib

                importlib.import_module(module)
    try:
        return _LAYERS[name]
    except KeyError:
        raise ConfigError(
            f"{field_name}: unknown layer type {name!r}; valid: {choices(list_layers())}"
        ) from None


def _check(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting JSON lists to tuples where asked."""
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        errors = []
        for alt in args:
            try:
                return _check(value, alt, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: {value!r} is not a {_hint_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: {value!r} is not null")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {choices(args)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {value!r} is not a {_hint_name(hint)}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{where}: {value!r} needs {len(args)} values")
        item_hints = [args[0]] * len(value) if (origin is list or args[-1:] == (Ellipsis,)) else list(args)
        if not args:
            item_hints = [Any] * len(value)
        out = [_check(v, h, where) for v, h in zip(value, item_hints)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {value!r} is not a mapping")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {value!r} is not a bool (true/false)")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {value!r} is not an int")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: {value!r} is not a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {value!r} is not a string")
    return value


def _hint_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_hint_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return origin.__name__
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def build_layer(
    type_name: str,
    args: dict[str, Any] | None = None,
    input_shapes: Sequence[Shape] | None = None,
    where: str = "layer",
) -> nn.Module:
    """Build a layer from its registry name and arguments, checked.

    The returned module remembers its spec (``tlexp_type``, ``tlexp_args``) with every argument
    filled in, so the architecture serializes to JSON and rebuilds identically.
    """
    lt = get_layer_type(type_name, f"{where}.type")
    given = dict(args or {})
    unknown = sorted(set(given) - set(lt.params))
    if unknown:
        raise ConfigError(
            f"{where}: unknown argument {unknown[0]!r} for layer type {type_name!r}; "
            f"valid: {choices(lt.params) or '(none)'}"
        )
    if lt.infer is not None and input_shapes is not None:
        missing = [n for n in lt.params if given.get(n) is None]
        if missing:
            try:
                inferred = lt.infer(list(input_shapes))
            except (IndexError, TypeError, ValueError) as e:
                raise ConfigError(
                    f"{where}: cannot infer {', '.join(missing)} of {type_name!r} from input shape "
                    f"{list(input_shapes)}: {e}"
                ) from None
            for n in missing:
                if n in inferred and (n not in given or given[n] is None):
                    given[n] = inferred[n]
    full: dict[str, Any] = {}
    for n, p in lt.params.items():
        if n in given:
            full[n] = _check(given[n], lt.hints.get(n, Any), f"{where}.{n}")
        elif p.default is inspect.Parameter.empty:
            raise ConfigError(
                f"{where}: layer type {type_name!r} needs argument {n!r} "
                f"(required: {choices(lt.required())})"
            )
        else:
            full[n] = p.default
    try:
        module = lt.builder(**full)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"{where}: cannot build {type_name!r} with {full}: {e}") from None
    set_spec(module, lt.name, full)
    return module


def set_spec(module: nn.Module, type_name: str, args: dict[str, Any]) -> None:
    module.tlexp_type = type_name  # type: ignore[assignment]
    module.tlexp_args = _jsonable(args)  # type: ignore[assignment]


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def layer_spec(module: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """The (type, args) a module was built from, or None for a module not from the registry."""
    t = getattr(module, "tlexp_type", None)
    if t is None:
        return None
    return t, dict(getattr(module, "tlexp_args", {}))


def rebuild_layer(module: nn.Module, where: str = "layer", **changes: Any) -> nn.Module:
    """A fresh (re-initialized) layer of the same type with some arguments changed."""
    spec = layer_spec(module)
    if spec is None:
        raise ConfigError(f"{where}: {type(module).__name__} is not a registry layer; it cannot be rebuilt")
    t, args = spec
    args.update(changes)
    return build_layer(t, args, where=where)
