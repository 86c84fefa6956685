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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`autoglm-risk demo` at CI size, run once as a real process: (working directory, summary, output)."""
    import json
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("risk-demo")
    wd, summary = root / "work", root / "summary.json"
    env = {**os.environ, "AUTOGLM_HOME": str(wd / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "autoglm_risk", "demo", "--workdir", str(wd), "--users", "400", "--days", "16",
           "--trials", "1", "--estimators", "40", "--stream", "160", "--fraud-rate", "3", "--reviews", "4", "--show", "5",
           "--summary-json", str(summary)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return wd, json.loads(summary.read_text()), r.stdout
