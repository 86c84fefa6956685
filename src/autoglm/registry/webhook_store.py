"""Webhook tables in the state store: the outbound delivery log and the inbound receipts.

They live in the gateway's :class:`~autoglm.gateway.store.StateStore` (SQLite by default,
PostgreSQL for replicas), in tables of their own with their own version table
(``webhook_schema_version``), so they migrate independently of the key and usage tables, the same
way: append-only statements in portable SQL under the store's exclusive transaction.

``webhook_deliveries``: one row per (event, target): status ``pending -> sending -> delivered``, or
``retrying`` between attempts, or ``dead`` after the target's last attempt; attempts, the last HTTP
status and error, when the next attempt is due. The payload is kept (retries resend the same bytes);
secrets never are: they stay in the webhooks file. ``webhook_receipts``: one row per (hook, delivery
id) accepted inbound, with the body's sha256 and the result, so a repeated delivery id is answered
from the row instead of acting twice. Claims are conditional UPDATEs, so replicas sharing one
database never send the same attempt twice. Knows nothing about HTTP or signatures.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from autoglm.gateway.store import StateStore, where_clause

__all__ = ["Delivery", "migrate_webhooks", "add_delivery", "get_delivery", "list_deliveries", "due_deliveries",
           "claim_delivery", "finish_attempt", "requeue_delivery", "next_due_at", "DELIVERY_COLUMNS",
           "open_receipt", "close_receipt", "drop_receipt", "prune_receipts", "get_receipt"]

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            target TEXT NOT NULL,
            event TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts BIGINT NOT NULL DEFAULT 0,
            last_status BIGINT,
            last_error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            next_attempt_at DOUBLE PRECISION NOT NULL,
            delivered_at DOUBLE PRECISION
        )""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)",
        """CREATE TABLE webhook_receipts (
            hook TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            body_sha256 TEXT NOT NULL,
            event TEXT,
            status TEXT NOT NULL,
            result TEXT,
            received_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (hook, delivery_id)
        )""",
    ]),
]

DELIVERY_COLUMNS = ("id", "target", "event", "payload", "status", "attempts", "last_status", "last_error",
                    "created_at", "updated_at", "next_attempt_at", "delivered_at")
_SELECT = f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM webhook_deliveries"
WAITING = ("pending", "retrying")


@dataclass(frozen=True)
class Delivery:
    id: str
    target: str
    event: str
    payload: str  # the exact JSON body sent
    status: str  # pending | sending | retrying | delivered | dead
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    next_attempt_at: float
    delivered_at: float | None

    def to_dict(self, payload: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if payload:
            out["payload"] = json.loads(self.payload)
        else:
            out.pop("payload")
        return out


def _row(row: tuple) -> Delivery:
    values = dict(zip(DELIVERY_COLUMNS, row))
    values["attempts"] = int(values["attempts"])
    values["last_status"] = int(values["last_status"]) if values["last_status"] is not None else None
    return Delivery(**values)


def migrate_webhooks(store: StateStore) -> list[int]:
    """Create or update the webhook tables; returns the versions applied now."""
    applied = []
    with store.transaction():
        store.execute("CREATE TABLE IF NOT EXISTS webhook_schema_version (version BIGINT PRIMARY KEY, "
                      "applied_at DOUBLE PRECISION NOT NULL)")
        done = {int(r[0]) for r in store.execute("SELECT version FROM webhook_schema_version")}
        for version, statements in MIGRATIONS:
            if version in done:
                continue
            for sql in statements:
                store.execute(sql)
            store.execute("INSERT INTO webhook_schema_version (version, applied_at) VALUES (?, ?)",
                          (version, time.time()))
            applied.append(version)
    return applied


# -- deliveries ------------------------------------------------------------------------------------
def add_delivery(store: StateStore, delivery_id: str, target: str, event: str, payload: str,
                 now: float | None = None) -> None:
    now = time.time() if now is None else now
    store.execute("INSERT INTO webhook_deliveries (id, target, event, payload, status, attempts, created_at, "
                  "updated_at, next_attempt_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                  (delivery_id, target, event, payload, now, now, now))


def get_delivery(store: StateStore, delivery_id: str) -> Delivery | None:
    rows = store.execute(f"{_SELECT} WHERE id = ?", (delivery_id,))
    return _row(rows[0]) if rows else None


def list_deliveries(store: StateStore, *, status: str | None = None, target: str | None = None,
                    limit: int = 50) -> list[Delivery]:
    where, params = where_clause(("status = ?", status), ("target = ?", target))
    sql = _SELECT + where + " ORDER BY created_at DESC LIMIT ?"
    return [_row(r) for r in store.execute(sql, (*params, int(limit)))]


def due_deliveries(store: StateStore, targets: list[str], now: float, stuck_before: float,
                   limit: int = 20) -> list[Delivery]:
    """Waiting deliveries of ``targets`` due by ``now``, oldest due first, and ``sending`` ones whose
    sender stopped before ``stuck_before`` (it died mid-attempt)."""
    if not targets:
        return []
    marks = ", ".join("?" for _ in targets)
    rows = store.execute(
        f"{_SELECT} WHERE target IN ({marks}) AND ((status IN ('pending', 'retrying') AND next_attempt_at <= ?) "
        "OR (status = 'sending' AND updated_at < ?)) ORDER BY next_attempt_at LIMIT ?",
        (*targets, now, stuck_before, int(limit)))
    return [_row(r) for r in rows]


def next_due_at(store: StateStore, targets: list[str]) -> float | None:
    if not targets:
        return None
    marks = ", ".join("?" for _ in targets)
    rows = store.execute(f"SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE target IN ({marks}) "
                         "AND status IN ('pending', 'retrying')", tuple(targets))
    return float(rows[0][0]) if rows and rows[0][0] is not None else None


def claim_delivery(store: StateStore, delivery: Delivery, now: float, stuck_before: float) -> bool:
    """Take ``delivery`` for one attempt; False when another sender took it first."""
    rows = store.execute(
        "UPDATE webhook_deliveries SET status = 'sending', updated_at = ? WHERE id = ? AND "
        "(status IN ('pending', 'retrying') OR (status = 'sending' AND updated_at < ?)) RETURNING id",
        (now, delivery.id, stuck_before))
    return bool(rows)


def finish_attempt(store: StateStore, delivery_id: str, *, status: str, http_status: int | None,
                   error: str | None, next_attempt_at: float, now: float) -> None:
    store.execute(
        "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, last_status = ?, last_error = ?, "
        "updated_at = ?, next_attempt_at = ?, delivered_at = ? WHERE id = ?",
        (status, http_status, error, now, next_attempt_at, now if status == "delivered" else None, delivery_id))


def requeue_delivery(store: StateStore, delivery_id: str, now: float | None = None) -> bool:
    """Make a delivery (a dead letter, or a delivered one sent again) pending now with fresh attempts;
    the delivery id stays, so a receiver that already acted on it answers from its receipt."""
    now = time.time() if now is None else now
    rows = store.execute("UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, "
                         "updated_at = ? WHERE id = ? AND status <> 'sending' RETURNING id", (now, now, delivery_id))
    return bool(rows)


# -- inbound receipts ------------------------------------------------------------------------------
def open_receipt(store: StateStore, hook: str, delivery_id: str, body_sha256: str, event: str | None,
                 now: float) -> bool:
    """Record that this delivery is being handled; False when the (hook, delivery id) is already known."""
    rows = store.execute(
        "INSERT INTO webhook_receipts (hook, delivery_id, body_sha256, event, status, received_at) "
        "VALUES (?, ?, ?, ?, 'processing', ?) ON CONFLICT (hook, delivery_id) DO NOTHING RETURNING delivery_id",
        (hook, delivery_id, body_sha256, event, now))
    return bool(rows)


def get_receipt(store: StateStore, hook: str, delivery_id: str) -> dict[str, Any] | None:
    rows = store.execute("SELECT body_sha256, event, status, result, received_at FROM webhook_receipts "
                         "WHERE hook = ? AND delivery_id = ?", (hook, delivery_id))
    if not rows:
        return None
    sha, event, status, result, received = rows[0]
    return {"body_sha256": sha, "event": event, "status": status,
            "result": json.loads(result) if result else None, "received_at": float(received)}


def close_receipt(store: StateStore, hook: str, delivery_id: str, result: dict[str, Any]) -> None:
    store.execute("UPDATE webhook_receipts SET status = 'done', result = ? WHERE hook = ? AND delivery_id = ?",
                  (json.dumps(result, default=str), hook, delivery_id))


def drop_receipt(store: StateStore, hook: str, delivery_id: str) -> None:
    """Forget a delivery whose action failed, so the sender's retry (same id) runs it again."""
    store.execute("DELETE FROM webhook_receipts WHERE hook = ? AND delivery_id = ?", (hook, delivery_id))


def prune_receipts(store: StateStore, before: float) -> None:
    store.execute("DELETE FROM webhook_receipts WHERE received_at < ?", (before,))
