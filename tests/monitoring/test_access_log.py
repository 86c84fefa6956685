"""The JSON-lines access log: one parseable line per record, to a file, stderr or nowhere."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from autoglm.monitoring.access_log import LOGGER_NAME, AccessRecord, configure_access_log, emit


@pytest.fixture(autouse=True)
def _reset_logger():
    yield
    configure_access_log("off")
    logging.getLogger(LOGGER_NAME).setLevel(logging.NOTSET)


def test_file_lines_are_json_with_the_fields(tmp_path):
    path = tmp_path / "logs" / "access.jsonl"
    configure_access_log(path)
    rec = AccessRecord("req-1", "POST", "/v1/chat/completions", key_name="ci-bot", model="m", stream=True,
                       cache="hit", status=200, prompt_tokens=7, completion_tokens=3)
    rec.first_token()
    emit(rec)
    emit(AccessRecord("req-2", "GET", "/v1/models", status=401))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["request_id"] for x in lines] == ["req-1", "req-2"]
    first = lines[0]
    assert (first["key_name"], first["model"], first["cache"], first["stream"], first["status"]) == \
        ("ci-bot", "m", "hit", True, 200)
    assert first["latency_ms"] >= first["ttft_ms"] >= 0 and first["ts"].endswith("Z")
    assert "start" not in first


def test_a_record_has_no_place_for_secrets():
    names = {f.name for f in dataclasses.fields(AccessRecord)}
    assert not names & {"key", "api_key", "authorization", "prompt", "messages"}


def test_stderr_and_off(capsys, tmp_path):
    configure_access_log("-")
    emit(AccessRecord("req-3", "GET", "/health", status=200))
    assert json.loads(capsys.readouterr().err.strip())["request_id"] == "req-3"
    configure_access_log("off")
    emit(AccessRecord("req-4", "GET", "/health", status=200))
    assert capsys.readouterr().err == ""
