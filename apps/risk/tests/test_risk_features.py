"""The feature SQL: point-in-time correct (random rows recomputed by brute force in Python), the same on
DuckDB, PostgreSQL and the service's SQLite path, and online scoring equal to training for the same row."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from autoglm_risk import features as F

DAY = 86_400_000


def brute(tx: pd.DataFrame, row: pd.Series) -> dict[str, float]:
    """Every feature of ``row`` from the rows strictly before it, with pandas filters and plain Python."""
    t = row.ts
    past = tx[tx.ts < t]
    out: dict[str, float] = {}
    for entity, key, (la, ca), (lb, cb) in (("user", "user_id", ("countries", "country"), ("devices", "device_id")),
                                            ("card", "card_id", ("countries", "country"), ("devices", "device_id")),
                                            ("device", "device_id", ("users", "user_id"), ("countries", "country"))):
        for w, ms in F.WINDOWS.items():
            h = past[(past[key] == row[key]) & (past.ts >= t - ms)]
            out[f"{entity}_cnt_{w}"] = len(h)
            out[f"{entity}_sum_{w}"] = h.amount.sum()
            out[f"{entity}_mean_{w}"] = h.amount.mean() if len(h) else 0.0
            out[f"{entity}_max_{w}"] = h.amount.max() if len(h) else 0.0
            out[f"{entity}_{la}_{w}"] = h[ca].nunique()
            out[f"{entity}_{lb}_{w}"] = h[cb].nunique()
            if entity == "card" and w == "1h":
                out["card_small_cnt_1h"] = int((h.amount < 5).sum())
    u = past[(past.user_id == row.user_id) & (past.ts >= t - F.HABIT_MS)]
    out["amount"] = row.amount
    out["hour"] = (t % DAY) // 3_600_000
    out["user_cnt_30d"] = len(u)
    mean = u.amount.mean() if len(u) else math.nan
    std = u.amount.std(ddof=1) if len(u) > 1 else math.nan
    out["amount_z"] = (row.amount - mean) / std if std and std == std else math.nan
    out["amount_ratio"] = row.amount / mean if mean == mean and mean else math.nan
    out["category_share_30d"] = (u.category == row.category).mean() if len(u) else math.nan
    out["new_device"] = float(not (u.device_id == row.device_id).any())
    out["new_country"] = float(not (u.country == row.country).any())
    if len(u):
        prev = u.loc[u.ts.idxmax()]
        hours = (t - prev.ts) / 3_600_000
        p1, p2, dl = math.radians(prev.lat), math.radians(row.lat), math.radians(row.lon - prev.lon)
        a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        dist = 2 * 6371 * math.asin(math.sqrt(min(1.0, a)))
        out.update(secs_since_prev=(t - prev.ts) / 1000, dist_prev_km=dist, speed_kmh=dist / max(hours, 1 / 60),
                   continent_jump=float(prev.continent != row.continent))
    else:
        out.update(secs_since_prev=math.nan, dist_prev_km=math.nan, speed_kmh=math.nan, continent_jump=0.0)
    return out


def _close(a, b) -> bool:
    a = math.nan if a is None else float(a)
    return bool(np.isclose(a, float(b), rtol=1e-6, atol=1e-6, equal_nan=True))


def _check_rows(tx: pd.DataFrame, feats: pd.DataFrame, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # the rows most likely to go wrong first: bursts (many rows within the hour), then random ones
    busy = feats.index[feats.user_cnt_1h >= 3].to_numpy()
    picks = np.concatenate([rng.choice(busy, min(len(busy), n // 3), replace=False),
                            rng.choice(len(feats), n, replace=False)])
    by_id = tx.set_index("txn_id", drop=False)
    for i in picks:
        got = feats.iloc[int(i)]
        want = brute(tx, by_id.loc[got.txn_id])
        wrong = {k: (got[k], v) for k, v in want.items() if not _close(got[k], v)}
        assert not wrong, f"txn {got.txn_id}: {wrong}"


@pytest.fixture(scope="module")
def duck_features(duck_store):
    return F.training_features(duck_store)


def test_training_features_are_point_in_time_correct_duckdb(small_data, duck_features):
    feats = duck_features
    assert len(feats) == len(small_data.transactions)
    assert set(F.FEATURES) <= set(feats.columns)
    _check_rows(small_data.transactions, feats, 40, seed=1)
    # a row's features never see the row itself nor anything after it: nothing has history at the start
    first = feats.iloc[0]
    assert first.user_cnt_7d == 0 and first.new_device == 1


def test_postgres_gives_the_same_features_as_duckdb(duck_store, pg_store):
    since = int(duck_store.query("SELECT MIN(ts) FROM transactions")[0][0]) + 5 * DAY
    until = since + DAY
    a = F.training_features(duck_store, since, until).reset_index(drop=True)
    b = F.training_features(pg_store, since, until).reset_index(drop=True)
    assert len(a) == len(b) > 100
    assert (a.txn_id.to_numpy() == b.txn_id.to_numpy()).all()
    for col in F.FEATURES:
        assert np.allclose(a[col].astype(float), b[col].astype(float), rtol=1e-6, atol=1e-6, equal_nan=True), col


def test_online_features_equal_training_features_for_the_same_row(small_data, duck_store, pg_store, duck_features):
    tx = small_data.transactions
    feats = duck_features.set_index("txn_id")
    cache = F.OnlineFeatures(duck_store, now_ms=int(tx.ts.max()) + 1)
    rng = np.random.default_rng(3)
    rows = tx.iloc[rng.choice(np.arange(len(tx) // 2, len(tx)), 8, replace=False)]
    for _, row in rows.iterrows():
        incoming = {k: row[k] for k in F.INCOMING_FIELDS}
        incoming["txn_id"] = 10**12 + int(row.txn_id)  # not stored: the history is every stored row before it
        want = feats.loc[row.txn_id]
        for engine, got in (("duckdb", F.online_features(duck_store, incoming)),
                            ("postgresql", F.online_features(pg_store, incoming)),
                            ("sqlite", cache.compute(incoming))):
            wrong = {k: (got[k], want[k]) for k in F.FEATURES if not _close(got[k], want[k])}
            assert not wrong, f"{engine} txn {row.txn_id}: {wrong}"


def test_the_online_cache_sees_what_the_service_adds_and_nothing_later():
    from autoglm.errors import InvalidRequestError

    cache = F.OnlineFeatures()
    base = {"user_id": 1, "card_id": 1, "device_id": 1, "merchant_id": 1, "category": "grocery", "amount": 10.0,
            "country": "CN", "continent": "AS", "lat": 35.0, "lon": 105.0}
    for i in range(5):
        cache.add({**base, "txn_id": i, "ts": 1_000_000_000 + i * 60_000})
    cache.add({**base, "txn_id": 99, "ts": 2_000_000_000})  # later than the query: must not count
    f = cache.compute({**base, "txn_id": 100, "ts": 1_000_000_000 + 10 * 60_000, "amount": 500.0,
                       "device_id": 7, "country": "US", "continent": "NA", "lat": 39.0, "lon": -98.0})
    assert f["user_cnt_1h"] == 5 and f["user_sum_1h"] == 50.0 and f["new_device"] == 1 and f["new_country"] == 1
    assert f["continent_jump"] == 1 and f["speed_kmh"] > 10_000 and f["device_cnt_24h"] == 0
    with pytest.raises(InvalidRequestError) as e:
        cache.compute({**base, "ts": 5})
    assert e.value.param == "txn_id"
