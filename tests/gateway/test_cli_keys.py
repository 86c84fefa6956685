"""`autoglm keys` as a user runs it: a real subprocess against each store backend."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from autoglm.cli.keys import parse_expires
from autoglm.errors import ConfigError
from autoglm.gateway.store import open_store
from autoglm.gateway.usage import add_usage
from tests.gateway.conftest import PYTHON


def autoglm(*args: str, home, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "AUTOGLM_HOME": str(home), **(env or {})}
    full_env.pop("AUTOGLM_DEBUG", None)
    return subprocess.run([PYTHON, "-m", "autoglm", *args], capture_output=True, text=True, env=full_env, timeout=60)


def test_create_list_revoke_usage(store_url, tmp_path):
    created = autoglm("keys", "--store", store_url, "create", "--name", "ci", "--models", "glm,demo",
                      "--rpm", "5", "--tpm", "1000", "--expires", "30d", home=tmp_path)
    assert created.returncode == 0, created.stderr
    (plaintext,) = [w for w in created.stdout.split() if w.startswith("agl-") and len(w) > 40]
    both = created.stdout + created.stderr
    assert both.count(plaintext) == 1  # printed once
    assert "only once" in created.stderr

    listed = autoglm("keys", "list", "--store", store_url, home=tmp_path)
    assert listed.returncode == 0 and "ci" in listed.stdout and "glm,demo" in listed.stdout
    as_json = autoglm("keys", "--store", store_url, "list", "--json", home=tmp_path)
    (row,) = json.loads(as_json.stdout)
    assert (row["name"], row["models"], row["rpm"], row["tpm"], row["active"]) == ("ci", ["glm", "demo"], 5, 1000, True)
    assert row["expires_at"] and row["created_at"] and row["revoked_at"] is None
    for out in (listed.stdout, as_json.stdout):
        assert plaintext not in out and plaintext[12:] not in out and "hash" not in out.lower()

    with open_store(store_url) as s:
        add_usage(s, row["id"], "glm", 12, 3)
    usage = autoglm("keys", "--store", store_url, "usage", "--key", "ci", "--json", home=tmp_path)
    assert usage.returncode == 0, usage.stderr
    assert [(u["key"], u["model"], u["requests"], u["total_tokens"]) for u in json.loads(usage.stdout)] == [("ci", "glm", 1, 15)]

    revoked = autoglm("keys", "--store", store_url, "revoke", "ci", home=tmp_path)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    after = json.loads(autoglm("keys", "--store", store_url, "list", "--json", home=tmp_path).stdout)
    assert after[0]["revoked_at"] and after[0]["active"] is False


def test_default_store_is_autoglm_home(tmp_path):
    assert autoglm("keys", "create", "--name", "a", home=tmp_path).returncode == 0
    assert (tmp_path / "state.db").is_file()
    table = autoglm("keys", "list", home=tmp_path).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "ID", "PREFIX"] and "active" in table


@pytest.mark.parametrize(
    "args, match",
    [
        (["create", "--name", "x", "--expires", "soon"], "--expires 'soon' is neither a duration"),
        (["create", "--name", "x", "--expires", "2001-01-01"], "in the past"),
        (["create", "--name", "x", "--rpm", "0"], "rpm must be a positive integer"),
        (["revoke", "ghost"], "no API key has the name or id 'ghost'"),
        (["list", "--store", "mysql://h/db"], "scheme 'mysql'"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, args, match):
    r = autoglm("keys", *args, home=tmp_path)
    assert r.returncode != 0 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    assert not (tmp_path / "state.db").exists() or args[0] == "revoke"  # bad flags create nothing


def test_parse_expires():
    now = 1_000_000.0
    assert parse_expires("30d", now) == now + 30 * 86400
    assert parse_expires("12h", now) == now + 12 * 3600
    assert parse_expires("2w", now) == now + 14 * 86400
    assert parse_expires("2100-01-31", now) == 4105036800.0
    assert parse_expires("2100-01-31T01:00:00+01:00", now) == 4105036800.0
    with pytest.raises(ConfigError):
        parse_expires("0d", now)
    with pytest.raises(ConfigError):
        parse_expires(time.strftime("%Y-%m-%d", time.gmtime(0)))
