"""The layer registry: layer type name -> builder with typed arguments and declared capabilities.

A saved architecture names layer types from this registry and gives their arguments as JSON
values, never import paths. ``build_layer`` checks the arguments against the builder's
signature (names and types) so a typo fails with the valid choices, and fills arguments that
can be read off the input shapes (``in_features`` of a dense layer, say) when they are left
out.

Registering a layer type (the contract every layer family follows)
-----------------------------------------------------------------

::

    from tlexp.graph import Role, register_layer

    @register_layer("dense", role=Role.WEIGHTS, n_in="in_features", n_out="out_features",
                    size_axis=-1, infer=lambda shapes: {"in_features": shapes[0][-1]},
                    takes_activation=True, takes_dropout=True, example={"out_features": 3})
    def dense(in_features: int, out_features: int, activation: str = "identity",
              dropout: float = 0.0) -> nn.Module:
        # the docstring's first line describes the type (tlexp-inspect, error messages)
        ...

The builder's signature is the type's argument schema: every argument needs a type hint
(``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``list[int]``, ``tuple[int, int]``,
``X | None``); JSON values from configs are checked against it.

``role`` (required; a :class:`Role`) says what surgery may do through the type:

- ``Role.WEIGHTS``: holds weights sized by its input (``n_in``) and/or output (``n_out``).
  ``n_out_replace`` rebuilds it with a new ``n_out``; a resize ahead of it stops here and
  rebuilds it with a new ``n_in``.
- ``Role.PASS``: no sizes of its own (activation, dropout, pooling, padding, flatten); a resize
  goes through. ``keeps_size=False`` when the size on the feature axis changes on the way
  (flatten, permute), so the next layer's size is read off traced shapes.
- ``Role.FOLLOW``: sized by its input (batch norm, layer norm, depthwise conv); ``follow`` names
  that argument. A resize rebuilds it with the new size and goes on. ``n_out`` on a follow type
  is a multiplier of the input size (``depth_multiplier``).
- ``Role.ELEMENTWISE``: merges inputs of the same size (add, multiply, …); a resize goes through
  only when every input is resized alike.
- ``Role.CONCAT``: concatenates its inputs; a resize goes through (the size changes).
- ``Role.FIXED``: its arguments fix the shape it takes (reshape, getitem, a timm block); a
  resize reaching it is refused, naming it.

Sizes: ``n_in`` / ``n_out`` name the arguments holding the input / output size (None: none);
``size_axis`` is the per-sample axis they size (0: channels first, -1: the last axis);
``out_size(args, n_out)`` gives the produced size when it is not ``n_out`` (a bidirectional RNN
concatenates two directions: ``2 * n_out``).

Capabilities fine-tuning reads: ``has_weights`` (default: role is WEIGHTS, or FOLLOW with an
``n_out``) · ``takes_activation`` (an ``activation`` argument the activation override replaces
when it is non-linear) · ``takes_dropout`` (a ``dropout`` argument on the layer's input the
dropout override sets) · ``is_activation`` (an activation node: the override replaces its
``name``) · ``is_dropout`` (a dropout node: the override sets its ``p``). Surgery also reads
``variadic`` (default: ELEMENTWISE and CONCAT types): the type takes any number of inputs, so
removing one of them keeps the node (``subtract`` declares ``variadic=False``). The named arguments
must exist in the builder's signature; registration checks it.

Other arguments: ``infer(input_shapes)`` returns arguments read off the input shapes, used only
where a config leaves them out; ``example`` / ``example_inputs`` are used by the tests that run
over every type; ``aliases`` are other names of the same type (old names stay loadable).

No type name means two things: registering a name (or alias) twice raises.

Providers: a source that brings its own layer types registers them in a module of its own and
declares that module with ``register_provider("tlexp.sources.NAME._layers")`` (in
``tlexp/sources/__init__.py``), naming nothing else. The module is imported only when a type
name is not known yet (a saved model naming a Keras type loads without anything else imported)
or when every type is listed (:func:`list_layers`).
"""

from __future__ import annotations

import importlib
import inspect
import typing
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from torch import nn

from tlexp.errors import ConfigError, check, choices

__all__ = [
    "Role",
    "LayerType",
    "register_layer",
    "register_provider",
    "get_layer_type",
    "list_layers",
    "layer_names",
    "LayerSpec",
    "build_layer",
    "build_layer_and_spec",
    "built_spec",
    "rebuild_layer_and_spec",
]

