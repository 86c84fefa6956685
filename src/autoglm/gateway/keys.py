"""API keys: create, verify, list, revoke; plus the admin key check.

A key is ``agl-`` followed by 43 url-safe characters from :mod:`secrets` (256 bits). The store keeps
only a hash of it (SHA-256, or HMAC-SHA-256 with a server-side pepper when one is configured) and a
short non-secret prefix (``agl-`` + 8 characters) for display and lookup. The plaintext is returned
once by :func:`create_key` and never stored or logged. :func:`verify` looks rows up by prefix and
compares hashes with :func:`hmac.compare_digest`.

Every field of a new key is validated here (``check_*``), for the CLI and the admin API alike, before
anything is stored: a name of 1..64 printable characters, models as a list (or comma-separated
string) of names, limits as positive integers up to 2**53, an expiry as epoch seconds, a duration
(``30d``) or an ISO date, finite and before year 10000.

Knows nothing about HTTP, rate limiting or where the pepper comes from (the caller passes it).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from autoglm.errors import AutoGLMError, ConfigError
from autoglm.gateway.store import StateStore

__all__ = [
    "KeyInfo",
    "KeyNotFoundError",
    "create_key",
    "verify",
    "list_keys",
    "get_key",
    "revoke_key",
    "has_keys",
    "hash_key",
    "check_admin_key",
    "KEY_PREFIX",
    "check_limit",
    "check_name",
    "check_models",
    "check_expires",
    "parse_expires",
    "MAX_LIMIT",
]

log = logging.getLogger(__name__)

KEY_PREFIX = "agl-"
_SECRET_BYTES = 32  # token_urlsafe(32) -> 43 characters
_DISPLAY_CHARS = 8  # characters after "agl-" kept in clear; the remaining 35 (~210 bits) stay secret
_COLUMNS = "id, name, prefix, models, rpm, tpm, created_at, expires_at, revoked_at"


class KeyNotFoundError(AutoGLMError):
    """No key has the given name or id."""


@dataclass(frozen=True)
class KeyInfo:
    """What the gateway knows about a key; never the key itself nor its hash."""

    id: str
    name: str
    prefix: str
    models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None  # requests per minute; None: unlimited
    tpm: int | None = None  # tokens per minute; None: unlimited
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None

    def allows_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def is_active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = list(self.models) if self.models is not None else None
        return d


def hash_key(plaintext: str, pepper: str | None = None) -> str:
    data = plaintext.encode("utf-8")
    if pepper:
        return hmac.new(pepper.encode("utf-8"), data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _prefix_of(plaintext: str) -> str:
    return plaintext[: len(KEY_PREFIX) + _DISPLAY_CHARS]


def _row_to_info(row: tuple) -> KeyInfo:
    id_, name, prefix, models, rpm, tpm, created, expires, revoked = row
    return KeyInfo(
        id=id_,
        name=name,
        prefix=prefix,
        models=tuple(json.loads(models)) if models is not None else None,
        rpm=int(rpm) if rpm is not None else None,
        tpm=int(tpm) if tpm is not None else None,
        created_at=float(created),
        expires_at=float(expires) if expires is not None else None,
        revoked_at=float(revoked) if revoked is not None else None,
    )


MAX_LIMIT = 2**53  # fits a BIGINT and a JSON number exactly
MAX_EXPIRES = 253402300799.0  # 9999-12-31T23:59:59Z: what every datetime library can print
_MAX_NAME = 64
_MAX_MODEL_NAME = 256
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_limit(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value > MAX_LIMIT:
        raise ConfigError(f"{name} must be a positive integer up to {MAX_LIMIT} (or omitted for no limit), "
                          f"got {_shown(value)}")
    return value


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a key needs a non-empty --name (a string such as 'ci-bot'), got {_shown(name)}")
    name = name.strip()
    if len(name) > _MAX_NAME or _UNPRINTABLE.search(name):
        raise ConfigError(f"a key name must be 1..{_MAX_NAME} printable characters, got {_shown(name)}")
    return name


def check_models(models: object) -> tuple[str, ...] | None:
    """``None`` (every model), a list of names, or one comma-separated string of them."""
    if models is None:
        return None
    if isinstance(models, str):
        models = models.split(",")
    if not isinstance(models, (list, tuple)) or not all(isinstance(m, str) for m in models):
        raise ConfigError(f"models must be a list of model names (or a comma-separated string), got {_shown(models)}")
    names = tuple(m.strip() for m in models if m.strip())
    if not names:
        raise ConfigError("models was given but names no model; omit it to allow every model")
    bad = [m for m in names if len(m) > _MAX_MODEL_NAME or _UNPRINTABLE.search(m)]
    if bad:
        raise ConfigError(f"model name {_shown(bad[0])} is not a printable name of at most {_MAX_MODEL_NAME} characters")
    return names


def parse_expires(value: str, now: float | None = None, *, what: str = "expiry") -> float:
    """``30d`` / ``12h`` / ``90m`` / ``2w`` from now, or an ISO date/time (UTC unless it names a zone)."""
    now = time.time() if now is None else now
    text = value.strip()
    m = re.fullmatch(r"(\d{1,9})\s*([mhdw])", text.lower())
    if m:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds <= 0:
            raise ConfigError(f"{what} {value!r} is not in the future; give e.g. 30d")
        return check_expires(now + seconds, now, what=what)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{what} {_shown(value)} is neither a duration (30d, 12h, 90m, 2w) nor an ISO date (2026-01-31 or "
            "2026-01-31T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return check_expires(when.timestamp(), now, what=what)


def check_expires(value: object, now: float | None = None, *, what: str = "expiry") -> float | None:
    """``None`` (never), epoch seconds, or a string :func:`parse_expires` reads; in the future, finite."""
    now = time.time() if now is None else now
    if value is None:
        return None
    if isinstance(value, str):
        return parse_expires(value, now, what=what)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"expires_at must be epoch seconds, a duration such as '30d' or an ISO date, got "
                          f"{_shown(value)}")
    ts = float(value)
    if ts <= now:
        raise ConfigError(f"{what} {_shown(value)} is in the past; give a future time (e.g. 30d)")
    if ts > MAX_EXPIRES:
        raise ConfigError(f"{what} {_shown(value)} is after the year 9999; give a nearer date or none")
    return ts


def create_key(
    store: StateStore,
    name: str,
    models: list[str] | tuple[str, ...] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    expires_at: float | None = None,
    *,
    pepper: str | None = None,
    now: float | None = None,
) -> tuple[str, KeyInfo]:
    """Create a key; return ``(plaintext, info)``. The plaintext exists only in this return value."""
    name = check_name(name)
    now = time.time() if now is None else now
    expires_at = check_expires(expires_at, now)
    models = check_models(models)
    rpm, tpm = check_limit("rpm", rpm), check_limit("tpm", tpm)
    if store.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)):
        raise ConfigError(f"a key named {name!r} already exists; pick another name or revoke that one first")

    plaintext = KEY_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
    info = KeyInfo(
        id="key_" + secrets.token_hex(6),
        name=name,
        prefix=_prefix_of(plaintext),
        models=models,
        rpm=rpm,
        tpm=tpm,
        created_at=now,
        expires_at=expires_at,
    )
    try:
        _insert(store, info, models, plaintext, pepper)
    except Exception as exc:
        if store.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)):  # lost a race for the name
            raise ConfigError(f"a key named {name!r} already exists; pick another name or revoke that one first") from None
        raise exc
    log.info("created API key name=%s id=%s", info.name, info.id)
    return plaintext, info


def _insert(store: StateStore, info: KeyInfo, models: tuple[str, ...] | None, plaintext: str,
            pepper: str | None) -> None:
    store.execute(
        f"INSERT INTO api_keys ({_COLUMNS}, key_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            info.id,
            info.name,
            info.prefix,
            json.dumps(list(models)) if models is not None else None,
            info.rpm,
            info.tpm,
            info.created_at,
            info.expires_at,
            None,
            hash_key(plaintext, pepper),
        ),
    )


def verify(store: StateStore, presented: str | None, *, pepper: str | None = None, now: float | None = None) -> KeyInfo | None:
    """The key's info if ``presented`` is a known, unrevoked, unexpired key; else ``None``."""
    if not presented or not presented.startswith(KEY_PREFIX):
        return None
    digest = hash_key(presented, pepper)
    rows = store.execute(
        f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE prefix = ?", (_prefix_of(presented),)
    )
    found: KeyInfo | None = None
    for row in rows:
        # Compare every candidate so the time taken does not depend on which one matches.
        if hmac.compare_digest(str(row[-1]).encode("ascii"), digest.encode("ascii")):
            found = _row_to_info(row[:-1])
    if found is None or not found.is_active(now):
        return None
    return found


