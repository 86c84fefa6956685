"""Implicit signals: a regeneration rejects the earlier answer, a repeated or corrected follow-up counts
against it; a new question, another key or an old exchange says nothing."""
from __future__ import annotations

import json
import time

import pytest

from autoglm.feedback.conversation import conv_hash
from autoglm.feedback.implicit import FOLLOW_UP, REGENERATION, detect, is_correction, is_repeat
from autoglm.feedback.store import Exchange

Q = [{"role": "user", "content": "What is the capital of Australia?"}]
A = "Sydney."


def capture(fs, rid: str, messages: list, answer: str = A, key: str = "k1", at: float | None = None):
    request = {"model": "m", "messages": messages}
    response = {"id": rid, "object": "chat.completion", "choices": [{"index": 0, "message": {"content": answer}}]}
    e = Exchange(id=rid, key_id=key, kind="chat", model="m", created_at=at or time.time(), n_choices=1,
                 conv_hash=conv_hash("chat", request), request=request, response=response)
    fs.put_exchange(e, json.dumps(request), json.dumps(response))
    signals = detect(fs, e, request, window_s=600)
    for s in signals:
        fs.add_feedback(s)
    return signals


def test_regeneration_rejects_the_earlier_answer_once(sqlite_fs):
    assert capture(sqlite_fs, "r1", Q) == []
    first = capture(sqlite_fs, "r2", Q, "Canberra.")
    assert [(s.response_id, s.source, s.rating) for s in first] == [("r1", REGENERATION, -1.0)]
    second = capture(sqlite_fs, "r3", Q, "Perth.")
    assert [s.response_id for s in second] == ["r2"]  # r1 was already rejected


def test_regeneration_needs_the_same_key_and_the_window(sqlite_fs):
    capture(sqlite_fs, "r1", Q, at=time.time() - 3600)
    assert capture(sqlite_fs, "r2", Q, key="k2") == []  # another key asking the same thing
    assert capture(sqlite_fs, "r3", Q) == []  # r1 is outside the 600 s window


@pytest.mark.parametrize("follow,tag", [
    ("What is the capital of Australia??", "repeat"),
    ("No, that's wrong. Try again.", "correction"),
])
def test_follow_up_that_repeats_or_corrects(sqlite_fs, follow, tag):
    capture(sqlite_fs, "r1", Q)
    signals = capture(sqlite_fs, "r2", [*Q, {"role": "assistant", "content": A}, {"role": "user", "content": follow}])
    assert [(s.response_id, s.source, s.tags) for s in signals] == [("r1", FOLLOW_UP, [tag])]


def test_follow_up_with_a_new_question_or_another_answer_is_quiet(sqlite_fs):
    capture(sqlite_fs, "r1", Q)
    thanks = [*Q, {"role": "assistant", "content": A}, {"role": "user", "content": "And of New Zealand?"}]
    assert capture(sqlite_fs, "r2", thanks) == []
    edited = [*Q, {"role": "assistant", "content": "Canberra."}, {"role": "user", "content": "No, wrong."}]
    assert capture(sqlite_fs, "r3", edited) == []  # not the answer r1 gave


def test_repeat_and_correction_heuristics():
    assert is_repeat("what's the capital of australia", "What is the capital of Australia?")
    assert not is_repeat("thanks!", "What is the capital of Australia?")
    assert is_correction("Actually it is Canberra") and is_correction("that's not right")
    assert not is_correction("Nothing else, thanks") and not is_correction("Now tell me more")
