"""The features, in SQL: one definition for training and for online scoring.

:data:`FEATURE_SQL` computes every feature of the *target* rows of a relation ``ev`` (the events:
transactions with an ``is_target`` flag) from the rows of ``ev`` strictly before each target's
``ts``: every feature is an aggregate over pairs (target, an earlier row of the same user / card / device)
joined with ``h.ts < t.ts`` (timestamps are integer milliseconds) and grouped per target. Only the
relation ``ev`` differs between the two uses:

* training (:func:`training_features`): ``ev`` = the stored transactions of a period plus the 30 days
  before it, every row of the period a target — each row's features see only its own past (point in
  time correct; ``apps/risk/tests/test_risk_features.py`` recomputes random rows by brute force);
* online (:func:`online_features`): ``ev`` = the stored history of the incoming transaction's user,
  card and device over the last 30 days, plus the incoming transaction as the only target.

Features (per user ``user_``, card ``card_`` and device ``device_``, over 1 h / 24 h / 7 d): count,
sum, mean and max of the amount; distinct countries and devices (per device: distinct users and
countries); over the user's last 30 days: the count, the amount z-score and ratio to the mean, the
share of the category, time since the previous transaction, distance and implied speed from its
location, new-device / new-country flags and a continent jump; the card's tiny amounts (< 5) in the
last hour; the hour of day. The SQL is portable (DuckDB and PostgreSQL run the same text).

This module knows nothing about models or rules: it returns frames.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autoglm.errors import InvalidRequestError

if TYPE_CHECKING:
    import pandas as pd

    from autoglm_risk.store import Store

__all__ = ["FEATURE_SQL", "OnlineFeatures", "FEATURES", "MODEL_FEATURES", "CATEGORICAL", "WINDOWS", "HABIT_MS", "training_features",
           "online_features", "events_sql_training", "events_sql_online", "INCOMING_FIELDS"]

WINDOWS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000}
HABIT_MS = 2_592_000_000  # 30 days: the user's "history" for habits, z-scores and new-device flags
_DOUBLE = "DOUBLE PRECISION"
EVENT_COLUMNS = ["txn_id", "ts", "user_id", "card_id", "device_id", "merchant_id", "category", "amount", "country",
                 "continent", "lat", "lon"]
INCOMING_FIELDS = EVENT_COLUMNS  # what an incoming transaction must carry (after IP/merchant lookups)


def _entity(entity: str, key: str, of: tuple[tuple[str, str], tuple[str, str]]) -> tuple[str, list[str], list[str]]:
    """The pairs (target, an earlier row of the same user / card / device within 7 days) and two grouped
    passes over them: count, sum, mean, max per window; distinct values per window.

    Window aggregates over RANGE frames cost a pass each (60 of them were most of the time); one hash
    aggregate over the pairs does them all. Distinct values: per target and value the last time it was
    seen (a grouped pass per kind of value), then the values last seen inside each window are counted —
    faster than COUNT(DISTINCT) per window."""
    (la, ca), (lb, cb) = of
    longest = max(WINDOWS.values())
    pairs = (f"SELECT t.txn_id, t.ts AS t_ts, h.ts AS h_ts, h.amount, h.{ca} AS a, h.{cb} AS b\n"
             f"    FROM ev t JOIN ev h ON h.{key} = t.{key} AND h.ts < t.ts AND h.ts >= t.ts - {longest}\n"
             f"    WHERE t.is_target")
    stats, stat_names = [], []
    for w, ms in WINDOWS.items():
        inside = f"h_ts >= t_ts - {ms}"
        cnt = f"SUM(CASE WHEN {inside} THEN 1 ELSE 0 END)"
        total = f"SUM(CASE WHEN {inside} THEN amount ELSE 0 END)"
        for stat, e in (("cnt", cnt), ("sum", total), ("mean", f"COALESCE({total} / NULLIF({cnt}, 0), 0)"),
                        ("max", f"COALESCE(MAX(CASE WHEN {inside} THEN amount END), 0)")):
            stats.append(f"CAST({e} AS {_DOUBLE}) AS {entity}_{stat}_{w}")
            stat_names.append(f"{entity}_{stat}_{w}")
    if entity == "card":  # card testing: tiny amounts on the card in the last hour
        stats.append(f"CAST(SUM(CASE WHEN h_ts >= t_ts - {WINDOWS['1h']} AND amount < 5 THEN 1 ELSE 0 END) "
                     f"AS {_DOUBLE}) AS card_small_cnt_1h")
        stat_names.append("card_small_cnt_1h")
    cols, names = [], []
    for label, alias in ((la, "a"), (lb, "b")):
        for w, ms in WINDOWS.items():
            cols.append(f"CAST(SUM(CASE WHEN {alias} IS NOT NULL AND last_ts >= t_ts - {ms} THEN 1 ELSE 0 END) "
                        f"AS {_DOUBLE}) AS {entity}_{label}_{w}")
            names.append(f"{entity}_{label}_{w}")
    p = f"p_{entity}"
    sql = (f"{p} AS (\n  {pairs}\n),\n"
           f"s_{entity} AS (\n  SELECT txn_id, {', '.join(stats)}\n  FROM {p} GROUP BY txn_id\n),\n"
           f"d_{entity} AS (\n  SELECT txn_id, {', '.join(cols)}\n  FROM (SELECT txn_id, t_ts, a, NULL AS b, MAX(h_ts) AS "
           f"last_ts FROM {p} GROUP BY txn_id, t_ts, a\n    UNION ALL SELECT txn_id, t_ts, NULL, b, MAX(h_ts) FROM {p} "
           f"GROUP BY txn_id, t_ts, b) g\n  GROUP BY txn_id\n)")
    return sql, stat_names, names


def _build() -> tuple[str, list[str]]:
    parts, stat_names, distinct_names = [], [], []
    for entity, key, of in (("user", "user_id", (("countries", "country"), ("devices", "device_id"))),
                            ("card", "card_id", (("countries", "country"), ("devices", "device_id"))),
                            ("device", "device_id", (("users", "user_id"), ("countries", "country")))):
        sql, sn, dn = _entity(entity, key, of)
        parts.append(sql)
        stat_names += [(entity, n) for n in sn]
        distinct_names += [(entity, n) for n in dn]
    hours_since = f"CAST(w.ts - w.prev_ts AS {_DOUBLE}) / 3600000"
    a = ("POWER(SIN(RADIANS(w.lat - w.prev_lat) / 2), 2) + COS(RADIANS(w.prev_lat)) * COS(RADIANS(w.lat)) * "
         "POWER(SIN(RADIANS(w.lon - w.prev_lon) / 2), 2)")
    haversine = f"2 * 6371 * ASIN(SQRT(CASE WHEN {a} > 1 THEN 1 ELSE {a} END))"  # rounding may give 1 + 1e-16
    derived = {
        "amount": "w.amount",
        "hour": f"FLOOR(CAST(MOD(w.ts, 86400000) AS {_DOUBLE}) / 3600000)",
        "user_cnt_30d": "w.user_cnt_30d",
        "amount_z": "(w.amount - w.user_mean_30d) / NULLIF(SQRT(CASE WHEN w.user_var_30d > 0 THEN w.user_var_30d ELSE 0 "
                    "END), 0)",
        "amount_ratio": "w.amount / NULLIF(w.user_mean_30d, 0)",
        "category_share_30d": f"CAST(w.user_category_cnt_30d AS {_DOUBLE}) / NULLIF(w.user_cnt_30d, 0)",
        "secs_since_prev": f"CAST(w.ts - w.prev_ts AS {_DOUBLE}) / 1000",
        "dist_prev_km": haversine,
        "speed_kmh": f"{haversine} / (CASE WHEN {hours_since} > {1 / 60!r} THEN {hours_since} ELSE {1 / 60!r} END)",
        "new_device": "CASE WHEN w.user_device_cnt_30d = 0 THEN 1 ELSE 0 END",
        "new_country": "CASE WHEN w.user_country_cnt_30d = 0 THEN 1 ELSE 0 END",
        "continent_jump": "CASE WHEN w.prev_continent IS NOT NULL AND w.prev_continent <> w.continent THEN 1 ELSE 0 END",
    }
    # The user's 30-day habits, as pairs (target, an earlier row of the same user within 30 days) grouped per
    # target, like the 1 h / 24 h / 7 d statistics: window functions over RANGE frames compute every row of
    # every partition (online: the card's and device's other users too) where only the targets are needed.
    # The previous transaction is the latest earlier row (ties at the same millisecond: the largest values).
    habit = (
        f"p_habit AS (\n  SELECT t.txn_id, t.device_id AS t_device, t.country AS t_country, t.category AS t_category,\n"
        f"    h.ts AS h_ts, h.amount, h.device_id, h.country, h.category, h.lat, h.lon, h.continent\n"
        f"    FROM ev t JOIN ev h ON h.user_id = t.user_id AND h.ts < t.ts AND h.ts >= t.ts - {HABIT_MS}\n"
        f"    WHERE t.is_target\n),\n"
        "a_habit AS (\n  SELECT txn_id, COUNT(*) AS user_cnt_30d, AVG(amount) AS user_mean_30d,\n"
        "    (SUM(amount * amount) - SUM(amount) * SUM(amount) / COUNT(*)) / NULLIF(COUNT(*) - 1, 0) AS user_var_30d,\n"
        "    MAX(h_ts) AS prev_ts, SUM(CASE WHEN device_id = t_device THEN 1 ELSE 0 END) AS user_device_cnt_30d,\n"
        "    SUM(CASE WHEN country = t_country THEN 1 ELSE 0 END) AS user_country_cnt_30d,\n"
        "    SUM(CASE WHEN category = t_category THEN 1 ELSE 0 END) AS user_category_cnt_30d\n"
        "  FROM p_habit GROUP BY txn_id\n),\n"
        "l_habit AS (\n  SELECT p.txn_id, MAX(p.lat) AS prev_lat, MAX(p.lon) AS prev_lon, MAX(p.continent) AS prev_continent\n"
        "  FROM p_habit p JOIN a_habit a ON a.txn_id = p.txn_id AND p.h_ts = a.prev_ts GROUP BY p.txn_id\n)")
    w_sql = (
        "SELECT ev.txn_id, ev.is_target, ev.ts, ev.user_id, ev.card_id, ev.device_id, ev.merchant_id, ev.category, "
        "ev.amount, ev.country, ev.continent, ev.lat, ev.lon,\n    "
        "COALESCE(a.user_cnt_30d, 0) AS user_cnt_30d, a.user_mean_30d, a.user_var_30d, a.prev_ts, l.prev_lat, "
        "l.prev_lon, l.prev_continent,\n    COALESCE(a.user_device_cnt_30d, 0) AS user_device_cnt_30d, "
        "COALESCE(a.user_country_cnt_30d, 0) AS user_country_cnt_30d,\n    "
        "COALESCE(a.user_category_cnt_30d, 0) AS user_category_cnt_30d\n"
        "  FROM ev LEFT JOIN a_habit a ON a.txn_id = ev.txn_id LEFT JOIN l_habit l ON l.txn_id = ev.txn_id\n"
        "  WHERE ev.is_target")
    select = (["w.txn_id", "w.ts", "w.user_id", "w.card_id", "w.device_id", "w.merchant_id", "w.category",
               "w.country", "w.continent", "w.prev_continent"]
              + [f"COALESCE(s_{e}.{n}, 0) AS {n}" for e, n in stat_names]
              + [f"COALESCE(d_{e}.{n}, 0) AS {n}" for e, n in distinct_names]
              + [f"CAST({e} AS {_DOUBLE}) AS {n}" for n, e in derived.items()])
    joins = " ".join(f"LEFT JOIN {k}_{e} ON {k}_{e}.txn_id = w.txn_id" for e in ("user", "card", "device")
                     for k in ("s", "d"))
    sql = (f"WITH ev AS (\n{{events}}\n),\n{habit},\nw AS (\n  {w_sql}\n),\n" + ",\n".join(parts) +
           "\nSELECT " + ",\n  ".join(select) + f"\nFROM w {joins}\nWHERE w.is_target\nORDER BY w.ts, w.txn_id")
    return sql, [n for _, n in stat_names] + [n for _, n in distinct_names] + list(derived)


FEATURE_SQL, FEATURES = _build()
CATEGORICAL = ["category"]
MODEL_FEATURES = FEATURES + CATEGORICAL  # what the model sees

_COLS = ", ".join(EVENT_COLUMNS)


def events_sql_training() -> str:
    """``ev`` for training: the period [since, until) as targets, with the 30 days before it as history."""
    return (f"  SELECT {_COLS}, (ts >= :since AND ts < :until) AS is_target FROM transactions\n"
            f"  WHERE ts >= :since - {HABIT_MS} AND ts < :until")


def events_sql_online() -> str:
    """``ev`` for one incoming transaction: its user's, card's and device's last 30 days, and itself."""
    incoming = ", ".join([
        "CAST(:txn_id AS BIGINT)", "CAST(:ts AS BIGINT)", "CAST(:user_id AS BIGINT)", "CAST(:card_id AS BIGINT)",
        "CAST(:device_id AS BIGINT)", "CAST(:merchant_id AS BIGINT)", "CAST(:category AS VARCHAR)",
        f"CAST(:amount AS {_DOUBLE})", "CAST(:country AS VARCHAR)", "CAST(:continent AS VARCHAR)",
        f"CAST(:lat AS {_DOUBLE})", f"CAST(:lon AS {_DOUBLE})"])
    return (f"  SELECT {_COLS}, FALSE AS is_target FROM transactions\n"
            f"  WHERE ts >= CAST(:ts AS BIGINT) - {HABIT_MS} AND ts < CAST(:ts AS BIGINT)\n"
            f"    AND (user_id = CAST(:user_id AS BIGINT) OR card_id = CAST(:card_id AS BIGINT) "
            f"OR device_id = CAST(:device_id AS BIGINT))\n"
            f"  UNION ALL SELECT {incoming}, TRUE")


