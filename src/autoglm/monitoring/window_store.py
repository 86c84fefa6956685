"""The monitor's tables on the state store: per-process partial windows, evaluated windows, the reference, labels.

Tables (same SQL dialect as :mod:`autoglm.gateway.store`, migrations of their own in
``monitor_schema_version``):

* ``mon_partials``: one row per (model, window, process): that process's cumulative histograms of the
  window (:class:`~autoglm.monitoring.signals.Counts` as JSON). A process rewrites its own row on each
  flush, so a flush is idempotent and processes never add into each other's rows.
* ``mon_windows``: one row per (model, window) once the window is over and every process had time to
  flush (``grace``): the merged histograms, the state (``reference``: it went into the reference;
  ``insufficient``: too few requests to test; ``quiet`` or ``fired``: the drift test's outcome), the
  per-signal KL/PSI/p-values, max PSI and KL. Whichever process gets there first evaluates the window,
  inside a transaction, exactly once; the partial rows are then deleted.
* ``mon_reference``: per model, the histograms the windows are compared with. ``source`` is ``auto``
  (the first ``reference_windows`` windows with traffic, learnt as they are evaluated) or ``pinned``
  (:meth:`WindowStore.pin_reference`, ``autoglm monitor pin``). Deleting it (``autoglm monitor reset``)
  makes the next windows the new reference.
* ``mon_predictions``: scores of classifier-like answers (a number and the response id, no text) and
  the labels that arrive for them later (``POST /v1/monitor/labels``), for AUC.

So every process reading the store reports the same windows, drift rate and AUC. :class:`WindowStore`
is blocking (call it from a thread in async code); it knows the statistics' entry point
(:func:`~autoglm.monitoring.drift.compare`), not HTTP or Prometheus.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoglm.gateway.store import StateStore, StoreUnavailable, where_clause
from autoglm.monitoring.drift import compare
from autoglm.monitoring.signals import Counts

__all__ = ["MONITOR_MIGRATIONS", "WindowStore", "WindowRow", "ReferenceRow", "migrate_monitor", "DriftRate",
           "served_drift_rate"]

log = logging.getLogger(__name__)

# (version, description, statements). Append only: a released migration is never edited.
MONITOR_MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "served-model monitor: windows, reference, labelled predictions",
        [
            """CREATE TABLE mon_partials (
                model TEXT NOT NULL,
                window_start BIGINT NOT NULL,
                window_s BIGINT NOT NULL,
                instance TEXT NOT NULL,
                n BIGINT NOT NULL,
                counts TEXT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (model, window_start, instance)
            )""",
            """CREATE TABLE mon_windows (
                model TEXT NOT NULL,
                window_start BIGINT NOT NULL,
                window_s BIGINT NOT NULL,
                n BIGINT NOT NULL,
                state TEXT NOT NULL,
                fired BIGINT NOT NULL DEFAULT 0,
                max_psi DOUBLE PRECISION,
                max_kl DOUBLE PRECISION,
                drift TEXT,
                counts TEXT NOT NULL,
                instances BIGINT NOT NULL,
                evaluated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (model, window_start)
            )""",
            "CREATE INDEX mon_windows_start ON mon_windows (window_start)",
            """CREATE TABLE mon_reference (
                model TEXT PRIMARY KEY,
                source TEXT NOT NULL,
                complete BIGINT NOT NULL,
                windows BIGINT NOT NULL,
                n BIGINT NOT NULL,
                counts TEXT NOT NULL,
                first_window BIGINT,
                last_window BIGINT,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE mon_predictions (
                id TEXT PRIMARY KEY,
                model TEXT NOT NULL,
                key_id TEXT NOT NULL,
                score DOUBLE PRECISION NOT NULL,
                label BIGINT,
                created_at DOUBLE PRECISION NOT NULL,
                labelled_at DOUBLE PRECISION
            )""",
            "CREATE INDEX mon_predictions_labelled ON mon_predictions (model, labelled_at)",
            "CREATE INDEX mon_predictions_created ON mon_predictions (created_at)",
        ],
    ),
]

_WINDOW_COLS = "model, window_start, window_s, n, state, fired, max_psi, max_kl, drift, counts, instances, evaluated_at"
_REF_COLS = "model, source, complete, windows, n, counts, first_window, last_window, updated_at"


def migrate_monitor(store: StateStore) -> list[int]:
    """Apply the missing monitor migrations (serialised across processes by the store's transaction)."""
    applied = store.apply_migrations("monitor_schema_version", MONITOR_MIGRATIONS)
    if applied:
        log.info("monitor tables: applied migrations %s", applied)
    return applied


@dataclass
class WindowRow:
    model: str
    window_start: int
    window_s: int
    n: int
    state: str  # reference | insufficient | quiet | fired
    fired: bool
    max_psi: float | None
    max_kl: float | None
    drift: dict[str, Any]
    counts: Counts
    instances: int
    evaluated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "window_start": self.window_start, "window_s": self.window_s, "n": self.n,
                "state": self.state, "fired": self.fired, "max_psi": self.max_psi, "max_kl": self.max_kl,
                "drift": self.drift, "instances": self.instances, "evaluated_at": self.evaluated_at}


@dataclass
class ReferenceRow:
    model: str
    source: str  # auto | pinned
    complete: bool
    windows: int
    n: int
    counts: Counts
    first_window: int | None
    last_window: int | None
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "complete": self.complete, "windows": self.windows,
                "n": self.n, "first_window": self.first_window, "last_window": self.last_window,
                "updated_at": self.updated_at}


