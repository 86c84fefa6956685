"""Reading batch input files: malformed lines become error entries with their line number; hopeless files raise."""
from __future__ import annotations

import json

import pytest

from autoglm.batch.jsonl import InputFileError, parse_input

EP = "/v1/chat/completions"


def line(cid, url=EP, **body):
    return json.dumps({"custom_id": cid, "method": "POST", "url": url,
                       "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}})


def test_valid_lines_become_requests_in_order_and_blank_lines_are_skipped():
    p = parse_input("\n".join([line("a"), "", line("b", max_tokens=3)]) + "\n", EP)
    assert [(n, cid) for n, cid, _ in p.requests] == [(1, "a"), (3, "b")]
    assert json.loads(p.requests[1][2])["max_tokens"] == 3
    assert p.line_errors == [] and p.model == "m" and p.total == 2


@pytest.mark.parametrize("bad, code", [
    ("{not json", "invalid_json_line"),
    ("[1, 2]", "invalid_json_line"),
    (json.dumps({"method": "POST", "url": EP, "body": {}}), "missing_custom_id"),
    (line("x", url="/v1/completions"), "invalid_url"),
    (json.dumps({"custom_id": "x", "method": "GET", "url": EP, "body": {}}), "invalid_method"),
    (json.dumps({"custom_id": "x", "method": "POST", "url": EP, "body": "hi"}), "invalid_body"),
    (line("x", stream=True), "invalid_body"),
])
def test_a_malformed_line_is_an_error_entry_with_its_line_number(bad, code):
    p = parse_input("\n".join([line("ok"), bad]), EP)
    assert [cid for _, cid, _ in p.requests] == ["ok"]
    [(n, key, record)] = p.line_errors
    entry = json.loads(record)
    assert n == 2 and entry["error"]["code"] == code and entry["error"]["line"] == 2
    assert entry["response"] is None and "line 2" in entry["error"]["message"]
    assert p.total == 2


@pytest.mark.parametrize("data, words", [
    ("", "no request"),
    ("\n\n", "no request"),
    ("{bad\n[]\n", "no valid request"),
    (b"\xff\xfe{}", "not UTF-8"),
    (line("a") + "\n" + line("a"), "line 1 and line 2"),
])
def test_a_file_that_cannot_be_a_batch_raises(data, words):
    with pytest.raises(InputFileError, match=words):
        parse_input(data, EP)


def test_too_many_requests_raise():
    with pytest.raises(InputFileError, match="more than 2"):
        parse_input("\n".join(line(str(i)) for i in range(3)), EP, max_requests=2)
