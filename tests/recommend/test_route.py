from __future__ import annotations

import pytest

from autoglm.recommend.identify import Identification
from autoglm.recommend.profiles import Latency, ModelProfile, histogram_quantile
from autoglm.recommend.quality import QualityBook
from autoglm.recommend.route import RouteError, RouteWeights, choose


def ident(task: str, confidence: float = 0.8) -> Identification:
    return Identification(task, confidence, task, "en", {}, {})


PROFILES = {
    "coder": ModelProfile("coder", {"code": 0.9, "chat": 0.4}, context_length=4096, cost=1.0),
    "general": ModelProfile("general", {"chat": 0.8, "translation": 0.9, "code": 0.3}, cost=0.5),
    "vision": ModelProfile("vision", {"chat": 0.5}, context_length=2048, modality=("text", "image"), cost=2.0),
}


def test_best_score_wins_and_the_runner_up_is_named():
    d = choose(ident("code"), PROFILES, default="general")
    assert (d.model, d.runner_up) == ("coder", "general")
    assert d.header() == "task=code; confidence=0.80; model=coder; runner_up=general"
    assert choose(ident("translation"), PROFILES, default="general").model == "general"


def test_unknown_goes_to_the_default_model():
    d = choose(ident("unknown", 0.1), PROFILES, default="general")
    assert d.model == "general" and "default" in d.reason


def test_hard_constraints_exclude_and_say_why():
    d = choose(ident("code"), PROFILES, default="general", allowed=lambda m: m != "coder")
    assert d.model == "general" and d.excluded["coder"] == "not allowed for this key"
    d = choose(ident("code"), PROFILES, default="general", need_tokens=5000)
    assert d.model == "general" and d.excluded["coder"].startswith("context 4096")
    d = choose(ident("chat"), PROFILES, default="general", needs_image=True)
    assert d.model == "vision" and d.excluded["general"] == "no image input"
    d = choose(ident("code"), PROFILES, default="general", healthy=lambda m: m != "coder")
    assert d.model == "general" and d.excluded["coder"] == "down"


def test_nothing_fits_is_a_clean_error():
    with pytest.raises(RouteError) as e:
        choose(ident("code"), PROFILES, default="general", allowed=lambda m: False)
    assert e.value.status == 403
    small = {"a": ModelProfile("a", context_length=100)}
    with pytest.raises(RouteError) as e:
        choose(ident("code"), small, default="a", need_tokens=500)
    assert e.value.status == 400 and "500 tokens" in e.value.message


def test_cost_and_live_latency_move_the_choice():
    two = {"fast": ModelProfile("fast", {"chat": 0.7}), "slow": ModelProfile("slow", {"chat": 0.75})}
    lat = {"fast": Latency(0.1, 0.01), "slow": Latency(2.0, 0.05)}
    assert choose(ident("chat"), two, default="fast").model == "slow"
    d = choose(ident("chat"), two, default="fast", latency=lat.__getitem__, weights=RouteWeights(latency=0.2))
    assert d.model == "fast"


def test_recorded_quality_blends_with_the_profile(tmp_path):
    book = QualityBook(tmp_path / "state.db", prior_weight=5)
    p = PROFILES["general"]
    assert book.quality(p, "code") == pytest.approx(0.3)
    book.record("general", "code", 1.0, weight=5)
    assert book.quality(p, "code") == pytest.approx(0.65)
    again = QualityBook(tmp_path / "state.db")
    assert again.quality(p, "code") == pytest.approx(0.3)  # a snapshot: read from the store on refresh
    again.refresh()
    assert again.quality(p, "code") == pytest.approx(0.65)  # persisted
    with pytest.raises(ValueError):
        book.record("general", "code", 1.5)
    book.close()
    again.close()


def test_histogram_quantile_matches_prometheus():
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.75)
    assert histogram_quantile(0.95, []) is None
