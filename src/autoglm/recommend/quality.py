"""Quality per (model, task): observations in the state store, and the estimate routing reads.

An :class:`Observation` is one score in 0..1 about one model on one task, worth ``weight`` ratings,
from a ``source``:

* ``feedback`` - a rating of a response that model "auto" routed (``(rating + 1) / 2``; implicit
  signals such as a regeneration count ``implicit_weight``), turned into observations by
  :mod:`autoglm.recommend.learn`;
* ``evaluation`` - a metric of a pipeline's evaluate stage (one run counts ``evaluation_weight``
  ratings; a newer run of the same pipeline and metric *replaces* the older one: it measures the
  model as it is now);
* ``manual`` - ``autoglm recommend rate`` and ``POST /v1/recommend/ratings``.

Every observation has an id (``feedback:<feedback id>``, ``evaluation:<pipeline>:<metric>:<model>:<task>``,
``manual:<random>``), so recording the same thing twice - two replicas syncing one table, a restart
re-reading feedback - counts it once.

The estimate is the posterior mean with the profile's score as the prior, worth ``prior_weight`` ratings::

    quality(model, task) = (prior_weight * profile_score + sum(w_i * s_i)) / (prior_weight + sum(w_i))

so five ratings of 0 halve a prior of 0.9 (with the default prior weight 5) and one rating moves it by a sixth.

Storage: table ``rec_quality`` (one row per observation) and ``rec_cursor`` (how far the feedback
sync has read) beside the gateway's tables on the same :class:`~autoglm.gateway.store.StateStore`
(SQLite or PostgreSQL), with migrations of their own in ``recommend_schema_version``.
:class:`QualityBook` keeps an in-memory snapshot of the aggregates: the request path reads only the
snapshot, :meth:`QualityBook.refresh` (a background thread, or a command) reads the database.
Knows nothing about HTTP, feedback's tables or how tasks are identified.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Observation", "QualityEntry", "QualityStore", "QualityBook", "RECOMMEND_MIGRATIONS", "SOURCES"]

log = logging.getLogger(__name__)

SOURCES = ("feedback", "evaluation", "manual")

# (version, description, statements). Append only: a released migration is never edited.
RECOMMEND_MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "quality observations per model and task",
        [
            """CREATE TABLE rec_quality (
                id TEXT PRIMARY KEY,
                model TEXT NOT NULL,
                task TEXT NOT NULL,
                source TEXT NOT NULL,
                score DOUBLE PRECISION NOT NULL,
                weight DOUBLE PRECISION NOT NULL,
                ref TEXT,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX rec_quality_model_task ON rec_quality (model, task)",
            "CREATE TABLE rec_cursor (name TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL)",
        ],
    ),
]


@dataclass(frozen=True)
class Observation:
    model: str
    task: str
    score: float  # 0..1
    weight: float = 1.0  # how many ratings it counts as
    source: str = "manual"
    id: str = ""  # empty: a new manual id
    ref: str | None = None  # the rated response, the pipeline run, ...
    created_at: float = 0.0  # 0: now

    def __post_init__(self) -> None:
        if not (isinstance(self.score, (int, float)) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"a quality score is between 0 and 1; got {self.score}")
        if not (isinstance(self.weight, (int, float)) and 0.0 < self.weight <= 1e6):
            raise ValueError(f"weight must be a positive number of ratings; got {self.weight}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {self.source!r}")


@dataclass
class QualityEntry:
    """What was recorded for one (model, task): weighted sums overall and per source."""

    weight: float = 0.0  # sum of weights ("n" ratings)
    total: float = 0.0  # sum of weight * score
    count: int = 0  # observations
    by_source: dict[str, dict[str, float]] = field(default_factory=dict)  # source -> {n, mean, count}
    updated_at: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.total / self.weight if self.weight > 0 else None


