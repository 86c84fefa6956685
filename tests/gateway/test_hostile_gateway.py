"""The gateway against a hostile client and a failing database: admin fields, model restriction,
/health disclosure, PostgreSQL reconnect and outage (503, /health, recovery), durable usage, file modes,
secrets in query strings.

PostgreSQL is the real server; an outage is made by a TCP relay in front of it that this test stops
and starts (the store sees exactly what a dead network or server looks like).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from autoglm.gateway import Gateway, GatewaySettings
from autoglm.gateway import keys as keys_mod
from autoglm.gateway.store import StoreUnavailable, open_store
from autoglm.gateway.usage import query_usage
from tests.api.fake_engine import FakeEngine

ADMIN = {"Authorization": "Bearer admin-secret"}


def _app(store_url: str, tmp_path, **gw: object):
    engine = FakeEngine()
    gateway = Gateway.from_settings(GatewaySettings(store_url=store_url, admin_key="admin-secret",
                                                    usage_spool_dir=str(tmp_path / "spool"), **gw))
    return build_app({engine.model_name: engine}, ServerSettings(), gateway=gateway), gateway


@pytest.mark.parametrize("body, param", [
    ({"name": "a", "expires_at": 1e400}, "expires_at"),
    ({"name": "a", "expires_at": "tomorrow"}, "expires_at"),
    ({"name": "a", "expires_at": float("nan")}, "expires_at"),
    ({"name": "a", "expires_at": 1e14}, "expires_at"),
    ({"name": "a", "models": 5}, "models"),
    ({"name": "a", "models": [1, 2]}, "models"),
    ({"name": 5}, "name"),
    ({"name": "a\ud800"}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": "a", "rpm": 2**70}, "rpm"),
    ({"name": "a", "tpm": 1.5}, "tpm"),
])
def test_admin_fields_are_validated_before_anything_is_stored(tmp_path, body, param):
    import json

    app, gw = _app(str(tmp_path / "state.db"), tmp_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        raw = json.dumps(body, allow_nan=True).replace("Infinity", "1e400")
        r = c.post("/admin/keys", content=raw, headers={**ADMIN, "content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        assert c.get("/admin/keys", headers=ADMIN).json()["data"] == []  # nothing half-created
        for q in ("since=nan", "since=inf", "since=-1", "since=abc", "per=week"):
            r = c.get(f"/admin/usage?{q}", headers=ADMIN)
            assert r.status_code == 400 and r.json()["error"]["param"] in ("since", "per"), (q, r.text)
        assert c.get("/admin/usage?key=nobody", headers=ADMIN).status_code == 404
        ok = c.post("/admin/keys", json={"name": "good", "expires_at": "30d", "models": "fake, other"}, headers=ADMIN)
        assert ok.status_code == 201 and ok.json()["key"].startswith("agl-")
        assert ok.json()["models"] == ["fake", "other"]


def test_keys_list_survives_a_bad_row(tmp_path, capsys):
    from autoglm.cli.main import main

    url = str(tmp_path / "state.db")
    with open_store(url) as store:
        keys_mod.create_key(store, "fine")
        store.execute("UPDATE api_keys SET expires_at = ?", (float("inf"),))  # written by an older version
    assert main(["keys", "--store", url, "list"]) == 0
    assert "invalid" in capsys.readouterr().out


def test_model_item_follows_the_key_restriction(tmp_path):
    app, gw = _app(str(tmp_path / "state.db"), tmp_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        key = c.post("/admin/keys", json={"name": "limited", "models": ["other"]}, headers=ADMIN).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        assert c.get("/v1/models", headers=auth).json()["data"] == []
        r = c.get("/v1/models/fake", headers=auth)
        assert r.status_code == 404 and "fake" not in r.json()["error"]["message"].split("Available")[1]
        assert c.get("/v1/models/fake", headers=ADMIN).status_code == 200


def test_health_shows_details_only_to_keyholders(tmp_path):
    app, gw = _app(str(tmp_path / "state.db"), tmp_path)
    with TestClient(app, raise_server_exceptions=False) as c:
        key = c.post("/admin/keys", json={"name": "k"}, headers=ADMIN).json()["key"]
        anon = c.get("/health")
        assert anon.status_code == 200 and anon.json() == {"status": "ok"}
        full = c.get("/health", headers={"Authorization": f"Bearer {key}"}).json()
        assert "num_running" in full and full["state_store"] == "ok" and "fake" in full["models"]


def test_state_db_is_private(tmp_path):
    path = tmp_path / "new" / "state.db"
    open_store(str(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_api_key_in_query_is_redacted_from_uvicorn_access_log(caplog):
    from autoglm.monitoring.access_log import configure_access_log

    configure_access_log("off")
    logger = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logger.info('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", "/v1/models?api_key=agl-SECRET&x=1", "1.1", 200)
    assert "agl-SECRET" not in caplog.text and "api_key=***&x=1" in caplog.text


# -- PostgreSQL: reconnect, outage, durable usage -------------------------------------------------
class Relay:
    """A TCP relay 127.0.0.1:<port> -> PostgreSQL that can be cut (connections dropped, port closed)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self.start()

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(16)
        self.port = srv.getsockname()[1]
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        if self._server is not None:
            try:  # wakes the accept() of the relay thread; close() alone would leave the port listening
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
            self._server = None
        for s in self._conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self._conns = []


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def test_postgres_store_reconnects_after_its_session_is_killed(pg_url):
    import psycopg

    store = open_store(pg_url)
    try:
        keys_mod.create_key(store, "k")
        pid = store.execute("SELECT pg_backend_pid()")[0][0]
        with psycopg.connect(pg_url.split("?")[0], autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert [k.name for k in keys_mod.list_keys(store)] == ["k"]  # reconnected, no error
        assert store.execute("SELECT pg_backend_pid()")[0][0] != pid
    finally:
        store.close()


def test_postgres_outage_is_503_then_recovers_and_keeps_usage(pg_url, tmp_path):
    parts = urlsplit(pg_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    app, gw = _app(_via(pg_url, relay.port), tmp_path, usage_retry_interval=0.2)
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            key = c.post("/admin/keys", json={"name": "k"}, headers=ADMIN).json()["key"]
            auth = {"Authorization": f"Bearer {key}"}
            chat = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            assert c.post("/v1/chat/completions", json=chat, headers=auth).status_code == 200

            relay.cut()
            t = time.monotonic()
            r = c.post("/v1/chat/completions", json=chat, headers=auth)
            assert r.status_code == 503 and r.json()["error"]["code"] == "state_store_unavailable"
            assert time.monotonic() - t < 5  # fast, not a hang
            time.sleep(1.1)  # /health pings at most once a second
            health = c.get("/health", headers=ADMIN).json()
            assert health["state_store"] == "down" and health["status"] == "degraded"
            assert c.get("/admin/keys", headers=ADMIN).status_code == 503

            async def record_during_outage() -> None:  # a request that finishes while the store is down
                await gw.record_usage(None, "fake", 11, 7)

            c.portal.call(record_during_outage)
            assert gw.spool.pending == 1

            relay.start()  # the database is back on the same port
            deadline = time.monotonic() + 10
            while c.post("/v1/chat/completions", json=chat, headers=auth).status_code != 200:
                assert time.monotonic() < deadline, "the store did not recover by itself"
                time.sleep(0.2)
            while gw.spool.pending:
                assert time.monotonic() < deadline, "spooled usage was not stored"
                time.sleep(0.1)
            time.sleep(1.1)
            assert c.get("/health", headers=ADMIN).json()["state_store"] == "ok"
        with open_store(pg_url) as direct:
            rows = query_usage(direct, key="(open)")
            assert sum(r.prompt_tokens for r in rows) == 11 and sum(r.completion_tokens for r in rows) == 7
    finally:
        relay.cut()
        asyncio.run(gw.close())


def test_spooled_usage_of_a_dead_process_is_stored_at_the_next_start(tmp_path):
    from autoglm.gateway.usage_spool import UsageSpool

    spool_dir = tmp_path / "spool"
    url = str(tmp_path / "state.db")
    dead = UsageSpool(spool_dir)
    dead.add("-", "fake", 5, 3)
    dead._file.close()  # the process died: its lock is gone, its file stays
    dead._file = None
    gw = Gateway.from_settings(GatewaySettings(store_url=url, usage_spool_dir=str(spool_dir)))
    try:
        rows = query_usage(gw.store, key="(open)")
        assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [(5, 3)]
        assert not list(spool_dir.glob("usage-*.jsonl"))
    finally:
        asyncio.run(gw.close())


def test_redis_outage_does_not_lose_usage(tmp_path):
    """The limiter (Redis) failing at reconciliation must not stop usage from reaching the store."""
    gw = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "state.db"),
                                               usage_spool_dir=str(tmp_path / "spool")))

    async def broken(*_a: object, **_k: object) -> None:
        raise ConnectionError("redis is down")

    gw.limiter.reconcile = broken  # type: ignore[method-assign]
    try:
        asyncio.run(gw.record_usage(None, "fake", 4, 2))
        assert [(r.prompt_tokens, r.completion_tokens) for r in query_usage(gw.store)] == [(4, 2)]
    finally:
        asyncio.run(gw.close())


def test_store_unavailable_is_fast_while_down(pg_url):
    parts = urlsplit(pg_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    store = open_store(_via(pg_url, relay.port))
    try:
        relay.cut()
        with pytest.raises(StoreUnavailable):
            store.ping()
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.ping()  # within the retry window: no new connection attempt
        assert time.monotonic() - t < 0.5
    finally:
        store.close()
        relay.cut()
