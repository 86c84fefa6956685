"""API keys on every store backend: hashed, verified in constant time, revocable, expiring, scoped."""
from __future__ import annotations

import re
import time

import pytest

from autoglm.errors import ConfigError
from autoglm.gateway import keys
from autoglm.gateway.keys import KeyNotFoundError


def test_create_returns_a_strong_key_once(store):
    plaintext, info = keys.create_key(store, "alice", models=["glm-4", "demo"], rpm=10, tpm=1000)
    assert re.fullmatch(r"agl-[A-Za-z0-9_-]{43}", plaintext)
    assert plaintext.startswith(info.prefix) and len(info.prefix) == 12
    assert info.models == ("glm-4", "demo") and (info.rpm, info.tpm) == (10, 1000)
    assert "key_hash" not in info.to_dict() and plaintext not in repr(info)
    other, _ = keys.create_key(store, "bob")
    assert other != plaintext


def test_verify_accepts_only_the_exact_key(store):
    plaintext, info = keys.create_key(store, "alice")
    assert keys.verify(store, plaintext) == info
    assert keys.verify(store, plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert keys.verify(store, info.prefix) is None  # the display prefix alone is not a key
    assert keys.verify(store, "sk-" + plaintext[4:]) is None
    assert keys.verify(store, "") is None and keys.verify(store, None) is None


def test_hash_is_sha256_or_hmac_with_pepper(store):
    plaintext, info = keys.create_key(store, "peppered", pepper="server-secret")
    (stored,) = store.execute("SELECT key_hash FROM api_keys WHERE id = ?", (info.id,))[0]
    assert stored == keys.hash_key(plaintext, "server-secret") != keys.hash_key(plaintext)
    assert keys.verify(store, plaintext, pepper="server-secret") == info
    assert keys.verify(store, plaintext) is None  # a server without the pepper cannot verify it
    assert keys.verify(store, plaintext, pepper="other") is None


def test_revoke_by_name_or_id(store):
    p1, k1 = keys.create_key(store, "one")
    p2, k2 = keys.create_key(store, "two")
    assert keys.revoke_key(store, "one").revoked_at is not None
    revoked = keys.revoke_key(store, k2.id)
    assert revoked.name == "two" and not revoked.is_active()
    assert keys.verify(store, p1) is None and keys.verify(store, p2) is None
    first = revoked.revoked_at
    assert keys.revoke_key(store, "two").revoked_at == first  # idempotent
    with pytest.raises(KeyNotFoundError, match="'nobody'.*one, two"):
        keys.revoke_key(store, "nobody")


def test_expired_key_fails(store):
    now = time.time()
    plaintext, info = keys.create_key(store, "short", expires_at=now + 60)
    assert keys.verify(store, plaintext, now=now + 59) == info
    assert keys.verify(store, plaintext, now=now + 61) is None
    with pytest.raises(ConfigError, match="in the past"):
        keys.create_key(store, "late", expires_at=now - 1)


def test_list_keys_and_has_keys(store):
    assert not keys.has_keys(store) and keys.list_keys(store) == []
    _, a = keys.create_key(store, "a", now=1.0e9 + 1)
    _, b = keys.create_key(store, "b", now=1.0e9 + 2)
    keys.revoke_key(store, "a")
    assert [k.name for k in keys.list_keys(store)] == ["a", "b"]
    assert [k.name for k in keys.list_keys(store, include_revoked=False)] == ["b"]
    assert keys.has_keys(store)  # revoked keys still count: revoking the last key must not open the gateway


def test_model_scope(store):
    _, scoped = keys.create_key(store, "scoped", models=["glm-4"])
    _, everything = keys.create_key(store, "all")
    assert scoped.allows_model("glm-4") and not scoped.allows_model("other")
    assert everything.allows_model("anything")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": " "}, "non-empty --name"),
        ({"name": "x", "rpm": 0}, "rpm must be a positive integer.*0"),
        ({"name": "x", "tpm": -5}, "tpm must be a positive integer.*-5"),
        ({"name": "x", "models": [" ", ""]}, "names no model"),
    ],
)
def test_bad_create_arguments(store, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        keys.create_key(store, **kwargs)


def test_duplicate_name_is_refused(store):
    keys.create_key(store, "dup")
    with pytest.raises(ConfigError, match="'dup' already exists"):
        keys.create_key(store, "dup")


def test_admin_key_comparison():
    assert keys.check_admin_key("adm-secret", "adm-secret")
    assert not keys.check_admin_key("adm-secreT", "adm-secret")
    assert not keys.check_admin_key("", "adm-secret") and not keys.check_admin_key(None, "adm-secret")
    assert not keys.check_admin_key("anything", None)  # no admin key configured: nobody is admin
