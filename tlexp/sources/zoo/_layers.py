"""Layer types for models brought in from timm (``source=zoo``; the zoo provider).

``timm_module``: one block (or stem/head part) of a timm model, saved as its origin (the timm
model name, its creation arguments and the module path inside it) and rebuilt through timm's
own registry by name; its weights come from the model's safetensors file like any other layer.

``tensor_op``: the few operations a timm ``forward`` does between its blocks (a class token
concatenated, a position embedding added, a token selected, a tensor split in two). The
operation is an expression over the node's inputs built only from a fixed allow-list of
functions, tensor methods and attributes; a saved file names them, it never holds code or
import paths, and an expression naming anything else is refused when it is built.

timm is imported only when a ``timm_module`` is built, so a saved model without zoo nodes
never imports it.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlexp.errors import choices
from tlexp.graph import Role, register_layer

__all__ = ["FUNCTIONS", "METHODS", "ATTRIBUTES", "TensorOp", "TimmCall", "function_name", "is_computed_buffer", "timm_template"]


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    @functools.cache
    def resolve() -> Callable[..., Any]:
        return getattr(importlib.import_module(module), attr)

    return resolve


#: functions an expression may call, by the name saved files use (a plain name, never an import path)
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "neg": operator.neg,
    "matmul": operator.matmul,
    "getitem": operator.getitem,
    **{f"torch_{n}": getattr(torch, n) for n in (
        "cat", "stack", "flatten", "reshape", "permute", "transpose", "split", "chunk", "narrow",
        "mean", "sum", "amax", "add", "mul", "sigmoid", "tanh", "relu", "unsqueeze", "squeeze", "softmax",
    )},
    **{f"functional_{n}": getattr(F, n) for n in (
        "relu", "gelu", "silu", "hardswish", "sigmoid", "adaptive_avg_pool2d", "adaptive_max_pool2d",
        "avg_pool2d", "max_pool2d", "interpolate", "layer_norm", "normalize", "pad", "softmax",
    )},
}
#: functions from timm, resolved on first use so that importing tlexp does not import timm
_LAZY_FUNCTIONS: dict[str, Callable[[], Callable[..., Any]]] = {
    "timm_resample_abs_pos_embed": _lazy("timm.layers", "resample_abs_pos_embed"),
}
#: tensor methods an expression may call
METHODS = frozenset({
    "view", "reshape", "expand", "expand_as", "flatten", "permute", "transpose", "contiguous", "split",
    "chunk", "unbind", "mean", "sum", "amax", "size", "unsqueeze", "squeeze", "narrow", "add", "mul",
    "sigmoid", "softmax",
})
#: attributes an expression may read
ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device"})
_DTYPES = ("float16", "bfloat16", "float32", "float64", "int32", "int64", "bool")


def function_name(fn: Any) -> str | None:
    """The allow-list name of a callable, or None when it is not allowed."""
    for name, f in FUNCTIONS.items():
        if f is fn:
            return name
    for name, resolve in _LAZY_FUNCTIONS.items():
        if resolve() is fn:
            return name
    return None


def _function(name: str) -> Callable[..., Any]:
    if name in FUNCTIONS:
        return FUNCTIONS[name]
    return _LAZY_FUNCTIONS[name]()


# ---- expressions -----------------------------------------------------------------------------
#
# An expression is JSON: numbers, strings, booleans, null and lists stand for themselves; a
# mapping with one of these keys is an operation or a value JSON cannot hold:
#   {"input": i}                         the node's i-th input
#   {"tensor": name}                     a parameter or buffer the node holds
#   {"call": fn, "args": [...], "kwargs": {...}}     a function from FUNCTIONS
#   {"method": m, "args": [self, ...], "kwargs": {...}}  a tensor method from METHODS
#   {"attr": a, "of": expr}              an attribute from ATTRIBUTES
#   {"tuple": [...]} · {"slice": [start, stop, step]} · {"ellipsis": true} · {"dtype": name}
#   {"dict": {...}}                      a literal mapping


def _validate(e: Any, n_inputs: int, tensors: Sequence[str], where: str = "expr") -> None:
    if isinstance(e, list):
        for i, x in enumerate(e):
            _validate(x, n_inputs, tensors, f"{where}[{i}]")
        return
    if not isinstance(e, dict):
        if e is not None and not isinstance(e, (bool, int, float, str)):
            raise ValueError(f"{where}: {e!r} is not a JSON value")
        return
    if "input" in e:
        if not isinstance(e["input"], int) or not 0 <= e["input"] < max(n_inputs, 1):
            raise ValueError(f"{where}: input {e['input']!r} out of range")
    elif "tensor" in e:
        if e["tensor"] not in tensors:
            raise ValueError(f"{where}: tensor {e['tensor']!r} is not held by the node; held: {choices(tensors)}")
    elif "call" in e:
        if e["call"] not in FUNCTIONS and e["call"] not in _LAZY_FUNCTIONS:
            raise ValueError(f"{where}: function {e['call']!r} is not allowed; valid: {choices([*FUNCTIONS, *_LAZY_FUNCTIONS])}")
        _validate(e.get("args", []), n_inputs, tensors, where)
        _validate(list((e.get("kwargs") or {}).values()), n_inputs, tensors, where)
    elif "method" in e:
        if e["method"] not in METHODS:
            raise ValueError(f"{where}: tensor method {e['method']!r} is not allowed; valid: {choices(sorted(METHODS))}")
        if not e.get("args"):
            raise ValueError(f"{where}: method {e['method']!r} needs the tensor as its first argument")
        _validate(e["args"], n_inputs, tensors, where)
        _validate(list((e.get("kwargs") or {}).values()), n_inputs, tensors, where)
    elif "attr" in e:
        if e["attr"] not in ATTRIBUTES:
            raise ValueError(f"{where}: attribute {e['attr']!r} is not allowed; valid: {choices(sorted(ATTRIBUTES))}")
        _validate(e.get("of"), n_inputs, tensors, where)
    elif "tuple" in e or "slice" in e:
        _validate(e.get("tuple", e.get("slice")), n_inputs, tensors, where)
    elif "dict" in e:
        _validate(list(e["dict"].values()), n_inputs, tensors, where)
    elif "dtype" in e:
        if e["dtype"] not in _DTYPES:
            raise ValueError(f"{where}: dtype {e['dtype']!r} is not allowed; valid: {choices(_DTYPES)}")
    elif "ellipsis" not in e:
        raise ValueError(f"{where}: {e!r} is not an expression")


def _eval(e: Any, xs: Sequence[Any], holder: nn.Module) -> Any:
    if isinstance(e, list):
        return [_eval(x, xs, holder) for x in e]
    if not isinstance(e, dict):
        return e
    if "input" in e:
        return xs[e["input"]]
    if "tensor" in e:
        return holder.held(e["tensor"])  # type: ignore[operator]
    if "call" in e:
        args = _eval(e.get("args", []), xs, holder)
        kwargs = {k: _eval(v, xs, holder) for k, v in (e.get("kwargs") or {}).items()}
        return _function(e["call"])(*args, **kwargs)
    if "method" in e:
        self_, *args = _eval(e["args"], xs, holder)
        if not isinstance(self_, torch.Tensor):
            raise TypeError(f"tensor method {e['method']!r} called on a {type(self_).__name__}")
        kwargs = {k: _eval(v, xs, holder) for k, v in (e.get("kwargs") or {}).items()}
        return getattr(self_, e["method"])(*args, **kwargs)
    if "attr" in e:
        obj = _eval(e["of"], xs, holder)
        if not isinstance(obj, torch.Tensor):
            raise TypeError(f"attribute {e['attr']!r} read from a {type(obj).__name__}")
        return getattr(obj, e["attr"])
    if "tuple" in e:
        return tuple(_eval(e["tuple"], xs, holder))
    if "slice" in e:
        return slice(*_eval(e["slice"], xs, holder))
    if "dict" in e:
        return {k: _eval(v, xs, holder) for k, v in e["dict"].items()}
    if "dtype" in e:
        return getattr(torch, e["dtype"])
    return Ellipsis


class TensorOp(nn.Module):
    """An allow-listed expression over the node's inputs, holding its own tensors (a class token)."""

    def __init__(self, expr: dict[str, Any], tensors: dict[str, dict[str, Any]], n_inputs: int) -> None:
        super().__init__()
        self.expr = expr
        for name, spec in tensors.items():
            dtype = spec.get("dtype", "float32")
            if dtype not in _DTYPES:
                raise ValueError(f"tensor {name!r}: dtype {dtype!r} is not allowed; valid: {choices(_DTYPES)}")
            value = torch.zeros([int(d) for d in spec["shape"]], dtype=getattr(torch, dtype))
            if spec.get("param", True):
                self.register_parameter(name, nn.Parameter(value, requires_grad=value.is_floating_point()))
            else:
                self.register_buffer(name, value)
        _validate(expr, n_inputs, list(tensors))
        self.n_inputs = n_inputs

    def held(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def forward(self, *xs: Any) -> Any:
        return _eval(self.expr, xs, self)

    def extra_repr(self) -> str:
        return json.dumps(self.expr)[:120]


_RESERVED_NAMES = frozenset({"expr", "n_inputs", "training", "forward", *dir(nn.Module)})


def _max_input(e: Any) -> int:
    if isinstance(e, list):
        return max((_max_input(x) for x in e), default=-1)
    if isinstance(e, dict):
        if "input" in e and isinstance(e["input"], int):
            return e["input"]
        return max((_max_input(v) for v in e.values()), default=-1)
    return -1


@register_layer(
    "tensor_op",
    role=Role.FIXED,
    example={"expr": {"method": "flatten", "args": [{"input": 0}, 1]}},
    example_inputs=((2, 3, 3),),
)
def tensor_op(expr: dict[str, Any], tensors: dict[str, Any] | None = None) -> nn.Module:
    """An operation between blocks (add, cat, getitem, expand, …) from a fixed allow-list."""
    tensors = dict(tensors or {})
    for name, spec in tensors.items():
        if not name.isidentifier() or name.startswith("_") or name in _RESERVED_NAMES:
            raise ValueError(f"tensor name {name!r} must be a plain identifier, not one of {sorted(_RESERVED_NAMES)}")
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise ValueError(f"tensor {name!r} needs {{'shape': [...], 'dtype': ..., 'param': true|false}}")
    return TensorOp(dict(expr), tensors, _max_input(expr) + 1)


# ---- timm modules ------------------------------------------------------------------------------


#: the timm.create_model arguments a saved zoo node (or source.kwargs) may carry: sizes and
#: architecture switches only. Anything that names a file, a download or code
#: (checkpoint_path, pretrained, pretrained_cfg*, cache_dir, …) is refused, so a model file can
#: never make loading read another file.
TIMM_KWARGS = frozenset({
    "num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "drop_block_rate", "proj_drop_rate",
    "attn_drop_rate", "pos_drop_rate", "patch_drop_rate", "img_size", "patch_size", "output_stride", "class_token",
    "no_embed_class", "reg_tokens", "pre_norm", "fc_norm", "dynamic_img_size", "dynamic_img_pad", "embed_dim", "depth",
    "num_heads", "mlp_ratio", "qkv_bias", "qk_norm", "init_values", "layer_scale_init_value", "act_layer",
    "norm_layer", "width_multiplier", "channel_multiplier", "depth_multiplier", "features_only", "out_indices",
    "head_hidden_size", "scriptable", "exportable", "no_jit", "zero_init_last", "stem_type", "stem_width",
    "down_kernel_size", "avg_down", "cardinality", "base_width", "block_args", "se_layer", "bn_tf", "fix_stem",
    "round_chs_fn", "head_norm_first", "conv_mlp", "ls_init_value", "dims", "depths", "num_features",
})


#: creation arguments that name a file or a download: never taken, from a config or a file
REFUSED_TIMM_KWARGS = frozenset({"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                                 "cache_dir", "pretrained_strict"})


def check_timm_kwargs(kwargs: Any, field: str = "kwargs") -> dict[str, Any]:
    """The creation arguments, if every one is allowed and is plain JSON data (no paths, no code)."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{field}: expected a mapping of timm.create_model arguments")
    bad = sorted(k for k in kwargs if k not in TIMM_KWARGS)
    if bad:
        raise ValueError(f"{field}: {bad[0]!r} is not an allowed timm.create_model argument (only sizes and "
                         f"architecture switches are; file paths and pretrained settings never are)")
    for k, v in kwargs.items():
        _check_plain(v, f"{field}.{k}")
    return dict(kwargs)


def _check_plain(v: Any, field: str) -> None:
    if v is None or isinstance(v, (bool, int, float)):
        return
    if isinstance(v, str):
        if "/" in v or "\\" in v or v.startswith("."):
            raise ValueError(f"{field}: {v!r} looks like a path; only names and numbers are allowed")
        return
    if isinstance(v, (list, tuple)):
        for x in v:
            _check_plain(x, field)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if k in ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "file"):
                raise ValueError(f"{field}.{k}: not allowed")
            _check_plain(x, f"{field}.{k}")
        return
    raise ValueError(f"{field}: {type(v).__name__} values are not allowed")


@functools.lru_cache(maxsize=4)
def _template(model: str, kwargs_json: str, device: str) -> nn.Module:
    import timm

    if not timm.is_model(model):
        raise ValueError(f"timm has no model {model!r}")
    return timm.create_model(model, pretrained=False, **json.loads(kwargs_json)).eval()


def timm_template(model: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A randomly initialized timm model, created once per (model, kwargs, default device) in a
    process; do not modify. Only allowed creation arguments are passed (see ``TIMM_KWARGS``)."""
    kwargs = check_timm_kwargs(kwargs)
    return _template(model, json.dumps(kwargs, sort_keys=True), str(torch.get_default_device()))


class TimmCall(nn.Module):
    """A timm module called with more than the node's inputs (``blk(x, shared_rel_pos=None)``).

    ``buffers`` are tensors of the model the call passes (EVA's rotary embedding table): buffers
    timm computes in the constructor and never saves, so they are rebuilt, not stored.
    """

    def __init__(self, inner: nn.Module, call: dict[str, Any], buffers: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.call = {"args": list(call.get("args") or []), "kwargs": dict(call.get("kwargs") or {})}
        unknown = sorted(set(call) - {"args", "kwargs"})
        if unknown:
            raise ValueError(f"call: unknown key {unknown[0]!r}; valid: args, kwargs")
        buffers = dict(buffers or {})
        for target, value in buffers.items():
            self.register_buffer(self._buffer_name(target), value, persistent=False)
        _validate([self.call["args"], list(self.call["kwargs"].values())], _max_input(self.call) + 1, list(buffers))

    @staticmethod
    def _buffer_name(target: str) -> str:
        return "model_" + target.replace(".", "_")

    def held(self, name: str) -> torch.Tensor:
        return getattr(self, self._buffer_name(name))

    def forward(self, *xs: Any) -> Any:
        args = _eval(self.call["args"], xs, self)
        kwargs = {k: _eval(v, xs, self) for k, v in self.call["kwargs"].items()}
        return self.inner(*args, **kwargs)


@register_layer(
    "timm_module",
    role=Role.FIXED,
    example={"model": "test_resnet", "path": "layer1.0"},
    example_inputs=((32, 8, 8),),
)
def timm_module(model: str, path: str, kwargs: dict[str, Any] | None = None, call: dict[str, Any] | None = None) -> nn.Module:
    """A block of a timm model: timm.create_model(model, **kwargs).get_submodule(path).

    ``call`` (``{"args": [...], "kwargs": {...}}``, expressions as ``tensor_op`` takes) is how it
    is called when that is more than with the node's inputs in order.
    """
    template = timm_template(model, kwargs)
    try:
        module = template.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in template.named_modules() if n]
        raise ValueError(f"timm model {model!r} has no module {path!r} (valid: {choices(names, 12)})") from None
    # a copy: the template is shared by every node built from it
    module = copy.deepcopy(module).train()
    if isinstance(getattr(module, "inplace", None), bool):
        module.inplace = False  # its input may be a stored or inference-mode boundary tensor
    if call is None:
        return module
    buffers = {}
    for target in sorted(_tensor_refs(call)):
        if not is_computed_buffer(template, target):
            raise ValueError(f"call: {target!r} is not a buffer timm computes for {model!r}")
        buffers[target] = template.get_buffer(target).clone()
    return TimmCall(module, call, buffers)


def _tensor_refs(e: Any) -> set[str]:
    if isinstance(e, list):
        return set().union(*(_tensor_refs(x) for x in e)) if e else set()
    if isinstance(e, dict):
        if "tensor" in e and isinstance(e["tensor"], str):
            return {e["tensor"]}
        return _tensor_refs(list(e.values()))
    return set()


def is_computed_buffer(model: nn.Module, target: str) -> bool:
    """A buffer that is not in the state dict: the constructor computes it (a position table)."""
    owner_path, _, attr = target.rpartition(".")
    try:
        owner = model.get_submodule(owner_path)
    except AttributeError:
        return False
    return attr in owner._buffers and attr in owner._non_persistent_buffers_set

