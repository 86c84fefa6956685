"""Fixtures for the tuning suite: a fresh PostgreSQL database per test that needs one (dropped after)."""
from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.gateway.conftest import PG_HOST, PG_PORT, PG_USER, _port_open, _unavailable


def _database(kind: str) -> Iterator[str]:
    if not _port_open(PG_HOST, PG_PORT):
        _unavailable("PostgreSQL", f"nothing listens on {PG_HOST}:{PG_PORT}")
    import psycopg

    admin = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
    name = f"autoglm_{kind}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        _unavailable("PostgreSQL", str(exc).strip())
    yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_study_url() -> Iterator[str]:
    """A fresh database for an Optuna study."""
    yield from _database("study")


@pytest.fixture
def pg_mlflow_url() -> Iterator[str]:
    """A fresh database for an MLflow tracking store (its own: Optuna and MLflow both keep alembic tables)."""
    yield from _database("mlflow")
