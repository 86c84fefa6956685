"""Fixtures of the risk application's tests: one small generated dataset, written once to DuckDB and once
to a PostgreSQL schema of its own (dropped at the end)."""
from __future__ import annotations

import os
import uuid

import pytest

PG_URL = os.environ.get("AUTOGLM_RISK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def small_data():
    from autoglm_risk.generate import generate

    return generate(n_users=300, days=14, seed=11, fraud_rate=3.0)


@pytest.fixture(scope="session")
def duck_store(small_data, tmp_path_factory):
    from autoglm_risk.store import open_store, write_dataset

    store = open_store(tmp_path_factory.mktemp("risk-duck") / "risk.duckdb")
    write_dataset(store, small_data.tables())
    yield store
    store.close()


@pytest.fixture(scope="session")
def pg_store(small_data):
    from autoglm.errors import ConfigError

    from autoglm_risk.store import open_store, write_dataset

    schema = "risk_test_" + uuid.uuid4().hex[:10]
    try:
        store = open_store(f"{PG_URL}?schema={schema}")
    except ConfigError as e:
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}: {e}")
    write_dataset(store, small_data.tables())
    yield store
    store.drop_schema()