def training_features(store: "Store", since: int | None = None, until: int | None = None,
                      labels: bool = True) -> "pd.DataFrame":
    """Features of every stored transaction with ``since <= ts < until`` (epoch ms; default all), each from
    its own past only; with ``labels`` the ``is_fraud`` and ``fraud_type`` columns are joined on."""
    if since is None or until is None:
        lo, hi = store.query("SELECT MIN(ts), MAX(ts) FROM transactions")[0]
        since = int(lo) if since is None else since
        until = int(hi) + 1 if until is None else until
    sql = FEATURE_SQL.replace("{events}", events_sql_training())
    if labels:
        sql = (f"SELECT f.*, x.is_fraud, x.fraud_type FROM (\n{sql}\n) f JOIN transactions x ON x.txn_id = f.txn_id "
               "ORDER BY f.ts, f.txn_id")
    return store.frame(sql, {"since": int(since), "until": int(until)})


_ONLINE_SQL = FEATURE_SQL.replace("{events}", events_sql_online())


def online_features(store: "Store", txn: dict[str, Any]) -> dict[str, Any]:
    """The features of one incoming transaction (a dict with :data:`INCOMING_FIELDS`) from the stored history."""
    missing = [k for k in INCOMING_FIELDS if txn.get(k) is None]
    if missing:
        raise InvalidRequestError(f"the transaction has no {missing[0]!r}", param=missing[0])
    row = store.frame(_ONLINE_SQL, {k: txn[k] for k in INCOMING_FIELDS})
    return row.iloc[0].to_dict()


