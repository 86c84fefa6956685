"""Each trigger fires on its condition and stays quiet otherwise (real SQLite feedback store)."""
from __future__ import annotations

import json
import uuid

import pytest

from autoglm.feedback.store import Exchange, Feedback, FeedbackStore
from autoglm.gateway.store import open_store
from autoglm.loop.schema import DriftTrigger, FeedbackCountTrigger, QualityDropTrigger, ScheduleTrigger
from autoglm.loop.triggers import TriggerContext, create_trigger

NOW = 1_800_000_000.0


@pytest.fixture()
def fs(tmp_path):
    store = open_store(tmp_path / "state.db")
    yield FeedbackStore(store)
    store.close()


def _exchange(fs: FeedbackStore, text: str, at: float) -> str:
    rid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    req = {"model": "m", "messages": [{"role": "user", "content": text}]}
    resp = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    fs.put_exchange(Exchange(rid, "k1", "chat", "m", at, 1, uuid.uuid4().hex), json.dumps(req), json.dumps(resp))
    return rid


def _feedback(fs: FeedbackStore, rating: float, at: float) -> None:
    rid = _exchange(fs, "hello there", at)
    fs.add_feedback(Feedback(uuid.uuid4().hex, rid, 0, "k1", "explicit", rating=rating, created_at=at))


def test_feedback_count_fires_on_n_new_rows_only(fs):
    trig = create_trigger(FeedbackCountTrigger(type="feedback_count", count=5))
    for i in range(4):
        _feedback(fs, 1.0, NOW - 100 + i)
    assert trig.check(TriggerContext(now=NOW, feedback=fs, last_cycle_at=None)) is None
    _feedback(fs, 1.0, NOW - 10)
    fired = trig.check(TriggerContext(now=NOW, feedback=fs, last_cycle_at=None))
    assert fired is not None and fired.data["count"] == 5 and "5 new feedback rows" in fired.reason
    # after a cycle at NOW - 50 only one row is new
    assert trig.check(TriggerContext(now=NOW, feedback=fs, last_cycle_at=NOW - 50)) is None


def test_quality_drop_fires_when_the_mean_falls_by_the_margin(fs):
    trig = create_trigger(QualityDropTrigger(type="quality_drop", window=3600, margin=0.3, min_count=5))
    for i in range(6):
        _feedback(fs, 1.0, NOW - 5000 + i)  # the window before: all good
    for i in range(6):
        _feedback(fs, 0.9 if i % 2 else 0.8, NOW - 100 + i)  # slightly lower: within the margin
    assert trig.check(TriggerContext(now=NOW, feedback=fs)) is None
    for i in range(6):
        _feedback(fs, -1.0, NOW - 50 + i)
    fired = trig.check(TriggerContext(now=NOW, feedback=fs))
    assert fired is not None and fired.data["mean_before"] == 1.0 and fired.data["mean_now"] < 0.7


def test_quality_drop_is_quiet_with_too_few_ratings(fs):
    trig = create_trigger(QualityDropTrigger(type="quality_drop", window=3600, margin=0.1, min_count=5))
    for i in range(6):
        _feedback(fs, 1.0, NOW - 5000 + i)
    _feedback(fs, -1.0, NOW - 10)
    assert trig.check(TriggerContext(now=NOW, feedback=fs)) is None


def test_schedule_fires_first_then_every_interval():
    trig = create_trigger(ScheduleTrigger(type="schedule", every=600))
    assert trig.check(TriggerContext(now=NOW, last_cycle_at=None)) is not None
    assert trig.check(TriggerContext(now=NOW, last_cycle_at=NOW - 599)) is None
    assert "600s since" in trig.check(TriggerContext(now=NOW, last_cycle_at=NOW - 600)).reason


WEATHER = ["what is the weather in paris today", "will it rain tomorrow in london", "forecast for berlin this week",
           "is it sunny in rome", "how cold is it in oslo tonight"]
CODE = ["write a python function to sort a list", "fix this segfault in my c code", "explain rust borrow checker errors",
        "how do i reverse a linked list in java", "refactor this javascript promise chain"]


def test_drift_fires_when_captured_prompts_change_topic(fs):
    trig = create_trigger(DriftTrigger(type="drift", threshold=0.1, min_prompts=20))
    cut = NOW - 1000
    for i in range(40):
        _exchange(fs, WEATHER[i % 5], cut - 500 + i)  # before the last cycle: the reference
    for i in range(40):
        _exchange(fs, WEATHER[(i + 2) % 5], cut + 10 + i)  # same kind of prompts after it
    assert trig.check(TriggerContext(now=NOW, feedback=fs, last_cycle_at=cut)) is None
    later = NOW - 400
    for i in range(60):
        _exchange(fs, CODE[i % 5], later + i)
    fired = trig.check(TriggerContext(now=NOW, feedback=fs, last_cycle_at=later))
    # reference = everything before `later` (weather), current = code questions
    assert fired is not None and fired.data["kl"] > 0.1 and "drifted" in fired.reason


def test_drift_against_a_reference_file(fs, tmp_path):
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"prompt": WEATHER[i % 5]}) + "\n" for i in range(30)))
    trig = create_trigger(DriftTrigger(type="drift", reference="ref.jsonl", min_prompts=20))
    for i in range(30):
        _exchange(fs, WEATHER[(i + 1) % 5], NOW - 100 + i)
    assert trig.check(TriggerContext(now=NOW, feedback=fs, base_dir=tmp_path)) is None
    for i in range(90):
        _exchange(fs, CODE[i % 5], NOW - 50 + i * 0.1)
    assert trig.check(TriggerContext(now=NOW, feedback=fs, base_dir=tmp_path)) is not None