class QualityStore:
    """The ``rec_*`` tables on one state store (blocking calls; thread-safe as the store is)."""

    def __init__(self, store: Any, *, migrate: bool = True):
        self.store = store
        if migrate:
            self.migrate()

    def migrate(self) -> list[int]:
        applied = self.store.apply_migrations("recommend_schema_version", RECOMMEND_MIGRATIONS)
        if applied:
            log.info("recommend tables: applied migrations %s", applied)
        return applied

    def add(self, obs: Observation, *, replace: bool = False) -> bool:
        """Store ``obs``; True when it is new (or, with ``replace``, changed). An id seen before is kept
        as it was unless ``replace``."""
        oid = obs.id or f"manual:{secrets.token_hex(8)}"
        at = obs.created_at or time.time()
        values = (oid, obs.model, obs.task, obs.source, float(obs.score), float(obs.weight), obs.ref, at)
        cols = "id, model, task, source, score, weight, ref, created_at"
        if replace:
            rows = self.store.execute(
                f"INSERT INTO rec_quality ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "score = excluded.score, weight = excluded.weight, ref = excluded.ref, created_at = excluded.created_at "
                "WHERE rec_quality.ref IS DISTINCT FROM excluded.ref OR rec_quality.score <> excluded.score "
                "RETURNING id", values)
        else:
            rows = self.store.execute(
                f"INSERT INTO rec_quality ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING "
                "RETURNING id", values)
        return bool(rows)

    def add_many(self, observations: Iterable[Observation]) -> int:
        """Store several in one transaction; returns how many were new."""
        with self.store.transaction():
            return sum(self.add(o) for o in observations)

    def aggregates(self) -> dict[tuple[str, str], QualityEntry]:
        out: dict[tuple[str, str], QualityEntry] = {}
        for model, task, source, count, weight, total, last in self.store.execute(
                "SELECT model, task, source, COUNT(*), SUM(weight), SUM(weight * score), MAX(created_at) "
                "FROM rec_quality GROUP BY model, task, source"):
            e = out.setdefault((model, task), QualityEntry())
            w, t = float(weight or 0.0), float(total or 0.0)
            e.weight += w
            e.total += t
            e.count += int(count)
            e.updated_at = max(e.updated_at, float(last or 0.0))
            e.by_source[source] = {"n": round(w, 4), "mean": round(t / w, 4) if w else None, "count": int(count)}
        return out

    def cursor(self, name: str) -> float | None:
        rows = self.store.execute("SELECT value FROM rec_cursor WHERE name = ?", (name,))
        return float(rows[0][0]) if rows else None

    def set_cursor(self, name: str, value: float) -> None:
        self.store.execute("INSERT INTO rec_cursor (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                           "value = excluded.value", (name, float(value)))

    def close(self) -> None:
        self.store.close()


def _open(url: str | Path | None) -> QualityStore:
    from autoglm.gateway.store import open_store

    return QualityStore(open_store(url, migrate=False))


class QualityBook:
    """The estimate per (model, task) (see the module docstring) from a snapshot of :class:`QualityStore`.

    ``store``: a :class:`QualityStore`, a state store URL or path, or None for the default state store
    (``<AUTOGLM_HOME>/state.db``); it is opened on first use, not here.
    """

    def __init__(self, store: QualityStore | str | Path | None = None, prior_weight: float = 5.0):
        self._store = store if isinstance(store, QualityStore) else None
        self._url = None if isinstance(store, QualityStore) else store
        self.prior_weight = float(prior_weight)
        self._lock = threading.Lock()
        self._snapshot: dict[tuple[str, str], QualityEntry] = {}
        self.refreshed_at: float | None = None  # epoch seconds of the last successful refresh

    @property
    def store(self) -> QualityStore:
        with self._lock:
            if self._store is None:
                self._store = _open(self._url)
            return self._store

    def close(self) -> None:
        if self._store is not None and self._url is not None:  # only what this book opened
            self._store.close()
            self._store = None

    # -- reads (the request path: memory only) ---------------------------------------------------
    def entry(self, model: str, task: str) -> QualityEntry | None:
        return self._snapshot.get((model, task))

    def quality(self, profile: Any, task: str) -> float:
        prior = profile.quality(task)
        e = self._snapshot.get((profile.name, task))
        if e is None or e.weight <= 0:
            return prior
        return (self.prior_weight * prior + e.total) / (self.prior_weight + e.weight)

    def table(self, profiles: Mapping[str, Any], tasks: Iterable[str]) -> list[dict[str, Any]]:
        """One row per (model, task) that a profile lists or that has observations."""
        rows = []
        for name, p in profiles.items():
            listed = [t for t in tasks if t in p.tasks or (name, t) in self._snapshot]
            for task in listed:
                e = self._snapshot.get((name, task))
                rows.append({"model": name, "task": task, "prior": round(p.quality(task), 4),
                             "quality": round(self.quality(p, task), 4),
                             "n": round(e.weight, 4) if e else 0.0,
                             "mean": round(e.mean, 4) if e and e.mean is not None else None,
                             "observations": e.count if e else 0, "sources": e.by_source if e else {},
                             "updated_at": e.updated_at if e else None})
        return rows

    # -- writes and refresh (blocking: a thread or a command) ------------------------------------
    def refresh(self) -> None:
        snapshot = self.store.aggregates()
        self._snapshot = snapshot  # one assignment: readers see the old or the new dict, never half
        self.refreshed_at = time.time()

    def add(self, obs: Observation, *, replace: bool = False, refresh: bool = True) -> bool:
        new = self.store.add(obs, replace=replace)
        if refresh and new:
            self.refresh()
        return new

    def record(self, model: str, task: str, score: float, weight: float = 1.0, *, source: str = "manual",
               ref: str | None = None) -> dict[str, float]:
        """Add a manual rating or an evaluation result; returns the (model, task) entry as {mean, n}."""
        self.add(Observation(model, task, score, weight, source, ref=ref))
        e = self._snapshot.get((model, task)) or QualityEntry()
        return {"mean": e.mean if e.mean is not None else 0.0, "n": e.weight, "count": e.count}
