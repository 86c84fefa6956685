"""The gate's rule on numbers: better by more than the margin and no regression, or refuse with the reason."""
from __future__ import annotations

import pytest

from autoglm.errors import ConfigError
from autoglm.loop.gate import decide, direction_of
from autoglm.loop.schema import GateConfig

AUC = GateConfig(metric="auc", margin=0.01, regression_tolerance=0.02)
LOSS = GateConfig(metric="eval_loss", margin=0.05)


def test_direction_from_the_metric_name():
    assert direction_of("auc") == "maximize" and direction_of("test_log_loss") == "minimize"
    assert direction_of("perplexity") == "minimize" and direction_of("auc", "minimize") == "minimize"


def test_accepts_a_candidate_better_by_the_margin():
    d = decide(AUC, {"holdout": {"auc": 0.80}, "regression": {"auc": 0.79}},
               {"holdout": {"auc": 0.75}, "regression": {"auc": 0.80}})
    assert d.promote and "better by 0.05" in d.reason and "no regression" in d.reason


def test_refuses_a_worse_candidate_with_the_reason():
    d = decide(AUC, {"holdout": {"auc": 0.70}}, {"holdout": {"auc": 0.75}})
    assert not d.promote and "worse by 0.05" in d.reason and "needs better by more than 0.01" in d.reason


def test_refuses_a_gain_below_the_margin():
    d = decide(AUC, {"holdout": {"auc": 0.755}}, {"holdout": {"auc": 0.75}})
    assert not d.promote and "better by 0.005" in d.reason


def test_refuses_a_better_candidate_that_breaks_the_regression_set():
    d = decide(AUC, {"holdout": {"auc": 0.90}, "regression": {"auc": 0.70}},
               {"holdout": {"auc": 0.75}, "regression": {"auc": 0.80}})
    assert not d.promote and "regression set auc 0.7 vs champion 0.8: worse by 0.1" in d.reason


def test_lower_is_better_for_a_loss():
    assert decide(LOSS, {"holdout": {"eval_loss": 2.0}}, {"holdout": {"eval_loss": 2.2}}).promote
    assert not decide(LOSS, {"holdout": {"eval_loss": 2.2}}, {"holdout": {"eval_loss": 2.0}}).promote


def test_no_champion_promotes_and_an_unknown_metric_is_an_error():
    assert decide(AUC, {"holdout": {"auc": 0.6}}, None).promote
    with pytest.raises(ConfigError, match="reports auc"):
        decide(GateConfig(metric="f2"), {"holdout": {"auc": 0.6}}, None)
