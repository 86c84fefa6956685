"""Synthetic payment data with labelled fraud: seeded, deterministic, vectorised numpy.

:func:`generate` draws users (home country, amount habits, daily rhythm, favourite categories,
sometimes a trip abroad), their cards and devices, merchants by category, and their legitimate
transactions; then injects labelled fraud events of five kinds:

* ``velocity_burst`` — 6-14 purchases on one card within ~30 minutes from a fraudster's device;
* ``card_testing`` — 4-9 tiny amounts at digital-goods merchants, then 1-2 large ones;
* ``account_takeover`` — a new device in a new country on another continent, then high amounts;
* ``impossible_travel`` — the card used on another continent minutes after a purchase at home;
* ``category_anomaly`` — a large amount in a risky category the user never buys in, from the user's
  own device and country (the hard one: only the amount and the category give it away).

Legitimate look-alikes keep every single signal ambiguous: trips abroad (new country, continent jump),
shopping sprees (a burst of purchases within the hour), new phones (a new device from some day on),
wealthy users buying cars (amounts above 50,000).

Identifiers are integers (no card numbers anywhere: a card is ``card_id``); IP addresses are drawn
from ``10.0.0.0/8`` with the second octet naming the country (the ``countries`` table maps it).
Timestamps are epoch milliseconds, unique per user (a tie is moved by 1 ms), so "strictly before"
is well defined. The same ``seed`` and sizes give the same frames, byte for byte.

This module knows nothing about databases or features; :mod:`.store` writes its frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Dataset", "generate", "COUNTRIES", "CATEGORIES", "FRAUD_TYPES", "DAY_MS", "HOUR_MS",
           "DEFAULT_START_MS"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

# (code, continent, latitude, longitude, weight of users living there)
COUNTRIES = [
    ("CN", "AS", 35.0, 105.0, 30), ("JP", "AS", 36.0, 138.0, 6), ("KR", "AS", 36.5, 127.8, 4),
    ("SG", "AS", 1.35, 103.8, 2), ("IN", "AS", 21.0, 78.0, 6), ("TH", "AS", 15.0, 101.0, 2),
    ("US", "NA", 39.0, -98.0, 14), ("CA", "NA", 56.0, -106.0, 3), ("MX", "NA", 23.0, -102.0, 2),
    ("GB", "EU", 54.0, -2.0, 5), ("DE", "EU", 51.0, 10.0, 5), ("FR", "EU", 46.0, 2.0, 4),
    ("ES", "EU", 40.0, -4.0, 2), ("IT", "EU", 42.8, 12.8, 2), ("NL", "EU", 52.1, 5.3, 1),
    ("BR", "SA", -10.0, -55.0, 3), ("AR", "SA", -34.0, -64.0, 1), ("CO", "SA", 4.0, -72.0, 1),
    ("AU", "OC", -25.0, 134.0, 2), ("NZ", "OC", -41.0, 174.0, 1),
    ("ZA", "AF", -29.0, 24.0, 1), ("NG", "AF", 9.0, 8.0, 1), ("EG", "AF", 26.0, 30.0, 1),
    ("RU", "EU", 60.0, 90.0, 2),
]
# (category, amount multiplier, weight in ordinary users' habits, risky: fraudsters like it)
CATEGORIES = [
    ("grocery", 1.0, 10, False), ("restaurants", 1.3, 8, False), ("transport", 0.6, 6, False),
    ("fuel", 1.8, 4, False), ("pharmacy", 0.9, 3, False), ("clothing", 2.5, 4, False),
    ("entertainment", 1.2, 4, False), ("utilities", 3.0, 2, False), ("travel", 9.0, 1.5, False),
    ("digital_goods", 0.5, 4, True), ("electronics", 6.0, 1.5, True), ("gift_cards", 2.5, 0.2, True),
    ("crypto", 12.0, 0.05, True), ("jewelry", 15.0, 0.1, True), ("car_dealer", 1.0, 0.0, False),
]
FRAUD_TYPES = ["velocity_burst", "card_testing", "account_takeover", "impossible_travel", "category_anomaly"]
CAT_INDEX = {c[0]: i for i, c in enumerate(CATEGORIES)}
N_FRAUD_DEVICES = 60  # a shared pool of fraudsters' devices (ids above every user's)
UPGRADE_DEVICE_BASE = 10_000_000  # a user's new phone: this + user_id


@dataclass
class Dataset:
    """The generated tables (pandas frames); ``transactions`` sorted by ``ts``."""

    countries: "pd.DataFrame"
    merchants: "pd.DataFrame"
    users: "pd.DataFrame"
    cards: "pd.DataFrame"
    devices: "pd.DataFrame"
    transactions: "pd.DataFrame"
    start_ms: int = DEFAULT_START_MS
    days: int = 0
    seed: int = 0
    info: dict = field(default_factory=dict)

    def tables(self) -> dict[str, "pd.DataFrame"]:
        return {"countries": self.countries, "merchants": self.merchants, "users": self.users,
                "cards": self.cards, "devices": self.devices, "transactions": self.transactions}


def _choice_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each entry of ``rows`` draw a column index from ``probs[row]`` ([R, K], rows sum to 1) without
    building an [N, K] matrix: offset each row's CDF by its row number and search once."""
    R, K = probs.shape
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(R)[:, None]).ravel()
    u = rng.random(len(rows))
    pos = np.searchsorted(flat, rows + u, side="right")
    return np.clip(pos - rows * K, 0, K - 1)


