from __future__ import annotations

import json
import random

import pytest

from autoglm.api.tool_parser import StreamingToolParser, parse_tool_calls

NAMES = ["get_weather", "get_time", "search"]


def test_single_call():
    content, calls = parse_tool_calls('get_weather\n{"city": "Paris"}', NAMES)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]


def test_several_calls_and_leading_whitespace():
    text = '\nget_time\n{}\nsearch\n{"q": "a}b", "n": [1, {"x": 2}]}'
    content, calls = parse_tool_calls(text, NAMES)
    assert content is None
    assert [c.name for c in calls] == ["get_time", "search"]
    assert json.loads(calls[1].arguments) == {"q": "a}b", "n": [1, {"x": 2}]}


@pytest.mark.parametrize("text", [
    "hello there",
    "get_weather is a tool",
    "get_weather\nnot json",
    'get_weather\n["a list"]',
    'unknown_tool\n{"a": 1}',
    "",
])
def test_not_a_call_is_content(text):
    assert parse_tool_calls(text, NAMES) == (text, [])


def _stream(text: str, cuts: list[int]) -> tuple[str, list[tuple[str, str]]]:
    parser = StreamingToolParser(NAMES)
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    events = [ev for p in pieces for ev in parser.feed(p)] + parser.finish()
    content = "".join(ev.text for ev in events if ev.kind == "content")
    calls: dict[int, list[str]] = {}
    for ev in events:
        if ev.kind == "call":
            calls[ev.index] = [ev.text, ""]
        elif ev.kind == "args":
            calls[ev.index][1] += ev.text
    return content, [tuple(calls[i]) for i in sorted(calls)]


@pytest.mark.parametrize("text", [
    'get_weather\n{"city": "Paris"}',
    'get_time\n{}\nsearch\n{"q": "x\\"}y", "deep": {"a": [1, 2]}}',
    "just a normal answer\nwith two lines",
    "get",  # ends while still a possible tool name: flushed as content
    "get_weather is nice",
    "search\nnot json at all",
])
def test_streaming_matches_whole_text_at_any_split(text):
    rng = random.Random(0)
    want_content, want_calls = parse_tool_calls(text, NAMES)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, max(2, len(text))), k=min(len(text) - 1, rng.randint(0, 6)))) \
            if len(text) > 1 else []
        content, calls = _stream(text, cuts)
        assert [(n, json.loads(a)) for n, a in calls] == [(c.name, json.loads(c.arguments)) for c in want_calls]
        assert (content or None) == (want_content or None)


def test_streaming_plain_text_is_not_held_back():
    parser = StreamingToolParser(NAMES)
    assert [e.text for e in parser.feed("Hello")] == ["Hello"]
    assert [e.text for e in parser.feed(" world")] == [" world"]
    # a possible tool name is held until it is decided
    parser = StreamingToolParser(NAMES)
    assert parser.feed("get_w") == []
    assert [(e.kind, e.text) for e in parser.feed("eather\n{")] == [("call", "get_weather"), ("args", "{")]
