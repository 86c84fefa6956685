"""A state store per backend (SQLite file, PostgreSQL database of its own) with the gateway's and the
feedback tables migrated."""
from __future__ import annotations

import pytest

from autoglm.feedback.store import FeedbackStore
from autoglm.gateway.store import open_store
from tests.services import fresh_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def fs(request, tmp_path):
    if request.param == "sqlite":
        store = open_store(tmp_path / "state.db")
        yield FeedbackStore(store)
        store.close()
        return
    with fresh_pg_database("autoglm_fb") as url:
        store = open_store(url)
        yield FeedbackStore(store)
        store.close()


@pytest.fixture()
def sqlite_fs(tmp_path):
    store = open_store(tmp_path / "state.db")
    yield FeedbackStore(store)
    store.close()
