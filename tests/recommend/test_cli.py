from __future__ import annotations

import json
from pathlib import Path

from autoglm.cli.main import main

from tests.recommend.conftest import DATA

EXAMPLE = str(Path(__file__).parents[2] / "examples" / "auto-route.yaml")


def test_recommend_text_shows_the_decision(fresh_home, capsys):
    assert main(["recommend", "Write a Rust function that parses ISO dates", "--config", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "task: code" in out and "model: coder" in out and "runner-up: general" in out
    assert main(["recommend", "把这段话翻译成英文", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "translation"


def test_calibrate_prints_accuracy_and_confusion_and_saves_versions(fresh_home, capsys):
    files = [str(DATA / "labelled_en.jsonl"), str(DATA / "labelled_zh.jsonl")]
    assert main(["recommend", "calibrate", *files, "--config", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "confusion (en; rows = true, columns = predicted)" in out and "  zh: " in out
    assert "saved calibration v1" in out
    assert main(["recommend", "calibrate", files[0], "--config", EXAMPLE]) == 0
    assert "saved calibration v2" in capsys.readouterr().out
    saved = sorted(p.name for p in (fresh_home / "recommend" / "calibration").iterdir())
    assert saved == ["v1.json", "v2.json"]


def test_bad_input_is_one_line_and_a_non_zero_exit(fresh_home, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hello", "task": "chat"}\n{"text": "x", "task": "poetry"}\n')
    assert main(["recommend", "calibrate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl:2 task: task 'poetry' is not in the taxonomy" in err
    assert main(["recommend", "rate", "coder", "code", "1.7"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["recommend", "rate", "coder", "code", "0.9"]) == 0
    assert "recorded quality mean 0.900" in capsys.readouterr().out