class OnlineFeatures:
    """Online scoring at service speed: the same :data:`FEATURE_SQL` with the same online ``ev``
    (:func:`events_sql_online`), run by an in-memory SQLite that holds the store's last 30 days.

    DuckDB runs this query in tens of milliseconds whatever the input size (it plans and schedules a
    parallel pipeline per operator); SQLite, with indexes on user, card and device, runs it over the
    incoming transaction's ~10-200 history rows in a few milliseconds. The replica is loaded from the
    store and told of every transaction the service stores (:meth:`add`), so it equals the stored
    history; the store stays the source of truth (:func:`online_features` reads it directly, and tests
    compare the two). One connection behind a lock: decisions are short and CPU-bound.
    """

    def __init__(self, store: "Store | None" = None, *, now_ms: int | None = None):
        import sqlite3
        import threading

        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE TABLE transactions (txn_id INTEGER, ts INTEGER, user_id INTEGER, card_id INTEGER, "
                         "device_id INTEGER, merchant_id INTEGER, category TEXT, amount REAL, country TEXT, "
                         "continent TEXT, lat REAL, lon REAL)")
        self.rows, self._newest, self._since_prune = 0, 0, 0
        if store is not None:
            hi = now_ms if now_ms is not None else (store.query("SELECT MAX(ts) FROM transactions")[0][0] or 0)
            df = store.frame(f"SELECT {_COLS} FROM transactions WHERE ts >= :lo ORDER BY ts",
                             {"lo": int(hi) - HABIT_MS})
            rows = [tuple(_plain(v) for v in r) for r in df.itertuples(index=False)]
            self._db.executemany(_INSERT, rows)
            self.rows = len(rows)
            self._newest = max((r[1] for r in rows), default=0)
        for key in ("user_id", "card_id", "device_id"):
            self._db.execute(f"CREATE INDEX tx_{key} ON transactions ({key}, ts)")

    def add(self, txn: dict[str, Any]) -> None:
        """Record a stored transaction (a dict with :data:`INCOMING_FIELDS`)."""
        row = tuple(_plain(txn[k]) for k in EVENT_COLUMNS)
        with self._lock:
            self._db.execute(_INSERT, row)
            self.rows += 1
            self._newest = max(self._newest, int(row[1]))
            self._since_prune += 1
            if self._since_prune >= 10_000:  # drop what no query can reach any more
                self._since_prune = 0
                self._db.execute("DELETE FROM transactions WHERE ts < ?", (self._newest - 2 * HABIT_MS,))

    def compute(self, txn: dict[str, Any]) -> dict[str, Any]:
        """The features of one incoming transaction; the same values :func:`online_features` gives."""
        missing = [k for k in INCOMING_FIELDS if txn.get(k) is None]
        if missing:
            raise InvalidRequestError(f"the transaction has no {missing[0]!r}", param=missing[0])
        params = {k: _plain(txn[k]) for k in INCOMING_FIELDS}
        with self._lock:
            cur = self._db.execute(_ONLINE_SQL, params)
            values = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], values))


_INSERT = "INSERT INTO transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
