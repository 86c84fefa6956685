from __future__ import annotations

import json
from dataclasses import replace

from autoglm.recommend.calibrate import CalibrationStore, evaluate, fit, format_report, read_labelled
from autoglm.recommend.encoders import HashingEncoder
from autoglm.recommend.identify import TaskIdentifier
from autoglm.recommend.profiles import ModelProfile
from autoglm.recommend.recommender import Recommender
from autoglm.recommend.taxonomy import load_taxonomy

from tests.recommend.conftest import DATA


def _rows(identifier):
    return [r for lang in ("en", "zh") for r in read_labelled(DATA / f"labelled_{lang}.jsonl", identifier.tasks)]


def test_fit_repairs_a_bad_threshold_and_reports_a_confusion_matrix(identifier):
    rows = _rows(identifier)
    bad = replace(identifier.params, linear=None, linear_fast=None, threshold=0.9)  # nearly everything "unknown"
    before = evaluate(identifier, rows, bad)
    saved = identifier.params
    identifier.params = bad
    try:
        params, report = fit(identifier, rows)
    finally:
        identifier.params = saved
    assert before.accuracy < 0.2
    assert params.linear is not None and params.threshold < 0.9 and report.accuracy > 0.9
    grid, grid_report = fit(identifier, rows, method="grid")  # the weighted sum's grid, still there
    assert grid.linear is None and grid.threshold < 0.9 and grid_report.accuracy > 0.85
    text = format_report(report)
    assert "confusion (en; rows = true, columns = predicted)" in text and "confusion (zh;" in text
    assert report.confusion.sum() == len(rows) and report.confusion.shape == (len(identifier.tasks) + 1,) * 2


def test_calibration_is_versioned_and_reloaded_without_restart(tmp_path):
    identifier = TaskIdentifier(load_taxonomy(), [HashingEncoder()], cache=tmp_path)  # the recommender owns it
    base_threshold = identifier.params.threshold
    store = CalibrationStore(tmp_path / "cal")
    profiles = {"a": ModelProfile("a", {"code": 0.9}), "b": ModelProfile("b", {"chat": 0.9})}
    rec = Recommender(identifier, profiles, default="b", calibration=store)
    request = {"messages": [{"role": "user", "content": "Write a Go function that reverses a string"}]}
    assert rec.decide(request).model == "a"
    rows = _rows(identifier)
    params, report = fit(identifier, rows)
    assert store.save(params, report, source="test", fingerprint=identifier.fingerprint) == 1
    strict = replace(params, linear=None, threshold=0.99)  # a calibration under which nothing is sure enough
    assert store.save(strict, report, source="test", fingerprint=identifier.fingerprint) == 2
    assert store.versions() == [1, 2]
    rec._checked = -1e9  # the next decision looks for a new version (normally: at most once a second)
    decision = rec.decide(request)
    assert rec.calibration_version == 2 and decision.task == "unknown" and decision.model == "b"
    body = json.loads((tmp_path / "cal" / "v2.json").read_text())
    assert body["params"]["threshold"] == 0.99 and body["report"]["by_language"]["zh"]["n"] == 216
    # a calibration fitted with other encoders or templates is not applied: back to the built-in parameters
    store.save(strict, report, source="test", fingerprint="other")
    rec._checked = -1e9
    assert rec.decide(request).model == "a"
    assert rec.calibration_version == 3 and rec.identifier.params.threshold == base_threshold
