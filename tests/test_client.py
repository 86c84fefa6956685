"""``autoglm.Client`` on its own: lazy export, error objects, connection errors, URL handling.

The SDK against a real server (every resource group) is tests/api/test_admin_api.py; here a real
in-process app (``build_app`` with a fake engine) answers through starlette's TestClient (an httpx client).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

import autoglm
from autoglm.client import APIConnectionError, APIError, Client
from autoglm.errors import AutoGLMError
from tests.conftest import free_port


def test_importing_autoglm_stays_light_and_client_is_exported_lazily():
    code = ("import sys, autoglm; assert 'autoglm.client' not in sys.modules; c = autoglm.Client; "
            "assert c.__module__ == 'autoglm.client' and 'httpx' not in sys.modules, 'httpx'; "
            "assert not any(m in sys.modules for m in ('torch', 'fastapi', 'mlflow', 'optuna')); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert autoglm.Client is Client and "Client" in autoglm.__all__
    with pytest.raises(AttributeError):
        autoglm.NoSuchThing  # noqa: B018


def test_base_url_from_the_environment_and_the_openai_style_v1_suffix(monkeypatch):
    monkeypatch.setenv("AUTOGLM_SERVER", "http://10.0.0.9:9000/v1/")
    monkeypatch.setenv("AUTOGLM_API_KEY", "k-env")
    c = Client()
    assert c.base_url == "http://10.0.0.9:9000" and c.api_key == "k-env"
    assert Client("http://h:1", api_key="k").api_key == "k"
    c.close()


@pytest.fixture()
def asgi_client():
    from autoglm.api.app import build_app
    from autoglm.config import ServerSettings
    from tests.api.fake_engine import FakeEngine

    engine = FakeEngine()
    app = build_app({engine.model_name: engine}, ServerSettings())
    from fastapi.testclient import TestClient

    # a loopback client address: the open server's admin routes answer it
    with TestClient(app, base_url="http://t", client=("127.0.0.1", 1234)) as http:
        with Client("http://t", http_client=http) as c:
            yield c


def test_errors_carry_status_code_message_and_param(asgi_client):
    with pytest.raises(APIError) as err:
        asgi_client.pipelines.validate(None, path=None)  # neither path nor yaml
    e = err.value
    assert (e.status, e.code, e.param) == (400, "invalid_value", "yaml") and "exactly one of" in e.message
    assert isinstance(e, AutoGLMError) and str(e).startswith("400 invalid_value (param yaml): ")
    with pytest.raises(APIError) as err:
        asgi_client.request("GET", "/admin/no-such-route")
    assert err.value.status == 404 and err.value.code == "not_found"
    answer = asgi_client.pipelines.validate("name: x\n")
    assert answer["ok"] is False and answer["errors"][0]["line"] == 1


def test_an_unreachable_server_is_one_connection_error():
    with Client(f"http://127.0.0.1:{free_port()}", timeout=2) as c:
        with pytest.raises(APIConnectionError) as err:
            c.pipelines.list()
    assert err.value.status == 0 and "cannot reach" in err.value.message