def list_keys(store: StateStore, *, include_revoked: bool = True) -> list[KeyInfo]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    rows = store.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, name")
    return [_row_to_info(r) for r in rows]


def get_key(store: StateStore, name_or_id: str) -> KeyInfo:
    """Look a key up by id first, then by name."""
    for column in ("id", "name"):
        rows = store.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE {column} = ?", (name_or_id,))
        if rows:
            return _row_to_info(rows[0])
    names = [k.name for k in list_keys(store)]
    raise KeyNotFoundError(
        f"no API key has the name or id {name_or_id!r}; known names: {', '.join(names) or '(none)'} "
        "(see `autoglm keys list`)"
    )


def revoke_key(store: StateStore, name_or_id: str, *, now: float | None = None) -> KeyInfo:
    """Revoke a key (idempotent: revoking twice keeps the first time). Returns its updated info."""
    info = get_key(store, name_or_id)
    if info.revoked_at is None:
        now = time.time() if now is None else now
        store.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now, info.id))
        log.info("revoked API key name=%s id=%s", info.name, info.id)
        info = get_key(store, info.id)
    return info


def has_keys(store: StateStore) -> bool:
    """True once any key was ever created (revoked ones count: revoking the last key must not open the gateway)."""
    return bool(store.execute("SELECT 1 FROM api_keys LIMIT 1"))


def check_admin_key(presented: str | None, admin_key: str | None) -> bool:
    """Constant-time comparison with the configured admin key; ``False`` when none is configured."""
    if not admin_key or not presented:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), admin_key.encode("utf-8"))
