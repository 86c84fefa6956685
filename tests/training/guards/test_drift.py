"""Drift guard: KL/PSI per column on real numpy/pandas data; drift is found exactly where it was made."""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from autoglm.errors import ConfigError
from autoglm.training.events import EventBus
from autoglm.training.guards import GuardContext, create_guard
from autoglm.training.guards.drift import ReferenceProfile, build_profile, check, kl_divergence, psi

WORDS = [f"w{i}" for i in range(60)]


def make_data(seed: int, n: int = 4000, *, shift: float = 0.0, new_category: bool = False,
              longer: bool = False, token_mix: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cats = rng.choice(["red", "green", "blue", "gray"], size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    if new_category:
        cats[rng.random(n) < 0.3] = "zebra_new"
    lengths = rng.integers(12, 30, size=n) if longer else rng.integers(4, 12, size=n)
    zipf = 1.0 / np.arange(1, len(WORDS) + 1)
    weights = (zipf[::-1] if token_mix else zipf) / zipf.sum()
    prompts = [" ".join(rng.choice(WORDS, size=k, p=weights)) for k in lengths]
    return pd.DataFrame({
        "amount": rng.normal(shift, 1.0, size=n),
        "age": rng.integers(18, 80, size=n),
        "color": cats,
        "prompt": prompts,
    })


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_distribution_is_not_drift(seed):
    ref, cur = make_data(100 + seed), make_data(200 + seed)
    report = check(build_profile(ref), cur)
    assert not report.any_drift, report.to_dict()
    assert report.max_kl < 0.02  # far below the 0.1 threshold
    assert set(report.columns) == {"amount", "age", "color", "prompt.length", "prompt.tokens"}


@pytest.mark.parametrize("change, expected", [
    ({"shift": 1.0}, {"amount"}),
    ({"new_category": True}, {"color"}),
    ({"longer": True}, {"prompt.length"}),
    ({"token_mix": True}, {"prompt.tokens"}),
    ({"shift": 1.0, "new_category": True}, {"amount", "color"}),
])
def test_drift_is_found_on_exactly_the_changed_columns(change, expected):
    profile = build_profile(make_data(1))
    report = check(profile, make_data(2, **change))
    assert set(report.drifted) == expected
    for name in expected:  # PSI is reported beside KL, and PSI = KL(p||q) + KL(q||p) >= KL
        col = report.columns[name]
        assert col.kl > 0.1 and col.psi > col.kl


def test_empty_bins_are_smoothed_not_infinite():
    assert math.isfinite(kl_divergence([0, 0, 100], [100, 0, 0]))
    assert math.isfinite(psi([0, 0, 100], [100, 0, 0]))
    assert kl_divergence([5, 5], [5, 5]) == pytest.approx(0.0)
    profile = build_profile({"x": np.arange(1000.0)})
    report = check(profile, {"x": np.full(500, 1e9)})  # every row in the open top bin
    assert math.isfinite(report.columns["x"].kl) and report.columns["x"].drifted


def test_profile_save_load_round_trip_gives_identical_results(tmp_path):
    ref, cur = make_data(5), make_data(6, shift=0.4, longer=True)
    profile = build_profile(ref)
    path = profile.save(tmp_path / "drift_reference.json")
    loaded = ReferenceProfile.load(path)
    assert loaded.to_dict() == profile.to_dict()
    assert check(loaded, cur).to_dict() == check(profile, cur).to_dict()
    assert "zebra" not in path.read_text() and "w1 w" not in path.read_text()  # no raw rows stored


def test_missing_values_and_row_records():
    rows = [{"x": float(i % 7), "c": "a" if i % 2 else "b"} for i in range(500)]
    profile = build_profile(rows)
    holes = [{"x": None if i % 2 else float(i % 7), "c": None if i % 3 == 0 else "a"} for i in range(500)]
    report = check(profile, holes)
    assert set(report.drifted) == {"x", "c"}  # half the values missing is drift
    assert not check(profile, rows).any_drift


def test_hundred_columns_of_100k_rows_check_under_two_seconds():
    rng = np.random.default_rng(0)
    ref = {f"c{i}": col for i, col in enumerate(rng.normal(size=(100, 100_000)))}
    cur = {f"c{i}": col for i, col in enumerate(rng.normal(size=(100, 100_000)))}
    profile = build_profile(ref)
    t = time.perf_counter()
    report = check(profile, cur)
    elapsed = time.perf_counter() - t
    assert elapsed < 2.0, f"check took {elapsed:.2f}s"
    assert len(report.columns) == 100 and not report.any_drift


def test_guard_emits_one_event_with_column_names_only():
    bus = EventBus()
    guard = create_guard("drift", text_columns=["prompt"])
    ref, cur = make_data(1), make_data(2, new_category=True, longer=True)
    report = guard.on_data(GuardContext(emit=bus.emit, step=7), guard.profile_for(ref), cur)
    (event,) = bus.events
    assert (event.kind, event.source, event.action, event.step) == ("guard", "drift", "drift", 7)
    assert set(event.data["drifted"].split(",")) == {"color", "prompt.length"} == set(report["drifted"])
    assert "zebra_new" not in event.message and " w" not in event.message  # never raw values
    # raw reference data gives the same answer as the stored profile
    assert guard.on_data(GuardContext(emit=bus.emit), ref, cur)["drifted"] == report["drifted"]
    guard.on_data(GuardContext(emit=bus.emit), guard.profile_for(ref).to_dict(), make_data(3))
    assert bus.events[-1].action == "no-drift"


def test_threshold_and_tokenizer_settings():
    ref, cur = make_data(1), make_data(2, shift=0.3)
    loose = create_guard("drift", threshold=5.0).on_data(GuardContext(emit=EventBus().emit), ref, cur)
    strict = create_guard("drift", threshold=0.01).on_data(GuardContext(emit=EventBus().emit), ref, cur)
    assert loose["drifted"] == [] and "amount" in strict["drifted"]
    chars = create_guard("drift", columns=["prompt"], text_columns=["prompt"], tokenizer=list)
    profile = chars.profile_for(ref)
    assert set(profile.columns) == {"prompt.length", "prompt.tokens"}
    assert set(profile.columns["prompt.tokens"].categories) <= set("w0123456789 ")  # characters, not words


def test_unknown_setting_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="treshold.*did you mean 'threshold'.*allowed: bins"):
        create_guard("drift", treshold=0.2)
    with pytest.raises(ConfigError, match="bins"):
        create_guard("drift", bins=0)
