"""The feedback tables on SQLite and PostgreSQL: migrations beside the gateway's, reads, stats, purging."""
from __future__ import annotations

import time

from autoglm.feedback.store import Exchange, Feedback, FeedbackStore, migrate_feedback, parse_since


def ex(i: str, at: float, key: str = "k1", size: int = 100, conv: str = "c") -> Exchange:
    return Exchange(id=i, key_id=key, kind="chat", model="m", created_at=at, n_choices=1, conv_hash=conv,
                    request={"messages": [{"role": "user", "content": "q"}]},
                    response={"choices": [{"index": 0, "message": {"content": "a"}}]}, bytes=size)


def put(fs: FeedbackStore, e: Exchange) -> None:
    import json

    fs.put_exchange(e, json.dumps(e.request), json.dumps(e.response))


def test_migrations_apply_once_beside_the_gateways(fs):
    assert migrate_feedback(fs.store) == []  # the fixture migrated already
    assert fs.store.schema_version() >= 1  # the gateway's own versions are untouched
    assert fs.store.execute("SELECT MAX(version) FROM feedback_schema_version")[0][0] == 1


def test_round_trip_list_and_stats(fs):
    now = time.time()
    put(fs, ex("chatcmpl-1", now - 10))
    assert fs.get_exchange("chatcmpl-1").response["choices"][0]["message"]["content"] == "a"
    assert fs.get_exchange("nope") is None
    fs.add_feedback(Feedback("fb-1", "chatcmpl-1", 0, "k1", "explicit", rating=1.0, tags=["x"], created_at=now - 5))
    fs.add_feedback(Feedback("fb-2", "chatcmpl-1", 0, "k1", "implicit:regeneration", rating=-1.0, created_at=now))
    fs.add_feedback(Feedback("fb-3", "chatcmpl-1", 0, "k1", "explicit", correction="b", created_at=now))
    assert [f.id for f in fs.list_feedback()] == ["fb-1", "fb-2", "fb-3"]
    assert [f.id for f in fs.list_feedback(source="explicit", since=now - 1)] == ["fb-3"]
    assert fs.list_feedback()[0].tags == ["x"]
    st = fs.stats()
    assert st["feedback"] == 3 and st["corrections"] == 1 and st["exchanges"] == 1
    assert st["by_source"]["explicit"]["positive"] == 1 and st["by_source"]["implicit:regeneration"]["negative"] == 1
    assert fs.has_feedback("chatcmpl-1", "implicit:regeneration") and not fs.has_feedback("chatcmpl-1", "other")


def test_purge_by_age_and_by_size_takes_feedback_along(fs):
    now = time.time()
    for i, age in enumerate([100, 50, 10, 1]):
        put(fs, ex(f"e{i}", now - age, size=1000))
    fs.add_feedback(Feedback("fb-old", "e0", 0, "k1", "explicit", rating=1.0, created_at=now))
    assert fs.purge(older_than=now - 60) == 1
    assert fs.get_exchange("e0") is None and fs.list_feedback() == []
    assert fs.purge(max_bytes=2500) == 1  # 3000 bytes kept -> the oldest goes
    assert [fs.get_exchange(i) is not None for i in ("e1", "e2", "e3")] == [False, True, True]
    assert fs.purge(older_than=now - 60, max_bytes=10_000) == 0  # nothing more to do


def test_parse_since():
    assert parse_since(None) is None
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2026-01-31") == 1_769_817_600.0
