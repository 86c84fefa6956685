"""deploy/prometheus/alerts.yml passes ``promtool check rules`` and the unit tests in alerts_test.yml
(series that must fire and series that must stay quiet, for the drift, AUC and serving alerts)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; the Makefile installs it for CI)")
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules():
    result = run("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass():
    result = run("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_cover_the_model_alerts_and_can_fail(tmp_path):
    """The asked conditions are there, tested; and a rule with the wrong threshold fails its tests."""
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    drift, auc = alerts["AutoGLMPredictionDrift"], alerts["AutoGLMModelAUCDrop"]
    assert "autoglm:prediction_drift_rate" in drift["expr"] and "> 0.15" in drift["expr"] and drift["for"] == "1h"
    assert "max_over_time(autoglm:model_auc[1d]) - autoglm:model_auc" in auc["expr"] and "> 0.1" in auc["expr"]
    tested = {t["alertname"] for case in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert {"AutoGLMPredictionDrift", "AutoGLMModelAUCDrop", "AutoGLMKVCacheNearlyFull"} <= tested

    drift["expr"] = drift["expr"].replace("> 0.15", "> 0.05")  # now "steady" (0.1) would fire too
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path / "alerts_test.yml")
    broken = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert broken.returncode != 0 and "AutoGLMPredictionDrift" in broken.stdout + broken.stderr
