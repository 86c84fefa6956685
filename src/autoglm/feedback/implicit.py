"""Implicit feedback: what a key's next request says about the answer it got before.

Two signals, found when an exchange is captured (by the capture writer, off the request path), each
stored as a feedback row whose ``source`` says it is implicit, never confused with a rating a person gave:

* ``implicit:regeneration`` (rating :data:`REGENERATION_RATING`): the same key sends the same
  conversation again (same :func:`~autoglm.feedback.conversation.conv_hash`) within the window: the
  earlier answer was rejected. Each earlier exchange is rejected once.
* ``implicit:follow_up`` (rating :data:`FOLLOW_UP_RATING`): the new chat is an earlier exchange's
  conversation + that exchange's answer + a user turn that repeats the previous question (similarity
  >= :data:`REPEAT_SIMILARITY`, tag ``repeat``) or corrects the answer (it opens with a correction such
  as "no," or "that's wrong", tag ``correction``): it counts against the answer that was followed.

Knows the feedback store and the request shapes; not HTTP, redaction or export.
"""
from __future__ import annotations

import difflib
import re
import secrets
from typing import Any

from autoglm.feedback.conversation import answer_of, hash_messages, messages_of
from autoglm.feedback.store import Exchange, Feedback, FeedbackStore

__all__ = ["REGENERATION", "FOLLOW_UP", "REGENERATION_RATING", "FOLLOW_UP_RATING", "REPEAT_SIMILARITY",
           "detect", "is_repeat", "is_correction"]

REGENERATION, FOLLOW_UP = "implicit:regeneration", "implicit:follow_up"
REGENERATION_RATING = -1.0
FOLLOW_UP_RATING = -0.5
REPEAT_SIMILARITY = 0.8
_CORRECTION = re.compile(
    r"^\s*(no\b|nope\b|wrong\b|incorrect\b|that'?s (not|wrong|incorrect)|that is (not|wrong|incorrect)|"
    r"not (what|quite|correct|right)|you('re| are) wrong|actually\b|i (said|meant|asked)|try again)",
    re.IGNORECASE)


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def is_repeat(question: str, previous: str) -> bool:
    a, b = _norm(question), _norm(previous)
    if not a or not b:
        return False
    return a == b or difflib.SequenceMatcher(None, a, b).ratio() >= REPEAT_SIMILARITY


def is_correction(text: str) -> bool:
    return _CORRECTION.search(text) is not None


def _signal(prev: Exchange, choice: int, source: str, rating: float, by: Exchange, tags: list[str]) -> Feedback:
    return Feedback(id=f"fb-{secrets.token_hex(12)}", response_id=prev.id, choice_index=choice, key_id=prev.key_id,
                    source=source, rating=rating, comment=f"{source.split(':')[1]} in {by.id}", tags=tags,
                    created_at=by.created_at)


def detect(fs: FeedbackStore, ex: Exchange, request: dict[str, Any], window_s: float,
           stored: dict[str, Any] | None = None) -> list[Feedback]:
    """The implicit signals the new exchange ``ex`` gives earlier ones. ``request`` is as the client sent
    it (hashes are of the original text), ``stored`` as it is stored (redacted; answers are compared
    with the stored answers); the same when nothing is redacted."""
    since = ex.created_at - window_s
    out: list[Feedback] = []
    for prev in fs.find_conversation(ex.key_id, ex.conv_hash, since):
        if prev.id != ex.id and prev.created_at <= ex.created_at and not fs.has_feedback(prev.id, REGENERATION):
            out.extend(_signal(prev, c, REGENERATION, REGENERATION_RATING, ex, []) for c in range(prev.n_choices))
    messages = messages_of(request) if ex.kind == "chat" else None
    if not messages or len(messages) < 3:
        return out
    last, answer = messages[-1], messages[-2]
    if last["role"] != "user" or answer["role"] != "assistant":
        return out
    as_stored = messages_of(stored) if stored is not None else None
    if as_stored and len(as_stored) == len(messages):
        answer = as_stored[-2]
    earlier = messages[:-2]
    asked = next((m["content"] for m in reversed(earlier) if m["role"] == "user"), "")
    for prev in fs.find_conversation(ex.key_id, hash_messages(earlier), since):
        if prev.response is None or fs.has_feedback(prev.id, FOLLOW_UP):
            continue
        for c in range(prev.n_choices):
            if (answer_of(prev.response, c) or "").strip() != answer["content"].strip():
                continue
            tag = "correction" if is_correction(last["content"]) else "repeat" if is_repeat(last["content"], asked) \
                else None
            if tag is not None:
                out.append(_signal(prev, c, FOLLOW_UP, FOLLOW_UP_RATING, ex, [tag]))
    return out
