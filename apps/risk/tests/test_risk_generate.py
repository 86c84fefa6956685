"""The generator: deterministic by seed, the habits and fraud patterns it promises are in the data."""
from __future__ import annotations

import numpy as np

from autoglm_risk.generate import FRAUD_TYPES, generate


def test_same_seed_same_frames_and_another_seed_differs():
    a, b = generate(200, 7, seed=5), generate(200, 7, seed=5)
    c = generate(200, 7, seed=6)
    for name, df in a.tables().items():
        assert df.equals(b.tables()[name]), name
    assert not a.transactions.equals(c.transactions)


def test_every_fraud_pattern_is_present_and_labelled(small_data):
    tx = small_data.transactions
    assert set(tx.loc[tx.is_fraud == 1, "fraud_type"]) == set(FRAUD_TYPES)
    assert tx.loc[tx.is_fraud == 0, "fraud_type"].isna().all()
    assert 0.002 < tx.is_fraud.mean() < 0.1
    # timestamps are unique per user and inside the period, rows sorted by time
    assert not tx.duplicated(["user_id", "ts"]).any()
    assert tx.ts.is_monotonic_increasing
    assert tx.ts.min() >= small_data.start_ms and tx.ts.max() < small_data.start_ms + 14 * 86_400_000
    # card testing is tiny amounts then large ones; legitimate spending follows each user's habit
    ct = tx[tx.fraud_type == "card_testing"]
    assert (ct.amount < 5).any() and (ct.amount > 250).any()
    legit = tx[tx.is_fraud == 0]
    per_user = legit.groupby("user_id").amount.median()
    assert per_user.quantile(0.9) > 2 * per_user.quantile(0.1)
    # a daily rhythm: night hours see far fewer purchases than the afternoon
    hours = (legit.ts // 3_600_000) % 24
    assert (hours == 15).sum() > 3 * (hours == 3).sum()
    # account takeover comes from another continent than most of the user's purchases
    ato = tx[tx.fraud_type == "account_takeover"]
    home = legit.groupby("user_id").continent.agg(lambda s: s.mode().iloc[0])
    assert (ato.continent.to_numpy() != home.reindex(ato.user_id).to_numpy()).mean() > 0.9
    # no card numbers: identifiers are integers, IPs are in 10.0.0.0/8
    assert tx.card_id.dtype == np.int64 and tx.ip.str.startswith("10.").all()
