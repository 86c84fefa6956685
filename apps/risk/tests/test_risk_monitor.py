"""Monitoring: drift and AUC gauges act on drifted data and follow the scores' quality, stay quiet otherwise;
the alert rules pass promtool (test_risk_service.py checks the dashboard's metrics against a live /metrics)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from autoglm_risk.monitor import MONITORED, Monitor, Reference, auc

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _frame(rng, n, shift=0.0):
    return pd.DataFrame({f: rng.lognormal(3 + shift, 0.5, n) for f in MONITORED})


def test_drift_gauges_fire_on_drift_and_stay_quiet_otherwise():
    rng = np.random.default_rng(0)
    ref = Reference.from_frame(_frame(rng, 5000), rng.beta(0.5, 50, 5000), auc_value=0.97)
    quiet, drifted = Monitor(CollectorRegistry(), ref), Monitor(CollectorRegistry(), ref)
    for i, (row, s) in enumerate(zip(_frame(rng, 500).to_dict("records"), rng.beta(0.5, 50, 500))):
        quiet.observe(f"q{i}", row, float(s), now=1000.0)
    for i, (row, s) in enumerate(zip(_frame(rng, 500, shift=1.5).to_dict("records"), rng.beta(5, 5, 500))):
        drifted.observe(f"d{i}", row, float(s), now=1000.0)
    q, d = quiet.refresh(now=1001.0), drifted.refresh(now=1001.0)
    assert q["prediction_drift_rate"] < 0.15 < d["prediction_drift_rate"]
    assert max(v["psi"] for v in q["features"].values()) < 0.1
    assert min(v["psi"] for v in d["features"].values()) > 0.25
    assert all(v["kl"] > 0.1 for v in d["features"].values())
    # an hour later the window is empty: nothing recent to judge, the gauges are not recomputed
    assert "prediction_drift_rate" not in drifted.refresh(now=1001.0 + 7200)


def test_auc_from_labels_tracks_the_scores():
    rng = np.random.default_rng(1)
    m = Monitor(CollectorRegistry(), None)
    y = rng.random(400) < 0.1
    good = np.where(y, rng.uniform(0.5, 1, 400), rng.uniform(0, 0.6, 400))
    for i, (yy, s) in enumerate(zip(y, good)):
        m.observe(f"x{i}", {}, float(s), now=10.0)
        m.label(f"x{i}", int(yy), now=11.0)
    assert m.refresh(now=12.0)["auc_resolved"] > 0.9
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(np.array([1, 1]), np.array([0.1, 0.2])) is None


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_alert_rules_pass_promtool_and_fire_when_they_should():
    subprocess.run(["promtool", "check", "rules", "alerts.yaml"], cwd=DEPLOY, check=True, capture_output=True)
    r = subprocess.run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=DEPLOY, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
