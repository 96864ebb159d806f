"""A group option chosen on the command line is never silently undone by the experiment.

An experiment (``conf/experiment/*.yaml``) chooses group options (``override /finetune: …``) and
sets values on top of them. When the command line chooses another option of a group
(``finetune=nesterov``) and the experiment sets a key that option decides (``finetune.lr``), the
experiment's value would win without a word; :func:`shadowed_choice` finds that case so the CLI
refuses it with one line naming the keys and the way out (set them on the command line too, or
``experiment=none``). Keys the command line also sets are not shadowed: the command line wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

__all__ = ["shadowed_choice"]


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k == "defaults":
                continue
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _load(dirs: Iterable[Path], group: str, option: str) -> dict[str, Any] | None:
    for d in dirs:
        path = d / group / f"{option}.yaml"
        if path.is_file():
            data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            return {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}
    return None


def _chosen(defaults: Any) -> dict[str, str]:
    """``override /group: option`` entries of an experiment's defaults list."""
    out: dict[str, str] = {}
    for entry in defaults or []:
        if isinstance(entry, Mapping):
            for k, v in entry.items():
                k = str(k)
                if k.startswith("override "):
                    k = k[len("override "):]
                out[k.lstrip("/")] = str(v)
    return out


def _config_dirs(argv: list[str], conf_dir: Path) -> list[Path]:
    dirs = []
    for i, a in enumerate(argv):
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif a.startswith("--config-dir="):
            dirs.append(Path(a.split("=", 1)[1]))
    return [*dirs, conf_dir]


def shadowed_choice(argv: list[str], conf_dir: Path) -> str | None:
    """The error line for a command-line group choice the experiment would undo, or None."""
    dirs = _config_dirs(argv, conf_dir)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    pairs = [a.split("=", 1) for a in overrides]
    given = {k.lstrip("+~") for k, _ in pairs}
    choices = {k: v for k, v in pairs if "." not in k and "/" not in k and not k.startswith(("+", "~"))}
    if not set(choices) - {"experiment", "hydra"}:
        return None  # no group option chosen: nothing to shadow (and no config files to read)
    root = _load([conf_dir], ".", "config") or {}
    default_exp = _chosen([{k: v} for e in root.get("defaults", []) if isinstance(e, Mapping) for k, v in e.items()])
    experiment = choices.get("experiment", default_exp.get("experiment"))
    if experiment in (None, "none", "null") or "," in str(experiment):
        return None
    exp = _load(dirs, "experiment", str(experiment))
    if exp is None:
        return None  # Hydra names the missing option
    exp_choices = _chosen(exp.get("defaults"))
    exp_keys = _leaves(exp, "")
    for group, value in choices.items():
        if group == "experiment" or group == "hydra":
            continue
        for option in value.split(","):
            if option == exp_choices.get(group):
                continue
            cfg = _load(dirs, group, option)
            if cfg is None:
                continue
            decided = {f"{group}.{k}" for k, v in _leaves(cfg, "").items() if v != "???"}
            shadowed = sorted(k for k in exp_keys if k in decided and k not in given)
            if shadowed:
                return (f"{group}={option}: experiment {experiment} sets {', '.join(shadowed)}, which would silently "
                        f"replace {group}/{option}'s value; set {'them' if len(shadowed) > 1 else 'it'} on the command "
                        f"line too ({shadowed[0]}=…), or start from a blank recipe with experiment=none")
    return None