Shape = tuple[int, ...]
InferFn = Callable[[Sequence[Shape]], dict[str, Any]]
OutSizeFn = Callable[[dict[str, Any], int], int]


class Role(str, Enum):
    """What surgery may do through a layer type (see the module docstring)."""

    WEIGHTS = "weights"
    PASS = "pass"
    FOLLOW = "follow"
    ELEMENTWISE = "elementwise"
    CONCAT = "concat"
    FIXED = "fixed"


@dataclass(frozen=True)
class LayerType:
    """One registered layer type: its builder, argument schema and declared capabilities."""

    name: str
    builder: Callable[..., nn.Module]
    params: dict[str, inspect.Parameter]
    hints: dict[str, Any]
    role: Role
    n_in: str | None = None
    n_out: str | None = None
    follow: str | None = None
    size_axis: int = 0
    keeps_size: bool = True
    out_size: OutSizeFn | None = None
    has_weights: bool = False
    takes_activation: bool = False
    takes_dropout: bool = False
    is_activation: bool = False
    is_dropout: bool = False
    variadic: bool = False
    infer: InferFn | None = None
    #: argument used as an example value in tests (required args without defaults)
    example: dict[str, Any] = field(default_factory=dict)
    #: input shapes (without batch) that ``example`` accepts; used by the round-trip tests
    example_inputs: tuple[Shape, ...] = ((4,),)
    aliases: tuple[str, ...] = ()
    #: the module that registered it
    provider: str = ""
    doc: str = ""

    def required(self) -> list[str]:
        return [n for n, p in self.params.items() if p.default is inspect.Parameter.empty]

    def produced_size(self, args: dict[str, Any], n_out: int) -> int:
        """The size this layer produces on its feature axis when its ``n_out`` is ``n_out``."""
        return self.out_size(args, n_out) if self.out_size is not None else n_out


_LAYERS: dict[str, LayerType] = {}
_PROVIDERS: list[str] = []
_LOADED: set[str] = set()


