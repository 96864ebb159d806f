"""The shipped transfer recipes win on their own data: the fine-tuned model beats the source
model as loaded (baseline.source) and the same recipe from random weights (source.init=random)
on the test metric the recipe monitors. Every run is seeded (seed, data split, init)."""

from __future__ import annotations

import pytest

from tlexp.train import run


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "metric"), [("churn_transfer", "auroc"), ("digits_transfer", "accuracy")])
def test_shipped_recipe_beats_the_source_and_random_init(compose_cfg, experiment: str, metric: str) -> None:
    tuned = run(compose_cfg(f"experiment={experiment}", out="tuned"))
    scratch = run(compose_cfg(f"experiment={experiment}", "source.init=random", out="random"))
    assert tuned["monitor"]["name"] == f"val/{metric}"
    result, source, random = tuned["test"][metric], tuned["baseline"]["source"][metric], scratch["test"][metric]
    assert result > source, f"{experiment}: fine-tuned test {metric} {result:.4f} <= baseline.source {source:.4f}"
    assert result > random, f"{experiment}: fine-tuned test {metric} {result:.4f} <= source.init=random {random:.4f}"