def _ip(rng: np.random.Generator, country: np.ndarray, host: np.ndarray | None = None) -> np.ndarray:
    host = rng.integers(0, 65536, len(country)) if host is None else host
    return np.char.add(np.char.add(np.char.add("10.", country.astype(str)), "."),
                       np.char.add(np.char.add((host // 256).astype(str), "."), (host % 256).astype(str)))


def generate(n_users: int = 5000, days: int = 30, *, seed: int = 0, start_ms: int = DEFAULT_START_MS,
             fraud_rate: float = 1.0, n_merchants: int = 1500) -> Dataset:
    """Draw a dataset (see the module docstring). ``fraud_rate`` scales how many fraud events there are
    (1.0: about one event per 20 users per month, roughly 1 % of transactions)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_c, n_k = len(COUNTRIES), len(CATEGORIES)
    c_lat = np.array([c[2] for c in COUNTRIES])
    c_lon = np.array([c[3] for c in COUNTRIES])
    c_cont = np.array([c[1] for c in COUNTRIES])
    c_w = np.array([c[4] for c in COUNTRIES], dtype=float)
    k_mult = np.array([c[1] for c in CATEGORIES])
    k_w = np.array([c[2] for c in CATEGORIES], dtype=float)

    # merchants: each in one category, more merchants where people shop more
    m_share = np.maximum(k_w, 0.5) / np.maximum(k_w, 0.5).sum()
    per_cat = np.maximum(3, np.round(m_share * n_merchants).astype(int))
    m_cat = np.repeat(np.arange(n_k), per_cat)
    m_off = np.concatenate([[0], np.cumsum(per_cat)[:-1]])
    m_country = rng.choice(n_c, len(m_cat), p=c_w / c_w.sum())

    # users and their habits
    U = n_users
    home = rng.choice(n_c, U, p=c_w / c_w.sum())
    rate = np.clip(rng.gamma(2.0, 1.0, U), 0.15, 8.0)  # transactions per day
    mu = rng.normal(3.0, 0.6, U)  # log amount
    sigma = rng.uniform(0.35, 0.8, U)
    peak = rng.normal(14.0, 3.0, U)
    prefs = rng.dirichlet(np.full(n_k, 0.4), U) * k_w[None, :]
    wealthy = rng.random(U) < 0.01  # sometimes buy a car: legitimate amounts above 50,000
    prefs[:, CAT_INDEX["car_dealer"]] = np.where(wealthy, 0.02, 0.0)
    prefs /= prefs.sum(axis=1, keepdims=True)
    n_dev = 1 + (rng.random(U) < 0.4)
    n_card = 1 + (rng.random(U) < 0.3)
    dev_base = np.concatenate([[0], np.cumsum(n_dev)[:-1]])
    card_base = np.concatenate([[0], np.cumsum(n_card)[:-1]])
    n_devices_users = int(n_dev.sum())
    home_host = rng.integers(0, 65536, U)
    trip = rng.random(U) < 0.08
    trip_start = rng.integers(0, max(1, days - 2), U)
    trip_len = rng.integers(2, 10, U)
    trip_country = rng.choice(n_c, U, p=c_w / c_w.sum())

    # legitimate transactions
    n_tx = rng.poisson(rate * days)
    uid = np.repeat(np.arange(U), n_tx)
    N = len(uid)
    day = rng.integers(0, days, N)
    r = rng.random(N)
    hour = np.where(r < 0.7, np.round(rng.normal(peak[uid], 2.5)), np.where(r < 0.95, rng.integers(7, 24, N),
                                                                               rng.integers(0, 7, N)))
    hour = np.mod(hour, 24).astype(np.int64)
    ts = start_ms + day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, N)
    cat = _choice_rows(rng, prefs, uid)
    merchant = m_off[cat] + rng.integers(0, per_cat[cat])
    amount = np.exp(mu[uid] + sigma[uid] * rng.standard_normal(N)) * k_mult[cat]
    cars = cat == CAT_INDEX["car_dealer"]
    amount[cars] = rng.uniform(20_000, 90_000, int(cars.sum()))
    device = dev_base[uid] + np.where((n_dev[uid] > 1) & (rng.random(N) < 0.15), 1, 0)
    card = card_base[uid] + np.where((n_card[uid] > 1) & (rng.random(N) < 0.2), 1, 0)
    on_trip = trip[uid] & (day >= trip_start[uid]) & (day < trip_start[uid] + trip_len[uid])
    country = np.where(on_trip, trip_country[uid], home[uid])
    host = np.where(on_trip | (rng.random(N) < 0.1), rng.integers(0, 65536, N), home_host[uid])
    # legitimate look-alikes, so that no single signal gives fraud away: a shopping spree (many purchases
    # within the hour, like a velocity burst) and a new phone (a new device from some day on)
    spree = np.flatnonzero(rng.random(U) < 0.03)
    k = rng.integers(5, 11, len(spree))
    su = np.repeat(spree, k)
    s_t0 = start_ms + rng.integers(0, days, len(spree)) * DAY_MS + rng.integers(10, 20, len(spree)) * HOUR_MS
    s_cat = np.array([CAT_INDEX[c] for c in ("clothing", "restaurants", "electronics", "entertainment")])[
        rng.integers(0, 4, len(su))]
    uid = np.concatenate([uid, su])
    ts = np.concatenate([ts, np.repeat(s_t0, k) + rng.integers(0, HOUR_MS, len(su))])
    cat = np.concatenate([cat, s_cat])
    merchant = np.concatenate([merchant, m_off[s_cat] + rng.integers(0, per_cat[s_cat])])
    amount = np.concatenate([amount, np.exp(mu[su] + sigma[su] * rng.standard_normal(len(su))) * k_mult[s_cat]])
    device = np.concatenate([device, dev_base[su]])
    card = np.concatenate([card, card_base[su]])
    day = np.concatenate([day, (np.repeat(s_t0, k) - start_ms) // DAY_MS])
    on_trip = trip[uid] & (day >= trip_start[uid]) & (day < trip_start[uid] + trip_len[uid])
    country = np.where(on_trip, trip_country[uid], home[uid])
    host = np.concatenate([host, home_host[su]])
    upgrade = rng.random(U) < 0.05
    upgrade_day = rng.integers(1, max(2, days), U)
    new_phone = upgrade[uid] & (day >= upgrade_day[uid])
    device = np.where(new_phone, UPGRADE_DEVICE_BASE + uid, device)
    N = len(uid)
    fraud_type = np.full(N, -1)

    # fraud events
    fr = _fraud(rng, U=U, days=days, start_ms=start_ms, scale=fraud_rate, mu=mu, home=home, c_cont=c_cont,
                card_base=card_base, dev_base=dev_base, prefs=prefs, m_off=m_off, per_cat=per_cat,
                k_mult=k_mult, n_devices_users=n_devices_users, legit=(uid, ts, card))
    uid = np.concatenate([uid, fr["user"]])
    ts = np.concatenate([ts, fr["ts"]])
    cat = np.concatenate([cat, fr["cat"]])
    merchant = np.concatenate([merchant, m_off[fr["cat"]] + rng.integers(0, per_cat[fr["cat"]])])
    amount = np.concatenate([amount, fr["amount"]])
    device = np.concatenate([device, fr["device"]])
    card = np.concatenate([card, fr["card"]])
    country = np.concatenate([country, fr["country"]])
    host = np.concatenate([host, np.where(fr["country"] == home[fr["user"]], rng.integers(0, 65536, len(fr["ts"])),
                                          rng.integers(0, 65536, len(fr["ts"])))])
    fraud_type = np.concatenate([fraud_type, fr["type"]])
    # one fraud event leaves the period: keep only rows inside it
    inside = (ts >= start_ms) & (ts < start_ms + days * DAY_MS)
    uid, ts, cat, merchant, amount, device, card, country, host, fraud_type = (
        a[inside] for a in (uid, ts, cat, merchant, amount, device, card, country, host, fraud_type))

    # unique timestamps per user: sort by (user, ts) and push ties forward by 1 ms
    order = np.lexsort((ts, uid))
    uid_s, ts_s = uid[order], ts[order]
    idx = np.arange(len(ts_s))
    x = ts_s - idx + uid_s * (10 ** 13)  # monotone across users, so one running max does every user at once
    ts_fixed = np.maximum.accumulate(x) - uid_s * (10 ** 13) + idx
    ts = np.empty_like(ts)
    ts[order] = ts_fixed
    final = np.lexsort((uid, ts))

    n = len(final)
    # where a purchase happens: the user's own city (a fixed offset from the country's centre), a few km of jitter
    city_lat, city_lon = rng.normal(0, 1.5, (2, U)), rng.normal(0, 1.5, (2, U))
    away = (country != home[uid]).astype(int)  # abroad: the city of the user's trip (or of the fraudster)
    lat = c_lat[country] + city_lat[away, uid] + rng.normal(0, 0.03, len(uid))
    lon = c_lon[country] + city_lon[away, uid] + rng.normal(0, 0.03, len(uid))
    lat, lon = lat[final], lon[final]
    tx = pd.DataFrame({
        "txn_id": np.arange(1, n + 1, dtype=np.int64),
        "ts": ts[final].astype(np.int64),
        "user_id": uid[final].astype(np.int64),
        "card_id": card[final].astype(np.int64),
        "device_id": device[final].astype(np.int64),
        "merchant_id": merchant[final].astype(np.int64),
        "category": np.array([c[0] for c in CATEGORIES], dtype=object)[cat[final]],
        "amount": np.round(amount[final], 2),
        "ip": _ip(rng, country[final], host[final]).astype(object),
        "country": np.array([c[0] for c in COUNTRIES], dtype=object)[country[final]],
        "continent": c_cont[country[final]].astype(object),
        "lat": np.round(lat, 4),
        "lon": np.round(lon, 4),
    })
    ft = fraud_type[final]
    tx["is_fraud"] = (ft >= 0).astype(np.int64)
    tx["fraud_type"] = np.where(ft >= 0, np.array(FRAUD_TYPES + [""], dtype=object)[ft], None)

    countries = pd.DataFrame({"country": [c[0] for c in COUNTRIES], "continent": c_cont.astype(object),
                              "ip_block": np.arange(n_c, dtype=np.int64), "lat": c_lat, "lon": c_lon})
    merchants = pd.DataFrame({"merchant_id": np.arange(len(m_cat), dtype=np.int64),
                              "category": np.array([c[0] for c in CATEGORIES], dtype=object)[m_cat],
                              "country": np.array([c[0] for c in COUNTRIES], dtype=object)[m_country]})
    users = pd.DataFrame({"user_id": np.arange(U, dtype=np.int64),
                          "home_country": np.array([c[0] for c in COUNTRIES], dtype=object)[home],
                          "tx_per_day": np.round(rate, 3), "typical_amount": np.round(np.exp(mu), 2)})
    cards = pd.DataFrame({"card_id": np.arange(int(n_card.sum()), dtype=np.int64),
                          "user_id": np.repeat(np.arange(U), n_card).astype(np.int64)})
    devices = pd.DataFrame({"device_id": np.concatenate([
        np.arange(n_devices_users + N_FRAUD_DEVICES + len(fr["new_devices"])),
        UPGRADE_DEVICE_BASE + np.flatnonzero(upgrade)]).astype(np.int64)})
    info = {"rows": n, "fraud_rows": int(tx["is_fraud"].sum()), "users": U, "days": days,
            "fraud_by_type": {t: int((tx["fraud_type"] == t).sum()) for t in FRAUD_TYPES}}
    return Dataset(countries, merchants, users, cards, devices, tx, start_ms=start_ms, days=days, seed=seed,
                   info=info)


def _fraud(rng: np.random.Generator, *, U: int, days: int, start_ms: int, scale: float, mu: np.ndarray,
           home: np.ndarray, c_cont: np.ndarray, card_base: np.ndarray, dev_base: np.ndarray, prefs: np.ndarray,
           m_off: np.ndarray, per_cat: np.ndarray, k_mult: np.ndarray, n_devices_users: int,
           legit: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Every fraud row of the five kinds, as arrays (see the module docstring)."""
    per_kind = max(1, int(round(U * days / 30 / 20 * scale / 5)))  # events of each kind
    pool = n_devices_users + np.arange(N_FRAUD_DEVICES)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("user", "ts", "cat", "amount", "device", "card", "country",
                                                        "type")}
    n_c = len(c_cont)
    span = max(1, days - 2)

    def other_continent(c: np.ndarray) -> np.ndarray:
        picks = rng.integers(0, n_c, (len(c), 8))
        ok = c_cont[picks] != c_cont[c][:, None]
        first = ok.argmax(axis=1)
        return picks[np.arange(len(c)), first]

    def add(kind: int, user, ts, cat, amount, device, card, country) -> None:
        for k, v in zip(("user", "ts", "cat", "amount", "device", "card", "country"),
                        (user, ts, cat, amount, device, card, country)):
            out[k].append(np.asarray(v, dtype=np.float64 if k == "amount" else np.int64))
        out["type"].append(np.full(len(ts), kind, dtype=np.int64))

    risky = np.array([CAT_INDEX[c] for c in ("electronics", "gift_cards", "digital_goods")])
    # 1. velocity burst
    E = per_kind
    victim = rng.integers(0, U, E)
    t0 = start_ms + (2 + rng.integers(0, span, E)) * DAY_MS + rng.integers(0, DAY_MS, E)
    k = rng.integers(6, 15, E)
    ev = np.repeat(np.arange(E), k)
    add(0, victim[ev], t0[ev] + rng.integers(0, 30 * 60_000, len(ev)), risky[rng.integers(0, 3, len(ev))],
        np.exp(mu[victim[ev]] + rng.normal(0.6, 0.5, len(ev))) * 2.0, pool[rng.integers(0, N_FRAUD_DEVICES, E)][ev],
        card_base[victim[ev]], home[victim[ev]])
    # 2. card testing: tiny amounts, then large
    victim = rng.integers(0, U, E)
    t0 = start_ms + (2 + rng.integers(0, span, E)) * DAY_MS + rng.integers(0, DAY_MS, E)
    k_small = rng.integers(4, 10, E)
    k_big = rng.integers(1, 3, E)
    dev = pool[rng.integers(0, N_FRAUD_DEVICES, E)]
    where = np.where(rng.random(E) < 0.5, home[victim], rng.integers(0, n_c, E))
    ev = np.repeat(np.arange(E), k_small)
    add(1, victim[ev], t0[ev] + rng.integers(0, 15 * 60_000, len(ev)), np.full(len(ev), CAT_INDEX["digital_goods"]),
        rng.uniform(0.5, 3.0, len(ev)), dev[ev], card_base[victim[ev]], where[ev])
    ev = np.repeat(np.arange(E), k_big)
    add(1, victim[ev], t0[ev] + 15 * 60_000 + rng.integers(0, 30 * 60_000, len(ev)),
        risky[rng.integers(0, 2, len(ev))], rng.uniform(300, 3000, len(ev)), dev[ev], card_base[victim[ev]], where[ev])
    # 3. account takeover: new device, new country on another continent, high amounts
    victim = rng.integers(0, U, E)
    t0 = start_ms + (3 + rng.integers(0, span, E)) * DAY_MS + rng.integers(0, DAY_MS, E)
    k = rng.integers(2, 6, E)
    new_dev = n_devices_users + N_FRAUD_DEVICES + np.arange(E)
    abroad = other_continent(home[victim])
    ev = np.repeat(np.arange(E), k)
    big = rng.random(len(ev)) < 0.08
    amt = np.exp(mu[victim[ev]]) * rng.uniform(6, 25, len(ev))
    amt = np.where(big, rng.uniform(50_000, 120_000, len(ev)), amt)
    ato_cats = np.array([CAT_INDEX[c] for c in ("electronics", "jewelry", "crypto", "gift_cards", "travel")])
    add(2, victim[ev], t0[ev] + rng.integers(0, 6 * HOUR_MS, len(ev)), ato_cats[rng.integers(0, 5, len(ev))], amt,
        new_dev[ev], card_base[victim[ev]], abroad[ev])
    # 4. impossible travel: a legitimate purchase, then the same card far away within minutes
    luid, lts, lcard = legit
    pick = rng.integers(0, len(luid), E) if len(luid) else np.zeros(0, dtype=np.int64)
    victim, t_home, card = luid[pick], lts[pick], lcard[pick]
    k = rng.integers(1, 4, E)
    abroad = other_continent(home[victim])
    ev = np.repeat(np.arange(E), k)
    add(3, victim[ev], t_home[ev] + rng.integers(5 * 60_000, 90 * 60_000, len(ev)), risky[rng.integers(0, 3, len(ev))],
        np.exp(mu[victim[ev]] + rng.normal(1.0, 0.5, len(ev))), pool[rng.integers(0, N_FRAUD_DEVICES, E)][ev],
        card[ev], abroad[ev])
    # 5. category anomaly: the user's own device and country, a category they never use, a large amount
    victim = rng.integers(0, U, E)
    t0 = start_ms + (3 + rng.integers(0, span, E)) * DAY_MS + rng.integers(0, DAY_MS, E)
    k = rng.integers(1, 3, E)
    odd = np.array([CAT_INDEX[c] for c in ("crypto", "jewelry", "gift_cards")])
    ev = np.repeat(np.arange(E), k)
    add(4, victim[ev], t0[ev] + rng.integers(0, 2 * HOUR_MS, len(ev)), odd[rng.integers(0, 3, len(ev))],
        np.exp(mu[victim[ev]]) * rng.uniform(8, 30, len(ev)), dev_base[victim[ev]], card_base[victim[ev]],
        home[victim[ev]])
    result = {k: np.concatenate(v) for k, v in out.items()}
    result["new_devices"] = new_dev
    return result
