"""Feedback tables on the gateway's state store: captured exchanges, and feedback on them.

Two tables live beside the gateway's (same connection, same SQL dialect: ``?`` placeholders and the
portable types of :mod:`autoglm.gateway.store._base`), with migrations of their own in
``feedback_schema_version`` so the gateway's version numbers and ours never collide:

* ``fb_exchanges``: one row per captured response (``id`` = the response's ``id``), with the key that
  received it, the request and response as (redacted) JSON text, ``conv_hash`` (the conversation or
  prompt the response answers, for regeneration detection and preference pairs), the stored size,
  and ``dropped`` (why the texts were not kept, e.g. ``too_large``; then they are NULL).
* ``fb_feedback``: one row per signal: explicit (``POST /v1/feedback``) or implicit
  (``implicit:regeneration``, ``implicit:follow_up``), on one choice of one exchange: a rating in
  [-1, 1], an optional correction, an optional preferred-over exchange and choice, comment, tags.

:class:`FeedbackStore` runs blocking statements (call it from a thread in async code). It knows
neither HTTP nor redaction nor what the signals will become; :mod:`autoglm.feedback.export` reads it.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from autoglm.errors import ConfigError
from autoglm.gateway.store import StateStore, where_clause

__all__ = ["FEEDBACK_MIGRATIONS", "FeedbackStore", "Exchange", "Feedback", "migrate_feedback", "parse_since"]

log = logging.getLogger(__name__)

# (version, description, statements). Append only: a released migration is never edited.
FEEDBACK_MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "captured exchanges and feedback",
        [
            """CREATE TABLE fb_exchanges (
                id TEXT PRIMARY KEY,
                key_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                model TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                n_choices BIGINT NOT NULL,
                conv_hash TEXT NOT NULL,
                request TEXT,
                response TEXT,
                bytes BIGINT NOT NULL DEFAULT 0,
                redactions BIGINT NOT NULL DEFAULT 0,
                dropped TEXT
            )""",
            "CREATE INDEX fb_exchanges_conv ON fb_exchanges (key_id, conv_hash)",
            "CREATE INDEX fb_exchanges_created ON fb_exchanges (created_at)",
            """CREATE TABLE fb_feedback (
                id TEXT PRIMARY KEY,
                response_id TEXT NOT NULL,
                choice_index BIGINT NOT NULL,
                key_id TEXT NOT NULL,
                source TEXT NOT NULL,
                rating DOUBLE PRECISION,
                correction TEXT,
                other_id TEXT,
                other_choice BIGINT,
                comment TEXT,
                tags TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX fb_feedback_response ON fb_feedback (response_id)",
            "CREATE INDEX fb_feedback_created ON fb_feedback (created_at)",
        ],
    ),
]


def migrate_feedback(store: StateStore) -> list[int]:
    """Apply the missing feedback migrations (serialised across processes by the store's transaction)."""
    applied = store.apply_migrations("feedback_schema_version", FEEDBACK_MIGRATIONS)
    if applied:
        log.info("feedback tables: applied migrations %s", applied)
    return applied