@dataclass
class DriftRate:
    rate: float  # fired / tested; 0 when nothing was tested
    tested: int
    fired: int
    by_state: dict[str, int] = field(default_factory=dict)


def _window(row: tuple) -> WindowRow:
    model, ws, wsec, n, state, fired, mpsi, mkl, drift, counts, inst, at = row
    return WindowRow(model, int(ws), int(wsec), int(n), state, bool(fired),
                     float(mpsi) if mpsi is not None else None, float(mkl) if mkl is not None else None,
                     json.loads(drift) if drift else {}, Counts.from_json(counts), int(inst), float(at))


def _reference(row: tuple) -> ReferenceRow:
    model, source, complete, windows, n, counts, first, last, at = row
    return ReferenceRow(model, source, bool(complete), int(windows), int(n), Counts.from_json(counts),
                        int(first) if first is not None else None, int(last) if last is not None else None, float(at))


class WindowStore:
    """Reads and writes of the monitor's tables on one :class:`StateStore` (blocking)."""

    def __init__(self, store: StateStore, *, migrate: bool = True):
        self.store = store
        if migrate:
            migrate_monitor(store)

    # -- partial windows (each process its own rows) -------------------------------------------
    def put_partials(self, instance: str, rows: Iterable[tuple[str, int, int, Counts]]) -> int:
        """Write this process's cumulative ``(model, window_start, window_s, counts)``; returns the rows written."""
        rows = list(rows)
        if not rows:
            return 0
        now = time.time()
        with self.store.transaction():
            for model, start, width, counts in rows:
                self.store.execute(
                    "INSERT INTO mon_partials (model, window_start, window_s, instance, n, counts, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, window_start, instance) DO UPDATE SET "
                    "n = excluded.n, counts = excluded.counts, updated_at = excluded.updated_at",
                    (model, int(start), int(width), instance, counts.n, counts.to_json(), now))
        return len(rows)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate_ready(self, settings: Any, now: float | None = None) -> list[WindowRow]:
        """Evaluate every window that ended at least ``settings.grace`` ago and is not evaluated yet
        (oldest first, each exactly once across processes); returns the windows this call evaluated."""
        now = time.time() if now is None else now
        ready = self.store.execute(
            "SELECT DISTINCT model, window_start, window_s FROM mon_partials WHERE window_start + window_s <= ? "
            "ORDER BY window_start", (now - settings.grace,))
        done: list[WindowRow] = []
        for model, start, width in ready:
            row = self._evaluate_one(model, int(start), int(width), settings, now)
            if row is not None:
                done.append(row)
        return done

    def _evaluate_one(self, model: str, start: int, width: int, settings: Any, now: float) -> WindowRow | None:
        with self.store.transaction():
            exists = self.store.execute("SELECT 1 FROM mon_windows WHERE model = ? AND window_start = ?",
                                        (model, start))
            parts = self.store.execute("SELECT counts FROM mon_partials WHERE model = ? AND window_start = ?",
                                       (model, start))
            self.store.execute("DELETE FROM mon_partials WHERE model = ? AND window_start = ?", (model, start))
            if exists:
                if parts:
                    log.info("monitor: %d late partial count(s) of %s window %d dropped (already evaluated)",
                             len(parts), model, start)
                return None
            merged = Counts()
            for (text,) in parts:
                merged.merge(Counts.from_json(text))
            ref = self._reference_locked(model)
            drift: dict[str, Any] = {}
            max_psi = max_kl = None
            fired = False
            if ref is None or not ref.complete:
                state = "reference"
                ref = ref or ReferenceRow(model, "auto", False, 0, 0, Counts(), None, None, now)
                ref.counts.merge(merged)
                ref.windows += 1
                ref.n += merged.n
                ref.first_window = start if ref.first_window is None else ref.first_window
                ref.last_window = start
                ref.complete = ref.windows >= settings.reference_windows and ref.n >= settings.min_requests
                self._put_reference_locked(ref, now)
            elif merged.n < settings.min_requests:
                state = "insufficient"
            else:
                result = compare(merged, ref.counts, settings.thresholds)
                drift, fired = result.to_dict(), result.fired
                max_psi, max_kl = result.max_psi, result.max_kl
                state = "fired" if fired else "quiet"
            row = WindowRow(model, start, width, merged.n, state, fired, max_psi, max_kl, drift, merged, len(parts),
                            now)
            self.store.execute(
                f"INSERT INTO mon_windows ({_WINDOW_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model, start, width, merged.n, state, int(fired), max_psi, max_kl,
                 json.dumps(drift, separators=(",", ":")) if drift else None, merged.to_json(), len(parts), now))
        if fired:
            log.warning("monitor: %s window %d drifted (max PSI %.3f on %s)", model, start, max_psi or 0.0,
                        ", ".join(n for n, s in drift.items() if s.get("fired")))
        return row

    # -- the reference -------------------------------------------------------------------------
    def _reference_locked(self, model: str) -> ReferenceRow | None:
        rows = self.store.execute(f"SELECT {_REF_COLS} FROM mon_reference WHERE model = ?", (model,))
        return _reference(rows[0]) if rows else None

    def _put_reference_locked(self, ref: ReferenceRow, now: float) -> None:
        self.store.execute("DELETE FROM mon_reference WHERE model = ?", (ref.model,))
        self.store.execute(f"INSERT INTO mon_reference ({_REF_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (ref.model, ref.source, int(ref.complete), ref.windows, ref.n, ref.counts.to_json(),
                            ref.first_window, ref.last_window, now))

    def reference(self, model: str) -> ReferenceRow | None:
        return self._reference_locked(model)

    def references(self) -> list[ReferenceRow]:
        return [_reference(r) for r in self.store.execute(f"SELECT {_REF_COLS} FROM mon_reference ORDER BY model")]

    def pin_reference(self, model: str, since: float | None = None, until: float | None = None) -> ReferenceRow:
        """Make the windows of ``model`` that started in [since, until) the reference (``source = pinned``)."""
        from autoglm.errors import ConfigError

        rows = self.windows(model=model, since=since, until=until)
        if not rows:
            raise ConfigError(f"no evaluated windows of model {model!r} in that range to pin as the reference; "
                              "see `autoglm monitor status` for the windows there are")
        counts = Counts()
        for r in rows:
            counts.merge(r.counts)
        now = time.time()
        ref = ReferenceRow(model, "pinned", True, len(rows), counts.n, counts, rows[0].window_start,
                           rows[-1].window_start, now)
        with self.store.transaction():
            self._put_reference_locked(ref, now)
        return ref

    def reset_reference(self, model: str | None = None) -> int:
        """Forget the reference of ``model`` (None: every model): the next windows become the new one."""
        where, params = where_clause(("model = ?", model))
        with self.store.transaction():
            n = len(self.store.execute(f"SELECT model FROM mon_reference{where}", params))
            self.store.execute(f"DELETE FROM mon_reference{where}", params)
        return n

    # -- reads -----------------------------------------------------------------------------------
    def windows(self, *, model: str | None = None, since: float | None = None, until: float | None = None,
                limit: int | None = None) -> list[WindowRow]:
        """Evaluated windows, oldest first (``limit``: the most recent ones)."""
        where, params = where_clause(("model = ?", model), ("window_start >= ?", since), ("window_start < ?", until))
        sql = f"SELECT {_WINDOW_COLS} FROM mon_windows{where} ORDER BY window_start DESC, model"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_window(r) for r in reversed(self.store.execute(sql, params))]

    def drift_rate(self, *, model: str | None = None, since: float | None = None) -> DriftRate:
        """Share of the tested windows (``quiet`` or ``fired``) since ``since`` whose drift test fired."""
        where, params = where_clause(("model = ?", model), ("window_start >= ?", since))
        by_state = {state: int(n) for state, n in self.store.execute(
            f"SELECT state, COUNT(*) FROM mon_windows{where} GROUP BY state", params)}
        tested = by_state.get("quiet", 0) + by_state.get("fired", 0)
        fired = by_state.get("fired", 0)
        return DriftRate(fired / tested if tested else 0.0, tested, fired, by_state)

    def models(self) -> list[str]:
        rows = self.store.execute("SELECT DISTINCT model FROM mon_windows UNION SELECT DISTINCT model FROM "
                                  "mon_reference UNION SELECT DISTINCT model FROM mon_predictions")
        return sorted(r[0] for r in rows)

    def pending(self) -> list[tuple[str, int, int]]:
        """``(model, window_start, processes)`` of windows with partial counts, not evaluated yet."""
        return [(m, int(ws), int(k)) for m, ws, k in self.store.execute(
            "SELECT model, window_start, COUNT(*) FROM mon_partials GROUP BY model, window_start "
            "ORDER BY window_start")]

    # -- predictions and labels ----------------------------------------------------------------
    def put_predictions(self, rows: Sequence[tuple[str, str, str, float, float]]) -> None:
        """``(response id, model, key id, score, created_at)`` of classifier-like answers (no text)."""
        if not rows:
            return
        with self.store.transaction():
            for rid, model, key_id, score, at in rows:
                self.store.execute("INSERT INTO mon_predictions (id, model, key_id, score, created_at) "
                                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                                   (rid, model, key_id, float(score), at))

    def prediction(self, rid: str) -> tuple[str, str, float, int | None] | None:
        """``(model, key id, score, label)`` of the prediction ``rid``, or None."""
        rows = self.store.execute("SELECT model, key_id, score, label FROM mon_predictions WHERE id = ?", (rid,))
        if not rows:
            return None
        model, key_id, score, label = rows[0]
        return model, key_id, float(score), int(label) if label is not None else None

    def set_label(self, rid: str, label: int, at: float | None = None) -> None:
        self.store.execute("UPDATE mon_predictions SET label = ?, labelled_at = ? WHERE id = ?",
                           (int(label), time.time() if at is None else at, rid))

    def add_labelled(self, rid: str, model: str, key_id: str, score: float, label: int,
                     at: float | None = None) -> None:
        """A prediction made elsewhere, with its label (``POST /v1/monitor/labels`` with ``score``)."""
        at = time.time() if at is None else at
        self.store.execute("INSERT INTO mon_predictions (id, model, key_id, score, label, created_at, labelled_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (rid, model, key_id, float(score), int(label), at, at))

    def labelled(self, *, model: str | None = None, since: float | None = None,
                 limit: int = 100_000) -> dict[str, list[tuple[float, int]]]:
        """``model -> [(score, label)]`` labelled since ``since`` (the most recent ``limit`` in all)."""
        where, params = where_clause(("model = ?", model), ("labelled_at >= ?", since))
        where = (where + " AND" if where else " WHERE") + " label IS NOT NULL"
        out: dict[str, list[tuple[float, int]]] = {}
        for m, score, label in self.store.execute(
                f"SELECT model, score, label FROM mon_predictions{where} ORDER BY labelled_at DESC LIMIT {int(limit)}",
                params):
            out.setdefault(m, []).append((float(score), int(label)))
        return out

    # -- retention -------------------------------------------------------------------------------
    def prune(self, older_than: float) -> int:
        """Delete windows, stale partial counts and predictions from before ``older_than`` (epoch s)."""
        with self.store.transaction():
            n = len(self.store.execute("SELECT 1 FROM mon_windows WHERE window_start < ?", (older_than,)))
            self.store.execute("DELETE FROM mon_windows WHERE window_start < ?", (older_than,))
            self.store.execute("DELETE FROM mon_partials WHERE window_start < ?", (older_than,))
            self.store.execute("DELETE FROM mon_predictions WHERE created_at < ?", (older_than,))
        return n


def served_drift_rate(store: StateStore, *, model: str | None = None, since: float | None = None) -> DriftRate:
    """:meth:`WindowStore.drift_rate` without writing anything (no windows yet: rate 0 of 0 tested)."""
    try:
        store.execute("SELECT 1 FROM monitor_schema_version WHERE version = 1")
    except StoreUnavailable:
        raise
    except Exception:  # noqa: BLE001 - the monitor never ran against this store
        return DriftRate(0.0, 0, 0)
    return WindowStore(store, migrate=False).drift_rate(model=model, since=since)
