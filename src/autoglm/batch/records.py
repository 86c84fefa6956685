"""Files, batches, their requests and results: tables on the gateway's state store.

Beside the gateway's tables (same connection, same portable SQL), with migrations of their own in
``batch_schema_version``:

* ``batch_files``: uploads (``purpose: batch``, their text kept in ``content``) and the output and
  error files of finished batches (``batch_output``; their text is rendered from the results, so a
  file is never written twice);
* ``batches``: one row per batch: its key, endpoint, status and the time of every status change,
  the number of requests, and the ids its output and error files get when it finishes;
* ``batch_requests``: the valid lines of the input file, by line number (a worker reads its request
  here; the queue carries only ``{"batch", "line"}``);
* ``batch_results``: one row per finished request, **keyed by (batch id, custom_id)** and inserted
  with ``ON CONFLICT DO NOTHING``: a request run twice (its worker died after writing, before the ack)
  keeps its first result. ``record`` is the output line as OpenAI writes it;
* ``batch_queue``: the rows of :mod:`autoglm.batch.store_queue` (when that queue is used).

:class:`BatchStore` runs blocking statements (call it from a thread in async code). Counts come from
the results, so ``request_counts`` is always what the output files will hold. Knows neither HTTP nor
queues nor engines.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from autoglm.gateway.store import StateStore

__all__ = ["BATCH_MIGRATIONS", "BatchStore", "BatchRecord", "FileRecord", "migrate_batch", "new_id",
           "ACTIVE", "FINAL"]

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "expired", "cancelled")
_STAMPS = {"in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
           "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at", "cancelled": "cancelled_at"}

BATCH_MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "files, batches, requests, results, the state-store queue",
        [
            """CREATE TABLE batch_files (
                id TEXT PRIMARY KEY, key_id TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
                bytes BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL, content TEXT,
                batch_id TEXT, kind TEXT NOT NULL
            )""",
            "CREATE INDEX batch_files_key ON batch_files (key_id, created_at)",
            """CREATE TABLE batches (
                id TEXT PRIMARY KEY, key_id TEXT NOT NULL, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL,
                completion_window TEXT NOT NULL, metadata TEXT, status TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
                in_progress_at DOUBLE PRECISION, finalizing_at DOUBLE PRECISION, completed_at DOUBLE PRECISION,
                failed_at DOUBLE PRECISION, expired_at DOUBLE PRECISION, cancelling_at DOUBLE PRECISION,
                cancelled_at DOUBLE PRECISION, total BIGINT NOT NULL, output_file_id TEXT NOT NULL,
                error_file_id TEXT NOT NULL, errors TEXT, model TEXT
            )""",
            "CREATE INDEX batches_key ON batches (key_id, created_at)",
            "CREATE INDEX batches_status ON batches (status)",
            """CREATE TABLE batch_requests (
                batch_id TEXT NOT NULL, line BIGINT NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
                PRIMARY KEY (batch_id, line)
            )""",
            """CREATE TABLE batch_results (
                batch_id TEXT NOT NULL, custom_id TEXT NOT NULL, line BIGINT NOT NULL, ok BIGINT NOT NULL,
                record TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (batch_id, custom_id)
            )""",
            """CREATE TABLE batch_queue (
                id TEXT PRIMARY KEY, queue TEXT NOT NULL, payload TEXT NOT NULL,
                enqueued_at DOUBLE PRECISION NOT NULL, seq BIGINT NOT NULL, lease_owner TEXT,
                leased_until DOUBLE PRECISION, deliveries BIGINT NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX batch_queue_order ON batch_queue (queue, enqueued_at, seq)",
        ],
    ),
]


def migrate_batch(store: StateStore) -> list[int]:
    """Apply the missing batch migrations (serialised across processes by the store's transaction)."""
    return store.apply_migrations("batch_schema_version", BATCH_MIGRATIONS)


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


@dataclass
class FileRecord:
    id: str
    key_id: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    kind: str = "upload"  # upload | output | error
    batch_id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at),
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None,
                "expires_at": None}


_FILE_COLS = "id, key_id, purpose, filename, bytes, created_at, kind, batch_id"


@dataclass
class BatchRecord:
    id: str
    key_id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: str
    created_at: float
    expires_at: float
    total: int
    output_file_id: str
    error_file_id: str
    metadata: dict[str, str] | None = None
    errors: list[dict[str, Any]] | None = None
    model: str | None = None
    stamps: dict[str, float | None] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    has_output: bool = False
    has_errors: bool = False

    def to_openai(self) -> dict[str, Any]:
        final = self.status in FINAL
        out = {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id if final and self.has_output else None,
            "error_file_id": self.error_file_id if final and self.has_errors else None,
            "created_at": int(self.created_at), "expires_at": int(self.expires_at),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata, "model": self.model,
        }
        for column in _STAMPS.values():
            value = self.stamps.get(column)
            out[column] = int(value) if value is not None else None
        return out


_BATCH_COLS = ("id, key_id, input_file_id, endpoint, completion_window, status, created_at, expires_at, total, "
               "output_file_id, error_file_id, metadata, errors, model, " + ", ".join(_STAMPS.values()))


