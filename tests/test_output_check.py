"""The output check (DL4J's validateOutputLayerConfig) and a single sigmoid unit under finetune.loss=bce."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tlexp.errors import ConfigError
from tlexp.module import log_probs
from tlexp.train import prepare, run


def _net(activation: str | None, units: int, *extra: str) -> tuple[str, ...]:
    act = f", activation: {activation}" if activation else ""
    return ("experiment=none", "source=spec", "data=digits", "data.max_per_class=10",
            f"source.layers=[{{name: flatten, type: flatten}}, {{name: output, type: dense, out_features: {units}{act}}}]",
            "trainer.max_epochs=1", "callbacks=none", *extra)


TWO = "data.classes=[0,1]"


@pytest.mark.parametrize(("net", "says"), [
    (_net("sigmoid", 10), "ends in sigmoid"),
    (_net("tanh", 10), "ends in tanh"),
    (_net("relu", 10), "ends in relu"),
    (_net("softmax", 1, TWO), "always 1"),
    (_net(None, 1, TWO), "finetune.loss=bce"),
    (_net("sigmoid", 2, TWO, "finetune.loss=bce"), "one output unit"),
    (_net("relu", 1, TWO, "finetune.loss=bce"), "ends in relu"),
])
def test_bad_heads_are_refused_before_compute(compose_cfg, net, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        prepare(compose_cfg(*net))
    assert "'output'" in str(info.value) and "validate_output=false" in str(info.value)


@pytest.mark.parametrize("net", [
    _net("softmax", 10), _net(None, 10), _net("log_softmax", 10),
    _net("sigmoid", 1, TWO, "finetune.loss=bce"), _net(None, 1, TWO, "finetune.loss=bce"),
])
def test_good_heads_are_accepted(compose_cfg, net) -> None:
    prepare(compose_cfg(*net))


def test_validate_output_false_skips_the_check(compose_cfg) -> None:
    metrics = run(compose_cfg(*_net("sigmoid", 10, "finetune.validate_output=false")))
    assert metrics["epochs"] == 1


def test_single_sigmoid_unit_trains_with_bce(compose_cfg) -> None:
    metrics = run(compose_cfg(*_net("sigmoid", 1, TWO, "finetune.loss=bce", "trainer.max_epochs=5", "finetune.lr=0.01")))
    assert metrics["num_classes"] == 2 and metrics["test"]["accuracy"] > 0.9 and metrics["test"]["auroc"] > 0.95


def test_bce_log_probs_are_binary_cross_entropy() -> None:
    p = torch.tensor([[0.1], [0.8], [0.5], [0.99]])
    y = torch.tensor([0, 1, 0, 1])
    assert F.nll_loss(log_probs(p, "sigmoid"), y) == pytest.approx(float(F.binary_cross_entropy(p[:, 0], y.float())), abs=1e-6)
    z = torch.tensor([[-2.0], [1.5], [0.0], [4.0]])
    assert F.nll_loss(log_probs(z, "logits"), y) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(z[:, 0], y.float())), abs=1e-6)
