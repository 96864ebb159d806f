"""Creating the timm model: name checks, timm's hub download, local weight files, offline refusal."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from tlexp._resources import resolve_path
from tlexp.errors import ConfigError, SourceError

__all__ = ["check_name", "create_model", "WEIGHT_SUFFIXES"]

#: local weight files timm reads without unpickling code (torch.load(weights_only=True) for .pth)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_LOCAL_WEIGHTS_HINT = "give a local file with source.weights=FILE (.safetensors or .pth)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, (KeyError, AssertionError)):
        line = f"{type(e).__name__}: {line}"  # bare key names read as nothing on their own
    return line if len(line) <= 200 else line[:197] + "..."


def check_name(name: Any) -> str:
    """``name`` if timm knows it, else a ConfigError naming close matches."""
    import timm

    if not isinstance(name, str) or not name:
        raise ConfigError(f"source.name: {name!r} is not a timm model name; see timm.list_models()")
    if timm.is_model(name):
        return name
    known = timm.list_models()
    containing = timm.list_models(f"*{name}*")
    close = difflib.get_close_matches(name, containing or known, n=8, cutoff=0.0 if containing else 0.6)
    hint = f"close matches: {', '.join(close)}" if close else f"timm has {len(known)} models, see timm.list_models()"
    raise ConfigError(f"source.name: timm has no model {name!r}; {hint}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def _cached(cfg: Any) -> bool:
    """Whether timm's hub download of ``cfg``'s weights can be served from the local cache."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
        names = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        repo = hub_id.split("@")[0]
        return any(n and isinstance(try_to_load_from_cache(repo, n, cache_dir=cache_dir), str) for n in names)
    url = getattr(cfg, "url", None)
    if url:
        import torch.hub

        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file()
    return False


def _check_hub(name: str) -> None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise SourceError(f"source.pretrained: timm has no pretrained weights for {name!r}; {_LOCAL_WEIGHTS_HINT} or set source.pretrained=false")
    if _cached(cfg):
        return
    if _offline():
        raise SourceError(
            f"source.pretrained: the weights of {name!r} are not in the local cache and downloads are off "
            f"(HF_HUB_OFFLINE=1); {_LOCAL_WEIGHTS_HINT}, or unset HF_HUB_OFFLINE to let timm download them"
        )
    host, port = _download_host(cfg)
    why = _unreachable(host, port)
    if why:  # fail now instead of after the hub client's retries
        raise SourceError(
            f"source.pretrained: cannot reach {host} to download the weights of {name!r} ({why}); {_LOCAL_WEIGHTS_HINT}, "
            "or set HF_HUB_OFFLINE=1 to use only the local cache"
        )


def _download_host(cfg: Any) -> tuple[str, int]:
    if getattr(cfg, "hf_hub_id", None):
        endpoint = os.environ.get("HF_ENDPOINT")
        if not endpoint:
            from huggingface_hub import constants

            endpoint = constants.ENDPOINT
    else:
        endpoint = cfg.url
    u = urlparse(endpoint)
    return u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443)


def _unreachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to the download host fails (a few seconds at most), or None."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def _weights_file(weights: Any) -> Path:
    if not isinstance(weights, str) or not weights:
        raise ConfigError(f"source.weights: {weights!r} is not a file path")
    path = resolve_path(weights).resolve()
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ConfigError(f"source.weights: {weights!r} is not a weights file; valid suffixes: {', '.join(WEIGHT_SUFFIXES)}")
    if not path.is_file():
        raise SourceError(f"source.weights: {str(path)!r} does not exist")
    return path


def _file_classes(path: Path, classifier: str | None) -> int | None:
    """Rows of the classifier weight in a weights file, read without unpickling, or None."""
    if not classifier:
        return None
    key = f"{classifier}.weight"
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return int(f.get_slice(key).get_shape()[0]) if key in f.keys() else None
        import torch

        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable here: timm reports it when it loads the file
        return None
    if isinstance(state, dict):
        for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
        for k in (key, f"module.{key}"):
            if k in state and hasattr(state[k], "shape"):
                return int(state[k].shape[0])
    return None


def create_model(name: str, pretrained: bool, weights: str | None, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` with tlexp's errors: hub weights, a local file, or random init."""
    import timm

    from tlexp.sources.zoo._layers import REFUSED_TIMM_KWARGS

    # what the user writes is theirs to choose (timm says what it does not take); only what would
    # make loading read a file or download is refused. A saved node's arguments are an allow-list.
    refused = sorted(set(kwargs) & REFUSED_TIMM_KWARGS)
    if refused:
        raise ConfigError(f"source.kwargs.{refused[0]}: not allowed; use source.weights=FILE or source.pretrained=true")
    extra: dict[str, Any] = {}
    path = None
    if weights is not None:
        path = _weights_file(weights)
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        # a file replaces the hub; its own class count decides whether its classifier fits
        overlay: dict[str, Any] = {"file": str(path), "custom_load": False, "source": None}
        rows = _file_classes(path, getattr(cfg, "classifier", None))
        if rows is not None:
            overlay["num_classes"] = rows
        extra = {"pretrained": True, "pretrained_cfg_overlay": overlay}
    elif pretrained:
        _check_hub(name)
        extra = {"pretrained": True}
    try:
        return timm.create_model(name, **extra, **kwargs).eval()
    except TypeError as e:
        if "argument" in str(e):
            raise ConfigError(f"source.kwargs: timm.create_model({name!r}) does not take {kwargs}: {_first_line(e)}") from None
        raise
    except Exception as e:
        if path is not None:
            raise SourceError(f"source.weights: {str(path)!r} does not fit timm model {name!r}: {_first_line(e)}") from None
        if extra:
            raise SourceError(
                f"source.pretrained: cannot download the weights of {name!r} ({_first_line(e)}); {_LOCAL_WEIGHTS_HINT}, "
                "or set HF_HUB_OFFLINE=1 to use only the local cache"
            ) from None
        # random init only runs timm's constructor: what fails there is the arguments given
        raise ConfigError(f"source: timm.create_model({name!r}, {kwargs}) failed: {_first_line(e)}") from None
