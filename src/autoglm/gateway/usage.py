"""Usage counters: requests, prompt and completion tokens per key, model and hour.

Each call adds to one hourly row with an upsert (``INSERT ... ON CONFLICT DO UPDATE``, which SQLite and
PostgreSQL both speak), so replicas sharing a store add up without a read-modify-write race. Reports
roll hours up into days on request. Knows nothing about HTTP or how tokens were counted.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from autoglm.errors import ConfigError
from autoglm.gateway.keys import get_key
from autoglm.gateway.store import StateStore

__all__ = ["UsageRow", "add_usage", "query_usage", "OPEN_MODE_KEY_ID"]

OPEN_MODE_KEY_ID = "-"  # usage recorded while no keys exist
_BUCKETS = {"hour": 3600, "day": 86400}


@dataclass(frozen=True)
class UsageRow:
    key: str  # the key's name, "(open)" for open mode, or the id of a key that no longer exists
    model: str
    period_start: str  # ISO 8601, UTC
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens}


def add_usage(
    store: StateStore,
    key_id: str | None,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    requests: int = 1,
    now: float | None = None,
) -> None:
    now = time.time() if now is None else now
    bucket = int(now // 3600) * 3600
    store.execute(
        "INSERT INTO usage (key_id, model, bucket, requests, prompt_tokens, completion_tokens) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, model, bucket) DO UPDATE SET "
        "requests = usage.requests + excluded.requests, "
        "prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = usage.completion_tokens + excluded.completion_tokens",
        (key_id or OPEN_MODE_KEY_ID, model, bucket, int(requests), int(prompt_tokens), int(completion_tokens)),
    )


def query_usage(
    store: StateStore,
    *,
    key: str | None = None,
    model: str | None = None,
    per: str = "day",
    since: float | None = None,
) -> list[UsageRow]:
    """Usage summed per key, model and ``per`` ("hour" or "day"), oldest first. ``key`` is a name or id."""
    if per not in _BUCKETS:
        raise ConfigError(f"usage period {per!r} is not one of {sorted(_BUCKETS)}")
    width = _BUCKETS[per]
    where, params = [], []
    if key is not None:
        where.append("u.key_id = ?")
        params.append(OPEN_MODE_KEY_ID if key == "(open)" else get_key(store, key).id)
    if model is not None:
        where.append("u.model = ?")
        params.append(model)
    if since is not None:
        where.append("u.bucket >= ?")
        params.append(int(since))
    sql = (
        f"SELECT u.key_id, k.name, u.model, (u.bucket / {width}) * {width} AS period, "
        "SUM(u.requests), SUM(u.prompt_tokens), SUM(u.completion_tokens) "
        "FROM usage u LEFT JOIN api_keys k ON k.id = u.key_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY u.key_id, k.name, u.model, period ORDER BY period, k.name, u.model"
    )
    rows = []
    for key_id, name, model_, period, req, prompt, completion in store.execute(sql, params):
        label = name or ("(open)" if key_id == OPEN_MODE_KEY_ID else key_id)
        start = datetime.fromtimestamp(int(period), tz=timezone.utc).isoformat().replace("+00:00", "Z")
        rows.append(UsageRow(label, model_, start, int(req), int(prompt), int(completion)))
    # Sorted here, not in SQL: the backends order NULL names differently.
    return sorted(rows, key=lambda r: (r.period_start, r.key, r.model))
