"""Run summaries from the files a pipeline leaves (autoglm.training.records), without running one:
a run killed mid-training reads as interrupted with its finished, interrupted and pending stages; the
run log survives a torn last line; validation errors split into line, key and message."""
from __future__ import annotations

import json

import pytest

from autoglm.errors import NotFoundError
from autoglm.training.events import TrainingEvent
from autoglm.training.records import get_pipeline, get_run, list_runs, validate_pipeline
from autoglm.training.rundir import PipelineHome, write_json
from autoglm.training.runlog import RunLog, read_run_log, run_log_path


def _killed_run(home):
    ph = PipelineHome(home, "p")
    keys = {"preprocess": "a" * 16, "train": "b" * 16, "evaluate": "c" * 16}
    ph.stage("preprocess", keys["preprocess"]).begin()
    ph.stage("preprocess", keys["preprocess"]).finish({"summary": {"rows": 10}, "seconds": 1.5})
    ph.stage("train", keys["train"]).begin()  # a work dir: training was under way
    run_path = ph.run_path("f" * 16)
    write_json(run_path, {"name": "p", "run_key": "f" * 16, "stage_keys": keys, "status": "running",
                          "pid": 2**22 + 12345, "updated_at": 1.0, "started_at": 0.5})  # a pid that is gone
    log = RunLog(run_log_path(run_path))
    log.metrics({"train_loss": 2.0, "lr": 1e-3, "note": "x"}, 1)
    log.event(TrainingEvent("guard", "explosion", "reset-layer", "layer 3 reset", step=1))
    log.metrics({"train_loss": 1.5, "lr": 5e-4}, 2)
    with open(run_log_path(run_path), "a") as f:
        f.write('{"type": "metrics", "step": 3, "metr')  # the process died mid-line
    return keys


def test_a_killed_run_reads_as_interrupted_with_each_stage_where_it_stopped(tmp_path):
    _killed_run(tmp_path)
    (run,) = list_runs(tmp_path)
    assert run["status"] == "interrupted"
    assert {s: v["status"] for s, v in run["stages"].items()} == {
        "preprocess": "finished", "train": "interrupted", "evaluate": "pending"}
    assert run["stages"]["preprocess"]["seconds"] == 1.5 and run["stages"]["preprocess"]["summary"] == {"rows": 10}
    detail = get_run("ffffff", tmp_path)  # by a prefix
    assert [p["value"] for p in detail["history"]["train_loss"]] == [2.0, 1.5]
    assert [p["step"] for p in detail["lr"]] == [1, 2] and "note" not in detail["history"]
    assert [e["action"] for e in detail["guard_events"]] == ["reset-layer"]
    assert get_pipeline("p", tmp_path)["n_runs"] == 1
    with pytest.raises(NotFoundError, match="recent runs: p/ffffffff"):
        get_run("0123456789", tmp_path)
    with pytest.raises(NotFoundError):
        get_pipeline("q", tmp_path)


def test_run_log_skips_a_torn_line(tmp_path):
    path = tmp_path / "r.log.jsonl"
    path.write_text(json.dumps({"type": "metrics", "step": 1, "metrics": {"a": 1.0}}) + "\n{\"type\": ")
    assert [e["step"] for e in read_run_log(path)] == [1]
    assert read_run_log(tmp_path / "missing.jsonl") == []


def test_validate_splits_line_key_and_message():
    bad = validate_pipeline(text="name: x\ndata: {train: a.csv}\ntrain: {trainer: tabular, target: y, lr: 3}\n")
    assert not bad["ok"] and (bad["errors"][0]["line"], bad["errors"][0]["key"]) == (3, "train.lr")
    assert bad["errors"][0]["text"] == f"pipeline.yaml:3 train.lr: {bad['errors'][0]['message']}"
    yaml = validate_pipeline(text="name: x\n  bad: [\n")
    assert yaml["errors"][0]["line"] == 2 and yaml["errors"][0]["key"] is None
    missing = validate_pipeline(path="/no/such.yaml")
    assert missing["errors"][0]["line"] is None and "does not exist" in missing["errors"][0]["message"]
