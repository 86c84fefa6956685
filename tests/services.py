"""Real services the suite uses when they answer: PostgreSQL (127.0.0.1:5432, user postgres) and Redis.

Absent, their tests skip with the reason, except when ``CI`` is set, where they fail.
:func:`fresh_pg_database` gives a database of its own, dropped afterwards.
"""
from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_HOST, PG_USER = "127.0.0.1", "postgres"
PG_PORT = int(os.environ.get("AUTOGLM_TEST_PG_PORT", "5432"))


def unavailable(service: str, why: str) -> None:
    message = f"{service} is not available ({why})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI requires it")
    pytest.skip(message)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """Create a database named ``<prefix>_<random>``; yield its URL; drop it on exit."""
    if not port_open(PG_HOST, PG_PORT):
        unavailable("PostgreSQL", f"nothing listens on {PG_HOST}:{PG_PORT}")
    try:
        import psycopg
    except ImportError:
        unavailable("PostgreSQL", "psycopg is not installed: pip install 'autoglm[gateway]'")
    admin_url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        unavailable("PostgreSQL", str(exc).strip())
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