def register_layer(
    name: str,
    *,
    role: Role,
    n_in: str | None = None,
    n_out: str | None = None,
    follow: str | None = None,
    size_axis: int = 0,
    keeps_size: bool = True,
    out_size: OutSizeFn | None = None,
    has_weights: bool | None = None,
    takes_activation: bool = False,
    takes_dropout: bool = False,
    is_activation: bool = False,
    is_dropout: bool = False,
    variadic: bool | None = None,
    infer: InferFn | None = None,
    example: dict[str, Any] | None = None,
    example_inputs: Sequence[Shape] = ((4,),),
    aliases: Sequence[str] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder`` under ``name`` (and ``aliases``) with its declared capabilities.

    See the module docstring for what each argument means.
    """

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not isinstance(role, Role):
            raise TypeError(f"layer type {name!r}: role must be a tlexp.graph.Role, not {role!r}")
        sig = inspect.signature(builder)
        params = dict(sig.parameters)
        named = {"n_in": n_in, "n_out": n_out, "follow": follow,
                 "activation": "activation" if takes_activation else None,
                 "dropout": "dropout" if takes_dropout else None,
                 "name": "name" if is_activation else None, "p": "p" if is_dropout else None}
        for what, arg in named.items():
            if arg is not None and arg not in params:
                raise TypeError(f"layer type {name!r}: {what} names {arg!r}, which its builder does not take")
        if role is Role.FOLLOW and follow is None:
            raise TypeError(f"layer type {name!r}: a FOLLOW type names the argument sized by its input (follow=...)")
        if role is Role.WEIGHTS and n_in is None and n_out is None:
            raise TypeError(f"layer type {name!r}: a WEIGHTS type names its size arguments (n_in=..., n_out=...)")
        lt = LayerType(
            name=name,
            builder=builder,
            params=params,
            hints=typing.get_type_hints(builder),
            role=role,
            n_in=n_in,
            n_out=n_out,
            follow=follow,
            size_axis=size_axis,
            keeps_size=keeps_size,
            out_size=out_size,
            has_weights=(role is Role.WEIGHTS or (role is Role.FOLLOW and n_out is not None))
            if has_weights is None else has_weights,
            takes_activation=takes_activation,
            takes_dropout=takes_dropout,
            is_activation=is_activation,
            is_dropout=is_dropout,
            variadic=role in (Role.ELEMENTWISE, Role.CONCAT) if variadic is None else variadic,
            infer=infer,
            example=dict(example or {}),
            example_inputs=tuple(tuple(s) for s in example_inputs),
            aliases=tuple(aliases),
            provider=builder.__module__,
            doc=(inspect.getdoc(builder) or "").split("\n")[0],
        )
        for n in (name, *aliases):
            if n in _LAYERS:
                raise RuntimeError(f"layer type {n!r} registered twice ({_LAYERS[n].provider} and {lt.provider})")
            _LAYERS[n] = lt
        return builder

    return deco


def register_provider(module: str) -> None:
    """Declare a module that registers layer types when imported; it is imported on demand."""
    if module not in _PROVIDERS:
        _PROVIDERS.append(module)


def _load_providers(until: str | None = None) -> None:
    for module in list(_PROVIDERS):
        if until is not None and until in _LAYERS:
            return
        if module not in _LOADED:
            _LOADED.add(module)
            importlib.import_module(module)


def list_layers() -> list[LayerType]:
    """Every registered layer type (providers loaded), once each, sorted by name."""
    _load_providers()
    seen: dict[str, LayerType] = {lt.name: lt for lt in _LAYERS.values()}
    return [seen[n] for n in sorted(seen)]


def layer_names() -> list[str]:
    """Every registered layer type name, aliases included (providers loaded), sorted."""
    _load_providers()
    return sorted(_LAYERS)


def get_layer_type(name: str, field_name: str = "type") -> LayerType:
    if name not in _LAYERS:
        _load_providers(until=name)
    try:
        return _LAYERS[name]
    except KeyError:
        raise ConfigError(
            f"{field_name}: unknown layer type {name!r}; valid: {choices(layer_names())}"
        ) from None


@dataclass(frozen=True)
class LayerSpec:
    """What a node was built from: a registry type name and its arguments, every one filled in.

    JSON data (lists, not tuples): ``LayerGraph.to_config`` saves it and ``from_config`` builds
    the same layer from it. A node's spec lives on its :class:`~tlexp.graph.Node`, never on the
    torch module.
    """

    type: str
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", _jsonable(dict(self.args)))

    def replace(self, **changes: Any) -> LayerSpec:
        """The same type with some arguments changed (not checked here; building checks)."""
        return LayerSpec(self.type, {**self.args, **changes})


# Modules build_layer made, with the spec each was built from: lets ``Node(name, module, inputs)``
# take its spec when a source builds the module first (DL4J/Keras converters set its weights
# before the node exists). Weak: the table never keeps a module alive, and it is read only when
# a Node is made; from then on the Node's ``spec`` is the one that counts.
_BUILT: weakref.WeakKeyDictionary[nn.Module, LayerSpec] = weakref.WeakKeyDictionary()


def build_layer_and_spec(
    type_name: str,
    args: dict[str, Any] | None = None,
    input_shapes: Sequence[Shape] | None = None,
    where: str = "layer",
) -> tuple[nn.Module, LayerSpec]:
    """Build a layer from its registry name and arguments, checked; return it and its full spec.

    Arguments left out are inferred from ``input_shapes`` where the type can (``in_features``),
    else take the builder's defaults; the spec has every argument filled in, so the architecture
    serializes to JSON and rebuilds identically.
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
            full[n] = check(given[n], lt.hints.get(n, Any), f"{where}.{n}")
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
    spec = LayerSpec(lt.name, full)
    _BUILT[module] = spec
    return module, spec


def build_layer(
    type_name: str,
    args: dict[str, Any] | None = None,
    input_shapes: Sequence[Shape] | None = None,
    where: str = "layer",
) -> nn.Module:
    """:func:`build_layer_and_spec`'s module alone; a ``Node`` made with it takes its spec."""
    return build_layer_and_spec(type_name, args, input_shapes, where)[0]


def built_spec(module: nn.Module) -> LayerSpec | None:
    """The spec :func:`build_layer` built ``module`` from, or None (not built by the registry)."""
    try:
        return _BUILT.get(module)
    except TypeError:  # not weak-referenceable: not ours
        return None


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


def rebuild_layer_and_spec(spec: LayerSpec, where: str = "layer", **changes: Any) -> tuple[nn.Module, LayerSpec]:
    """A fresh (re-initialized) layer of the same type with some arguments changed."""
    return build_layer_and_spec(spec.type, {**spec.args, **changes}, where=where)
