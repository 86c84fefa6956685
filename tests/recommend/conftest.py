"""Shared by the recommend tests: one default identifier (hashing encoder) per session."""
from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def identifier(tmp_path_factory):
    from autoglm.recommend.encoders import HashingEncoder
    from autoglm.recommend.identify import TaskIdentifier
    from autoglm.recommend.taxonomy import load_taxonomy

    return TaskIdentifier(load_taxonomy(), [HashingEncoder()], cache=tmp_path_factory.mktemp("index"))


# every state store backend (SQLite file, PostgreSQL schema) for the quality tables
from tests.gateway.conftest import pg_database, pg_url, store_url  # noqa: E402,F401
