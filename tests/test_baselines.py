"""Baselines in every run: the source as loaded, the model before fit, and source.init=random."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

import tlexp
from tlexp._resources import resolve_path
from tlexp.assemble import load_graph, plain
from tlexp.data import build_datamodule
from tlexp.data.preprocessing import load_preprocessing
from tlexp.train import prepare, run


def _by_hand(model: torch.nn.Module, loader) -> tuple[float, float]:
    """Accuracy and AUROC of a two-class model, counted here (rank statistic, no library)."""
    model.eval()
    scores, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            p = model(x)
            scores.append(p[:, 1] - p[:, 0])
            labels.append(y)
    s, y = torch.cat(scores), torch.cat(labels)
    accuracy = float(((s > 0).long() == y).float().mean())
    pos, neg = s[y == 1], s[y == 0]
    auroc = float(((pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()).mean())
    return accuracy, auroc


def test_source_baseline_equals_the_loaded_model_by_hand(compose_cfg) -> None:
    cfg = compose_cfg("experiment=churn_transfer", "trainer.max_epochs=1")
    metrics = run(cfg)
    model = tlexp.load_model(resolve_path(str(cfg.source.path)))
    # the test rows prepared as the run prepares them: with the source's preprocessing when it has one
    data = build_datamodule(plain(cfg.data), seed=cfg.seed, source_preprocessing=load_preprocessing(str(cfg.source.path)))
    accuracy, auroc = _by_hand(model, data.test_dataloader())
    base = metrics["baseline"]["source"]
    assert base["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert base["auroc"] == pytest.approx(auroc, abs=1e-5)
    assert base["samples"] == metrics["test"]["samples"]
    # before fit: the model after surgery (a fresh head), not yet trained
    prepared = prepare(cfg)
    accuracy0, _ = _by_hand(prepared.graph, prepared.data.test_dataloader())
    assert metrics["baseline"]["before_fit"]["accuracy"] == pytest.approx(accuracy0, abs=1e-6)
    # the summary table prints the result beside its baselines
    console = Console(record=True, width=200)
    from tlexp._report import print_run_table

    print_run_table(cfg, metrics, cfg.paths.output_dir, console=console)
    text = console.export_text()
    assert "baseline: source" in text and "baseline: before_fit" in text and "(result " in text


def test_source_baseline_is_left_out_when_outputs_do_not_match(compose_cfg) -> None:
    metrics = run(compose_cfg("experiment=digits_transfer", "data.classes=[5,6,7]", "trainer.max_epochs=1"))
    assert "source" not in metrics["baseline"] and "before_fit" in metrics["baseline"]
    assert "5 outputs" in metrics["baseline_skipped"]["source"]


def test_random_init_changes_every_weight_and_is_seeded(compose_cfg) -> None:
    pretrained, _ = load_graph(compose_cfg("experiment=digits_transfer"))
    a, _ = load_graph(compose_cfg("experiment=digits_transfer", "source.init=random"))
    b, _ = load_graph(compose_cfg("experiment=digits_transfer", "source.init=random"))
    c, _ = load_graph(compose_cfg("experiment=digits_transfer", "source.init=random", "seed=7"))
    p, sa, sb, sc = (g.state_dict() for g in (pretrained, a, b, c))
    assert p.keys() == sa.keys()
    for k in p:
        assert not torch.equal(p[k], sa[k]), f"{k} kept its pretrained value"
        assert torch.equal(sa[k], sb[k]), f"{k} differs between two runs with one seed"
        assert not torch.equal(sa[k], sc[k]), f"{k} is the same under another seed"


def test_bad_init_is_a_config_error(compose_cfg) -> None:
    # a closed choice (tlexp.config.SourceInit): refused when the config is composed, valid values listed
    from tlexp.baselines import check_init
    from tlexp.cli import _hydra_error_line
    from tlexp.errors import ConfigError

    with pytest.raises(Exception) as info:
        compose_cfg("experiment=digits_transfer", "source.init=imagenet")
    assert "source.init: 'imagenet' is not a valid choice; valid: pretrained, random" in _hydra_error_line(info.value)
    with pytest.raises(ConfigError, match="source.init"):  # from Python, without the schema
        check_init("imagenet")