_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | float | None, now: float | None = None) -> float | None:
    """``None``, epoch seconds, a look-back (``7d``, ``12h``, ``90m``, ``2w``) or an ISO date/time (UTC)."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    text = str(value).strip()
    m = re.fullmatch(r"(\d{1,9})\s*([mhdw])", text.lower())
    if m:
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        ts = float(text)
        if math.isfinite(ts):
            return ts
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"since {text[:40]!r} is neither epoch seconds, a look-back such as 7d or 12h, nor an "
                          "ISO date such as 2026-01-31") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


@dataclass
class Exchange:
    id: str
    key_id: str
    kind: str  # chat | completion
    model: str
    created_at: float
    n_choices: int
    conv_hash: str
    request: dict[str, Any] | None = None  # None when dropped
    response: dict[str, Any] | None = None
    bytes: int = 0
    redactions: int = 0
    dropped: str | None = None


@dataclass
class Feedback:
    id: str
    response_id: str
    choice_index: int
    key_id: str
    source: str  # explicit | implicit:regeneration | implicit:follow_up
    rating: float | None = None
    correction: str | None = None
    other_id: str | None = None  # this choice is preferred over (other_id, other_choice)
    other_choice: int | None = None
    comment: str | None = None
    tags: list[str] = field(default_factory=list)
    created_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["object"] = "feedback"
        return d


_EX_COLS = "id, key_id, kind, model, created_at, n_choices, conv_hash, request, response, bytes, redactions, dropped"
_FB_COLS = ("id, response_id, choice_index, key_id, source, rating, correction, other_id, other_choice, comment, "
            "tags, created_at")


def _exchange(row: tuple) -> Exchange:
    id_, key_id, kind, model, created, n, conv, req, resp, size, red, dropped = row
    return Exchange(id_, key_id, kind, model, float(created), int(n), conv,
                    json.loads(req) if req is not None else None, json.loads(resp) if resp is not None else None,
                    int(size), int(red), dropped)


def _feedback(row: tuple) -> Feedback:
    id_, rid, choice, key_id, source, rating, corr, other, other_choice, comment, tags, created = row
    return Feedback(id_, rid, int(choice), key_id, source, float(rating) if rating is not None else None, corr,
                    other, int(other_choice) if other_choice is not None else None, comment,
                    json.loads(tags) if tags else [], float(created))


class FeedbackStore:
    """Reads and writes of the feedback tables on one :class:`StateStore` (blocking)."""

    def __init__(self, store: StateStore, *, migrate: bool = True):
        self.store = store
        if migrate:
            migrate_feedback(store)

    # -- writes (the capture writer wraps several in one transaction) ----------------------------
    def put_exchange(self, ex: Exchange, request_json: str | None, response_json: str | None) -> None:
        self.store.execute(
            f"INSERT INTO fb_exchanges ({_EX_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ex.id, ex.key_id, ex.kind, ex.model, ex.created_at, ex.n_choices, ex.conv_hash, request_json,
             response_json, ex.bytes, ex.redactions, ex.dropped))

    def add_feedback(self, fb: Feedback) -> None:
        self.store.execute(
            f"INSERT INTO fb_feedback ({_FB_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (fb.id, fb.response_id, fb.choice_index, fb.key_id, fb.source, fb.rating, fb.correction, fb.other_id,
             fb.other_choice, fb.comment, json.dumps(fb.tags) if fb.tags else None, fb.created_at))

    def has_feedback(self, response_id: str, source: str) -> bool:
        return bool(self.store.execute("SELECT 1 FROM fb_feedback WHERE response_id = ? AND source = ?",
                                       (response_id, source)))

    def purge(self, *, older_than: float | None = None, max_bytes: int | None = None) -> int:
        """Delete exchanges captured before ``older_than`` (epoch s), then the oldest until the kept texts
        fit ``max_bytes``; their feedback goes with them. Returns how many exchanges were deleted."""
        deleted = 0
        if older_than is not None:
            self.store.execute("DELETE FROM fb_feedback WHERE response_id IN "
                               "(SELECT id FROM fb_exchanges WHERE created_at < ?)", (older_than,))
            n = self.store.execute("SELECT COUNT(*) FROM fb_exchanges WHERE created_at < ?", (older_than,))
            self.store.execute("DELETE FROM fb_exchanges WHERE created_at < ?", (older_than,))
            deleted += int(n[0][0])
        if max_bytes is not None:
            total = int(self.store.execute("SELECT COALESCE(SUM(bytes), 0) FROM fb_exchanges")[0][0])
            if total > max_bytes:
                cut, excess = None, total - max_bytes
                for created, size in self.store.execute("SELECT created_at, bytes FROM fb_exchanges "
                                                        "ORDER BY created_at"):
                    excess -= int(size)
                    cut = float(created)
                    if excess <= 0:
                        break
                if cut is not None:
                    deleted += self.purge(older_than=cut + 1e-6)
        return deleted

    # -- reads -------------------------------------------------------------------------------------
    def get_exchange(self, response_id: str) -> Exchange | None:
        rows = self.store.execute(f"SELECT {_EX_COLS} FROM fb_exchanges WHERE id = ?", (response_id,))
        return _exchange(rows[0]) if rows else None

    def find_conversation(self, key_id: str, conv_hash: str, since: float) -> list[Exchange]:
        """Exchanges of ``key_id`` answering ``conv_hash`` captured at or after ``since``, oldest first."""
        rows = self.store.execute(f"SELECT {_EX_COLS} FROM fb_exchanges WHERE key_id = ? AND conv_hash = ? "
                                  "AND created_at >= ? ORDER BY created_at", (key_id, conv_hash, since))
        return [_exchange(r) for r in rows]

    def list_feedback(self, *, since: float | None = None, key_id: str | None = None, source: str | None = None,
                      limit: int | None = None) -> list[Feedback]:
        where, params = self._where(since, key_id, source)
        sql = f"SELECT {_FB_COLS} FROM fb_feedback{where} ORDER BY created_at"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_feedback(r) for r in self.store.execute(sql, params)]

    def iter_joined(self, *, since: float | None = None) -> Iterator[tuple[Feedback, Exchange]]:
        """Every feedback row (``since`` epoch s) with its exchange; rows whose exchange is gone are skipped."""
        cache: dict[str, Exchange | None] = {}
        for fb in self.list_feedback(since=since):
            if fb.response_id not in cache:
                cache[fb.response_id] = self.get_exchange(fb.response_id)
            ex = cache[fb.response_id]
            if ex is not None:
                yield fb, ex

    def stats(self, *, since: float | None = None) -> dict[str, Any]:
        where, params = self._where(since, None, None)
        by_source = {}
        for source, n, mean, up, down in self.store.execute(
                f"SELECT source, COUNT(*), AVG(rating), SUM(CASE WHEN rating > 0 THEN 1 ELSE 0 END), "
                f"SUM(CASE WHEN rating < 0 THEN 1 ELSE 0 END) FROM fb_feedback{where} GROUP BY source", params):
            by_source[source] = {"count": int(n), "mean_rating": float(mean) if mean is not None else None,
                                 "positive": int(up or 0), "negative": int(down or 0)}
        extra = self.store.execute(
            f"SELECT SUM(CASE WHEN correction IS NOT NULL THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN other_id IS NOT NULL THEN 1 ELSE 0 END) FROM fb_feedback{where}", params)[0]
        ex_where = " WHERE created_at >= ?" if since is not None else ""
        ex = self.store.execute(f"SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(redactions), 0), "
                                f"SUM(CASE WHEN dropped IS NOT NULL THEN 1 ELSE 0 END) FROM fb_exchanges{ex_where}",
                                (since,) if since is not None else ())[0]
        return {"object": "feedback.stats", "since": since,
                "feedback": sum(s["count"] for s in by_source.values()), "by_source": by_source,
                "corrections": int(extra[0] or 0), "preferences": int(extra[1] or 0),
                "exchanges": int(ex[0]), "exchange_bytes": int(ex[1]), "redactions": int(ex[2]),
                "exchanges_dropped": int(ex[3] or 0)}

    @staticmethod
    def _where(since: float | None, key_id: str | None, source: str | None) -> tuple[str, tuple]:
        return where_clause(("created_at >= ?", since), ("key_id = ?", key_id), ("source = ?", source))

    def exchange_requests(self, since: float | None = None, until: float | None = None) -> Iterator[tuple[str, Any]]:
        """``(kind, request dict)`` of the exchanges captured in [since, until) whose request was kept, oldest first."""
        where, params = where_clause(("created_at >= ?", since), ("created_at < ?", until))
        for kind, request in self.store.execute(
                f"SELECT kind, request FROM fb_exchanges{where} ORDER BY created_at", params):
            if request is not None:
                yield kind, json.loads(request)
