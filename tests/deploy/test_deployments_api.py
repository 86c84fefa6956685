"""Who may use ``/admin/deployments`` on a server without a gateway: on an open server only callers on the
loopback interface (403 otherwise, an OpenAI error object); with a static ``--api-key``, that key (401
without it). In process (the app built by ``build_app``; no engine is started: listing needs none)."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from autoglm.api.app import build_app
from autoglm.config import EngineSettings, ServerSettings
from autoglm.engine.base import create_engine


def _get(app, client_host: str, headers: dict | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as c:
            return await c.get("/admin/deployments", headers=headers or {})

    return asyncio.run(go())


@pytest.fixture()
def engines():
    return {"demo": create_engine(EngineSettings(model="autoglm-demo", served_model_name="demo", engine="transformers"))}


def test_an_open_server_answers_loopback_callers_only(engines):
    app = build_app(engines, ServerSettings(metrics=False), manage_engines=False)
    r = _get(app, "127.0.0.1")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["data"]
    assert entry["name"] == "demo" and entry["source"] == "autoglm-demo" and entry["engine"] == "transformers"
    assert app.state.deployments.list() == r.json()["data"]
    far = _get(app, "10.1.2.3")
    assert far.status_code == 403 and far.json()["error"]["code"] == "admin_loopback_only"


def test_a_static_key_is_required_when_the_server_has_one(engines):
    app = build_app(engines, ServerSettings(metrics=False, api_keys=["k-123"]), manage_engines=False)
    assert _get(app, "127.0.0.1").status_code == 401
    assert _get(app, "10.1.2.3", {"Authorization": "Bearer k-123"}).status_code == 200
