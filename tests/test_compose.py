"""Composing a config as a new user does: errors name the key and the way out (one line, exit 2),
closed choices are checked at compose time, and a group option chosen on the command line is
never silently undone by the experiment's values."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import tlexp.config  # noqa: F401  (registers the schemas)
from tests.conftest import cli_here
from tlexp._choices import shadowed_choice
from tlexp._resources import CONF_DIR
from tlexp.cli import _hydra_error_line


def _compose_error(overrides: list[str]) -> str:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        with pytest.raises(Exception) as info:
            compose("config", overrides=overrides)
    line = _hydra_error_line(info.value)
    assert line is not None and "\n" not in line
    return line


def test_a_data_set_without_the_experiments_keys_names_the_key_and_experiment_none():
    line = _compose_error(["data=csv", "data.path=t.csv", "data.label=y"])
    assert line.startswith("data.classes: experiment/digits_transfer sets it")
    assert "experiment=none" in line and "valid keys here: type" in line


def test_a_misspelled_key_names_it_and_the_valid_keys():
    line = _compose_error(["finetune.lrr=3"])
    assert "finetune.lrr: no such key; valid keys here: optimizer, lr," in line


@pytest.mark.parametrize(("override", "valid"), [
    ("freeze.mode=bogus", "[featurize, in_model]"),
    ("finetune.schedule=cosin", "cosine"),
    ("trainer.accelerator=tpu", "[cpu, gpu, cuda, mps, auto]"),
    ("finetune.loss=mse", "[cross_entropy, nll]"),
    ("finetune.weight_init=glorot", "[default, xavier_uniform,"),
    ("source.init=imagenet", "[pretrained, random]"),
    ("unfreeze.bn=sometimes", "[frozen, train]"),
])
def test_a_bad_closed_choice_fails_at_compose_time_listing_the_valid_values(override, valid):
    line = _compose_error([override])
    key, value = override.split("=")
    assert f"{key}: {value!r} is not a valid choice; valid: " in line and valid.strip("[]") in line


def _shadow(*argv: str) -> str | None:
    return shadowed_choice(list(argv), Path(CONF_DIR))


@pytest.mark.parametrize(("argv", "key"), [
    (["finetune=nesterov"], "finetune.lr"),
    (["freeze=none"], "freeze.up_to"),
    (["experiment=churn_transfer", "finetune=default"], "finetune.lr"),
])
def test_a_group_choice_the_experiment_would_undo_is_refused_naming_the_keys(argv, key):
    line = _shadow(*argv)
    assert line is not None and f"sets {key}" in line and "experiment=none" in line and f"{key}=" in line


@pytest.mark.parametrize("argv", [
    ["freeze=in_model"],  # the experiment sets only freeze.up_to, which in_model leaves to it
    ["finetune=nesterov", "finetune.lr=0.1"],  # the command line sets the key too: it wins
    ["experiment=none", "finetune=nesterov"],
    ["experiment=digits_transfer", "finetune=default"],  # the experiment's own choice
])
def test_group_choices_the_experiment_does_not_undo_are_allowed(argv):
    assert _shadow(*argv) is None


def test_freeze_in_model_on_the_command_line_is_what_runs():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["freeze=in_model"])
    assert cfg.freeze.mode == "in_model" and cfg.freeze.up_to == "flatten"


@pytest.mark.slow
@pytest.mark.parametrize(("args", "expect"), [
    (["data=csv", "data.path=t.csv", "data.label=y"], "data.classes: experiment/digits_transfer sets it"),
    (["finetune=nesterov"], "finetune=nesterov: experiment digits_transfer sets finetune.lr"),
])
def test_the_cli_prints_one_line_and_exits_2(tmp_path, args, expect):
    res = cli_here(args, cwd=tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tlexp: error: " + expect), res.stderr
    assert list(tmp_path.iterdir()) == []


def test_keras_input_layout_is_checked_at_compose_time():
    line = _compose_error(["experiment=none", "source=keras", "source.path=m.keras", "source.input_layout=nhwc"])
    assert "source.input_layout: 'nhwc' is not a valid choice; valid: channels_first, channels_last" in line


def test_each_closed_choice_lists_what_its_room_accepts():
    from tlexp import config as c
    from tlexp.baselines import INITS
    from tlexp.data.preprocessing import PREPROCESSING_MODES
    from tlexp.featurize._store import DTYPES
    from tlexp.finetune._settings import GRADIENT_NORMALIZATIONS, SCHEDULES, WEIGHT_INITS
    from tlexp.freeze import MODES
    from tlexp.module import LOSSES
    from tlexp.sources.keras._model import LAYOUTS

    # the schema imports none of the rooms: each Enum is checked against its room here
    rooms = {c.FreezeMode: MODES, c.Schedule: SCHEDULES, c.GradientNormalization: GRADIENT_NORMALIZATIONS,
             c.PreprocessingMode: PREPROCESSING_MODES, c.WeightInit: WEIGHT_INITS, c.SourceInit: INITS,
             c.CacheDtype: tuple(DTYPES), c.Loss: LOSSES, c.InputLayout: LAYOUTS}
    assert set(rooms) == {e for e in vars(c).values() if isinstance(e, type) and issubclass(e, c.Choice)
                          and e is not c.Choice} - {c.Accelerator, c.InspectFormat, c.MonitorMode, c.BatchNormMode}
    for enum, values in rooms.items():
        assert tuple(m.value for m in enum) == tuple(values), enum.__name__


def test_closed_choices_from_python_go_through_the_schema_enums():
    """Without Hydra (a library call), freeze.mode, train.mode, source.init and finetune.loss are
    checked against tlexp.config's Enums by the one checker: same choices, one wording."""
    from tests._models import conv_chain
    from tlexp.baselines import check_init
    from tlexp.callbacks import resolve_mode
    from tlexp.errors import ConfigError
    from tlexp.finetune import validate_finetune
    from tlexp.freeze import freeze

    cases = [
        (lambda: freeze(conv_chain(), None, mode="sometimes"), "freeze.mode: 'sometimes' is not one of featurize, in_model"),
        (lambda: resolve_mode("val/loss", "biggest"), "train.mode: 'biggest' is not one of min, max, auto"),
        (lambda: check_init("imagenet"), "source.init: 'imagenet' is not one of pretrained, random"),
        (lambda: validate_finetune({"loss": "mse"}), "finetune.loss: 'mse' is not one of cross_entropy, nll, bce"),
    ]
    for call, message in cases:
        with pytest.raises(ConfigError) as e:
            call()
        assert str(e.value) == message
    assert resolve_mode("val/loss", "auto") == "min" and resolve_mode("val/accuracy", "auto") == "max"
