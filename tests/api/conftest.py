from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from tests.api.fake_engine import FakeEngine


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine):
    app = build_app({engine.model_name: engine}, ServerSettings())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
