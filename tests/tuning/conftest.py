"""Fixtures for the tuning suite: fresh PostgreSQL databases (dropped after each test)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import fresh_pg_database


@pytest.fixture
def pg_study_url() -> Iterator[str]:
    """A fresh database for an Optuna study."""
    with fresh_pg_database("autoglm_study") as url:
        yield url