def _batch(row: tuple) -> BatchRecord:
    stamps = dict(zip(_STAMPS.values(), row[14:]))
    return BatchRecord(id=row[0], key_id=row[1], input_file_id=row[2], endpoint=row[3], completion_window=row[4],
                       status=row[5], created_at=row[6], expires_at=row[7], total=int(row[8]),
                       output_file_id=row[9], error_file_id=row[10],
                       metadata=json.loads(row[11]) if row[11] else None,
                       errors=json.loads(row[12]) if row[12] else None, model=row[13], stamps=stamps)


class BatchStore:
    """Blocking access to the batch tables of one state store."""

    def __init__(self, store: StateStore, *, migrate: bool = True):
        self.store = store
        if migrate:
            migrate_batch(store)

    # -- files -----------------------------------------------------------------------------------
    def add_file(self, rec: FileRecord, content: str) -> None:
        self.store.execute(f"INSERT INTO batch_files ({_FILE_COLS}, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (rec.id, rec.key_id, rec.purpose, rec.filename, rec.bytes, rec.created_at, rec.kind,
                            rec.batch_id, content))

    def get_file(self, file_id: str, key_id: str | None) -> FileRecord | None:
        rows = self.store.execute(f"SELECT {_FILE_COLS} FROM batch_files WHERE id = ?", (file_id,))
        if not rows or (key_id is not None and rows[0][1] != key_id):
            return None
        return FileRecord(*rows[0])

    def list_files(self, key_id: str, *, purpose: str | None = None, limit: int = 100, after: str | None = None,
                   order: str = "desc") -> tuple[list[FileRecord], bool]:
        return self._page("batch_files", _FILE_COLS, key_id, limit, after, order,
                          ("purpose = ?", purpose), lambda r: FileRecord(*r))

    def _page(self, table: str, cols: str, key_id: str, limit: int, after: str | None, order: str,
              extra: tuple[str, Any], make: Any) -> tuple[list[Any], bool]:
        sql, params = f"SELECT {cols} FROM {table} WHERE key_id = ?", [key_id]
        if extra[1] is not None:
            sql += f" AND {extra[0]}"
            params.append(extra[1])
        if after:
            anchor = self.store.execute(f"SELECT created_at, id FROM {table} WHERE id = ?", (after,))
            if anchor:
                op = "<" if order == "desc" else ">"
                sql += f" AND (created_at {op} ? OR (created_at = ? AND id {op} ?))"
                params += [anchor[0][0], anchor[0][0], anchor[0][1]]
        direction = "DESC" if order == "desc" else "ASC"
        sql += f" ORDER BY created_at {direction}, id {direction} LIMIT ?"
        rows = self.store.execute(sql, (*params, limit + 1))
        return [make(r) for r in rows[:limit]], len(rows) > limit

    def file_content(self, rec: FileRecord) -> str:
        if rec.kind == "upload":
            rows = self.store.execute("SELECT content FROM batch_files WHERE id = ?", (rec.id,))
            return rows[0][0] if rows else ""
        ok = 1 if rec.kind == "output" else 0
        rows = self.store.execute("SELECT record FROM batch_results WHERE batch_id = ? AND ok = ? ORDER BY line",
                                  (rec.batch_id, ok))
        return "".join(r[0] + "\n" for r in rows)

    def delete_file(self, file_id: str) -> None:
        self.store.execute("DELETE FROM batch_files WHERE id = ?", (file_id,))

    # -- batches ---------------------------------------------------------------------------------
    def create_batch(self, rec: BatchRecord, requests: list[tuple[int, str, str]],
                     line_errors: list[tuple[int, str, str]]) -> None:
        """The batch (status ``validating``), its requests ``(line, custom_id, body)`` and the results of its
        malformed lines ``(line, key, record)``, in one transaction."""
        now = time.time()
        with self.store.transaction():
            self.store.execute(
                "INSERT INTO batches (id, key_id, input_file_id, endpoint, completion_window, status, created_at, "
                "expires_at, total, output_file_id, error_file_id, metadata, errors, model) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.id, rec.key_id, rec.input_file_id, rec.endpoint, rec.completion_window, rec.status,
                 rec.created_at, rec.expires_at, rec.total, rec.output_file_id, rec.error_file_id,
                 json.dumps(rec.metadata) if rec.metadata is not None else None,
                 json.dumps(rec.errors) if rec.errors else None, rec.model))
            for line, custom_id, body in requests:
                self.store.execute("INSERT INTO batch_requests (batch_id, line, custom_id, body) VALUES (?, ?, ?, ?)",
                                   (rec.id, line, custom_id, body))
            for line, key, record in line_errors:
                self.store.execute("INSERT INTO batch_results (batch_id, custom_id, line, ok, record, created_at) "
                                   "VALUES (?, ?, ?, 0, ?, ?)", (rec.id, key, line, record, now))

    def get_batch(self, batch_id: str, key_id: str | None = None) -> BatchRecord | None:
        rows = self.store.execute(f"SELECT {_BATCH_COLS} FROM batches WHERE id = ?", (batch_id,))
        if not rows or (key_id is not None and rows[0][1] != key_id):
            return None
        return self._counted(_batch(rows[0]))

    def _counted(self, rec: BatchRecord) -> BatchRecord:
        rows = self.store.execute("SELECT ok, COUNT(*) FROM batch_results WHERE batch_id = ? GROUP BY ok", (rec.id,))
        by = {int(ok): int(n) for ok, n in rows}
        rec.completed, rec.failed = by.get(1, 0), by.get(0, 0)
        files = {r[0] for r in self.store.execute("SELECT kind FROM batch_files WHERE batch_id = ?", (rec.id,))}
        rec.has_output, rec.has_errors = "output" in files, "error" in files
        return rec

    def list_batches(self, key_id: str, *, limit: int = 20, after: str | None = None) -> tuple[list[BatchRecord], bool]:
        return self._page("batches", _BATCH_COLS, key_id, limit, after, "desc", ("1 = ?", None),
                          lambda r: self._counted(_batch(r)))

    def batches_in(self, statuses: tuple[str, ...]) -> list[BatchRecord]:
        marks = ", ".join("?" for _ in statuses)
        rows = self.store.execute(f"SELECT {_BATCH_COLS} FROM batches WHERE status IN ({marks}) ORDER BY created_at",
                                  statuses)
        return [_batch(r) for r in rows]

    def set_status(self, batch_id: str, status: str, *, only_from: tuple[str, ...],
                   errors: list[dict[str, Any]] | None = None) -> bool:
        """Move the batch to ``status`` (stamping its time) if it is in one of ``only_from``; True if it moved."""
        marks = ", ".join("?" for _ in only_from)
        column = _STAMPS.get(status)
        sets, params = ["status = ?"], [status]
        if column:
            sets.append(f"{column} = ?")
            params.append(time.time())
        if errors is not None:
            sets.append("errors = ?")
            params.append(json.dumps(errors))
        rows = self.store.execute(f"UPDATE batches SET {', '.join(sets)} WHERE id = ? AND status IN ({marks}) "
                                  "RETURNING id", (*params, batch_id, *only_from))
        return bool(rows)

    # -- requests and results ----------------------------------------------------------------------
    def get_request(self, batch_id: str, line: int) -> tuple[str, str] | None:
        rows = self.store.execute("SELECT custom_id, body FROM batch_requests WHERE batch_id = ? AND line = ?",
                                  (batch_id, line))
        return (rows[0][0], rows[0][1]) if rows else None

    def pending_lines(self, batch_id: str) -> list[int]:
        rows = self.store.execute(
            "SELECT r.line FROM batch_requests r LEFT JOIN batch_results s ON s.batch_id = r.batch_id AND "
            "s.custom_id = r.custom_id WHERE r.batch_id = ? AND s.custom_id IS NULL ORDER BY r.line", (batch_id,))
        return [int(r[0]) for r in rows]

    def has_result(self, batch_id: str, custom_id: str) -> bool:
        return bool(self.store.execute("SELECT 1 FROM batch_results WHERE batch_id = ? AND custom_id = ?",
                                       (batch_id, custom_id)))

    def write_result(self, batch_id: str, custom_id: str, line: int, ok: bool, record: dict[str, Any]) -> bool:
        """Store a request's output line once; False when it was already there (the first one stays)."""
        rows = self.store.execute(
            "INSERT INTO batch_results (batch_id, custom_id, line, ok, record, created_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (batch_id, custom_id) DO NOTHING RETURNING custom_id",
            (batch_id, custom_id, line, 1 if ok else 0, json.dumps(record, ensure_ascii=False), time.time()))
        return bool(rows)

    def result_count(self, batch_id: str) -> int:
        return int(self.store.execute("SELECT COUNT(*) FROM batch_results WHERE batch_id = ?", (batch_id,))[0][0])

    def finalize(self, batch_id: str, status: str, *, only_from: tuple[str, ...]) -> bool:
        """Write the output and error file entries and move to ``status`` (completed, cancelled, expired)."""
        rec = self.get_batch(batch_id)
        if rec is None or rec.status not in only_from:
            return False
        if status == "completed":
            self.set_status(batch_id, "finalizing", only_from=only_from)
            only_from = ("finalizing",)
        now = time.time()
        with self.store.transaction():
            for kind, ok, file_id in (("output", 1, rec.output_file_id), ("error", 0, rec.error_file_id)):
                rows = self.store.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(record)), 0) FROM batch_results "
                                          "WHERE batch_id = ? AND ok = ?", (batch_id, ok))
                n, chars = int(rows[0][0]), int(rows[0][1])
                if n == 0:
                    continue
                size = len(self.file_content(FileRecord(file_id, rec.key_id, "batch_output", "", 0, now, kind,
                                                        batch_id)).encode()) if chars else 0
                self.store.execute(
                    f"INSERT INTO batch_files ({_FILE_COLS}, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL) "
                    "ON CONFLICT (id) DO NOTHING",
                    (file_id, rec.key_id, "batch_output", f"{batch_id}_{kind}.jsonl", size, now, kind, batch_id))
            return self.set_status(batch_id, status, only_from=only_from)
