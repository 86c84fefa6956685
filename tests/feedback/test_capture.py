"""The capture writer and the routes in-process (a scripted engine at the engine boundary, a real SQLite
gateway store): capture off by default (409), stored redacted when on, an over-large exchange kept
without its texts (409 when rated), feedback committed before 201, retention purging, open mode keyed."""
from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from autoglm.feedback.capture import CaptureService, CaptureSettings
from autoglm.feedback.store import Exchange, Feedback
from autoglm.gateway import Gateway, GatewaySettings
from tests.api.fake_engine import FakeEngine


def _client(tmp_path, capture: CaptureSettings | None):
    engine = FakeEngine(reply="Reach me at bot@example.org.")
    gateway = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "state.db"), cache_backend="none",
                                                    usage_spool_dir=str(tmp_path / "spool")))
    app = build_app({engine.model_name: engine}, ServerSettings(capture=capture), gateway=gateway)
    return TestClient(app, raise_server_exceptions=False), app, gateway


def _chat(c, content: str = "hi jane@example.com", **kw):
    r = c.post("/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": content}],
                                             "max_tokens": 64, **kw})
    assert r.status_code == 200, r.text
    return r


def test_capture_is_off_by_default(tmp_path):
    client, app, gateway = _client(tmp_path, None)
    with client as c:
        rid = _chat(c).json()["id"]
        r = c.post("/v1/feedback", json={"id": rid, "thumbs": "up"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "capture_off"
        assert "capture is off" in r.json()["error"]["message"]
        assert not hasattr(app.state, "response_tap")
    assert gateway.store.execute("SELECT name FROM sqlite_master WHERE name = 'fb_exchanges'") == []


def test_open_mode_capture_stores_redacted_and_rates(tmp_path):
    client, app, gateway = _client(tmp_path, CaptureSettings(enabled=True))
    with client as c:
        rid = _chat(c).json()["id"]
        r = c.post("/v1/feedback", json={"id": rid, "rating": 0.25, "comment": "ok"})
        assert r.status_code == 201, r.text
        fs = app.state.feedback.feedback_store()
        assert [f.rating for f in fs.list_feedback()] == [0.25]  # committed before the 201
        ex = fs.get_exchange(rid)
        assert ex.key_id == "-" and ex.redactions == 2  # open mode; the user's and the bot's address
        text = str(ex.request) + str(ex.response)
        assert "example.com" not in text and "example.org" not in text and text.count("[email]") == 2


def test_an_over_large_exchange_is_kept_without_texts(tmp_path):
    client, app, gateway = _client(tmp_path, CaptureSettings(enabled=True, max_exchange_bytes=200))
    with client as c:
        rid = _chat(c, "x" * 500).json()["id"]
        asyncio.run(_flush(app.state.feedback))
        r = c.post("/v1/feedback", json={"id": rid, "thumbs": "down"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "response_not_stored"
        ex = app.state.feedback.feedback_store().get_exchange(rid)
        assert ex.dropped == "too_large" and ex.request is None and ex.response is None


async def _flush(service: CaptureService) -> None:
    await service.flush()


def test_streamed_exchanges_are_captured_and_the_queue_drains_at_shutdown(tmp_path):
    client, app, gateway = _client(tmp_path, CaptureSettings(enabled=True))
    with client as c:
        with c.stream("POST", "/v1/chat/completions", json={"model": "fake", "stream": True, "max_tokens": 64,
                                                             "messages": [{"role": "user", "content": "hello"}]}) as r:
            body = "".join(r.iter_text())
        rid = body.split('"id":"', 1)[1].split('"', 1)[0]
    fs = app.state.feedback.feedback_store()  # the app is shut down: its lifespan wrote what was queued
    ex = fs.get_exchange(rid)
    assert ex is not None and ex.response["choices"][0]["message"]["content"] == "Reach me at [email]."


def test_retention_purge_runs_in_the_writer(sqlite_fs):
    service = CaptureService(sqlite_fs.store, CaptureSettings(enabled=True, retention_days=1, purge_interval_s=0.05))
    old = Exchange("old", "k", "chat", "m", time.time() - 3 * 86400, 1, "c", {}, {})
    sqlite_fs.put_exchange(old, "{}", "{}")
    sqlite_fs.add_feedback(Feedback("fb-old", "old", 0, "k", "explicit", rating=1.0, created_at=time.time()))

    async def go() -> None:
        service.submit_exchange("k", b'{"messages": []}', {"id": "new", "object": "chat.completion", "choices": []})
        await service.flush()

    asyncio.run(go())
    deadline = time.monotonic() + 5
    while sqlite_fs.get_exchange("old") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    service.close()
    assert sqlite_fs.get_exchange("old") is None and sqlite_fs.list_feedback() == []
    assert sqlite_fs.get_exchange("new") is not None


def test_settings_reject_unknown_redactions():
    from autoglm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown redaction"):
        CaptureSettings(redact=("ssn",))
    assert CaptureSettings(keys=("a",)).captures("a") and not CaptureSettings(keys=("a",)).captures(None)
