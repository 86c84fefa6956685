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


@pytest.fixture
def pg_mlflow_url() -> Iterator[str]:
    """A fresh database for an MLflow tracking store (its own: Optuna and MLflow both keep alembic tables)."""
    with fresh_pg_database("autoglm_mlflow") as url:
        yield url
