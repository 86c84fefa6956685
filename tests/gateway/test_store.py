"""State store conformance: every backend migrates once, keeps data across reopening, stores no secret."""
from __future__ import annotations

import subprocess
import textwrap

import pytest

from autoglm.errors import ConfigError
from autoglm.gateway import keys
from autoglm.gateway.store import MIGRATIONS, open_store, redact_url
from autoglm.gateway.usage import add_usage, query_usage
from tests.gateway.conftest import PYTHON


def test_migrations_recorded_and_idempotent(store):
    assert store.schema_version() == MIGRATIONS[-1][0]
    assert store.migrate() == []  # second run: nothing to do
    rows = store.execute("SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == [m[0] for m in MIGRATIONS]


def test_fresh_store_applies_every_migration(store_url):
    s = open_store(store_url, migrate=False)
    try:
        assert s.migrate() == [m[0] for m in MIGRATIONS]
        assert s.migrate() == []
    finally:
        s.close()


def test_two_processes_migrate_at_once(store_url):
    script = textwrap.dedent(f"""
        import sys
        from autoglm.gateway.store import open_store
        s = open_store({store_url!r}, migrate=False)
        sys.stdin.readline()  # start together
        print(s.migrate()); s.close()
    """)
    procs = [subprocess.Popen([PYTHON, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate("go\n", timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    applied = sorted(o[0].strip() for o in outs)
    assert applied == ["[1]", "[]"]  # exactly one process applied the migration
    with open_store(store_url) as s:
        assert s.execute("SELECT COUNT(*) FROM schema_version")[0][0] == len(MIGRATIONS)


def test_keys_and_usage_survive_reopen(store_url):
    with open_store(store_url) as s:
        plaintext, info = keys.create_key(s, "ci-bot", models=["glm"], rpm=7)
        add_usage(s, info.id, "glm", 10, 3)
    with open_store(store_url) as s:  # a restart
        again = keys.verify(s, plaintext)
        assert again == info
        (row,) = query_usage(s)
        assert (row.key, row.model, row.requests, row.prompt_tokens, row.completion_tokens) == ("ci-bot", "glm", 1, 10, 3)


def test_plaintext_appears_nowhere_in_the_dump(store):
    plaintext, info = keys.create_key(store, "secret-holder")
    dump = store.dump()
    assert info.id in dump and info.prefix in dump  # the dump really holds the row
    assert plaintext not in dump
    assert plaintext[len(info.prefix):] not in dump  # not even the secret tail


def test_usage_adds_up_per_hour_and_day(store):
    _, info = keys.create_key(store, "u")
    day = 1_700_006_400  # a UTC midnight
    add_usage(store, info.id, "a", 5, 1, now=day + 10)
    add_usage(store, info.id, "a", 5, 1, now=day + 20)
    add_usage(store, info.id, "a", 1, 1, now=day + 7200)
    add_usage(store, info.id, "b", 2, 2, now=day + 30)
    add_usage(store, None, "a", 1, 0, now=day + 40)
    by_day = query_usage(store, key="u", model="a")
    assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in by_day] == [(3, 11, 3)]
    by_hour = query_usage(store, key="u", model="a", per="hour")
    assert [(r.requests, r.total_tokens) for r in by_hour] == [(2, 12), (1, 2)]
    assert {(r.key, r.model) for r in query_usage(store)} == {("u", "a"), ("u", "b"), ("(open)", "a")}
    with pytest.raises(ConfigError, match="'week'"):
        query_usage(store, per="week")


def test_unknown_scheme_and_memory_sqlite_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="'mysql'.*sqlite:///"):
        open_store("mysql://u:pw@h/db")
    with pytest.raises(ConfigError, match="lose every key"):
        open_store("sqlite://:memory:")


def test_default_store_is_sqlite_in_autoglm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path))
    with open_store() as s:
        assert s.schema_version() == MIGRATIONS[-1][0]
    assert (tmp_path / "state.db").is_file()


def test_unreachable_postgres_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/x.*server is running") as info:
        open_store("postgresql://u:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in str(info.value)


def test_redact_url():
    assert redact_url("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact_url("/plain/path.db") == "/plain/path.db"
