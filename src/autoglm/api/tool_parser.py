"""GLM-4 tool-call parsing, whole-text and streaming.

GLM-4 writes a tool call as the tool's name alone on the first line and its arguments as one JSON
object after it (``get_weather\\n{"city": "Paris"}``); several calls follow one another. Anything
else is ordinary content. :func:`parse_tool_calls` splits a finished reply; :class:`StreamingToolParser`
does the same on deltas, holding text back only while it could still be the start of a known tool
name, so plain replies stream with no delay past their first line.

This module knows the output format only; not the chat template, tokens or HTTP shapes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Literal

__all__ = ["ParsedToolCall", "parse_tool_calls", "ToolEvent", "StreamingToolParser"]

_decoder = json.JSONDecoder()


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # a JSON object, as text


def parse_tool_calls(text: str, tool_names: Iterable[str]) -> tuple[str | None, list[ParsedToolCall]]:
    """Split ``text`` into (content, tool calls). No call found: ``(text, [])``.

    A call needs a known name on its own line and a JSON *object* after it; otherwise the whole
    reply is content. Text after the last call (rare) is returned as content.
    """
    names = set(tool_names)
    calls: list[ParsedToolCall] = []
    rest = text.lstrip()
    while True:
        newline = rest.find("\n")
        if newline < 0 or rest[:newline].strip() not in names:
            break
        body = rest[newline + 1:].lstrip()
        try:
            args, end = _decoder.raw_decode(body)
        except ValueError:
            break
        if not isinstance(args, dict):
            break
        calls.append(ParsedToolCall(rest[:newline].strip(), json.dumps(args, ensure_ascii=False)))
        rest = body[end:].lstrip()
    if not calls:
        return text, []
    return (rest or None), calls


@dataclass
class ToolEvent:
    """One thing to send: content text, the start of call ``index`` (its name), or argument text."""

    kind: Literal["content", "call", "args"]
    text: str = ""
    index: int = 0


@dataclass
class StreamingToolParser:
    tool_names: Iterable[str]
    _names: set[str] = field(init=False)
    _buf: str = field(default="", init=False)
    _state: Literal["start", "args", "content"] = field(default="start", init=False)
    _calls: int = field(default=0, init=False)
    # JSON scanner state while inside a call's arguments
    _depth: int = field(default=0, init=False)
    _in_str: bool = field(default=False, init=False)
    _escape: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._names = set(self.tool_names)

    @property
    def num_calls(self) -> int:
        return self._calls

    def feed(self, delta: str) -> list[ToolEvent]:
        self._buf += delta
        events: list[ToolEvent] = []
        while self._buf:
            if self._state == "content":
                events.append(ToolEvent("content", self._buf))
                self._buf = ""
            elif self._state == "args":
                end = self._scan(self._buf)
                piece = self._buf if end is None else self._buf[:end]
                if piece:
                    events.append(ToolEvent("args", piece, self._calls - 1))
                self._buf = "" if end is None else self._buf[end:]
                if end is not None:
                    self._state = "start"
            elif not self._decide(events):
                break  # undecided: wait for more text
        return events

    def finish(self) -> list[ToolEvent]:
        """Flush what is held back (a reply that ended while it still looked like a tool name)."""
        events: list[ToolEvent] = []
        if self._state == "start" and self._buf.strip():
            events.append(ToolEvent("content", self._buf.lstrip() if self._calls else self._buf))
        self._buf = ""
        return events

    def _decide(self, events: list[ToolEvent]) -> bool:
        """In ``start`` state: commit to a call or to content if the buffer allows; False = wait."""
        text = self._buf.lstrip()
        if not text:
            return False
        newline = text.find("\n")
        if newline < 0:
            head = text.rstrip(" \t")
            if any(name.startswith(head) for name in self._names):
                return False
            return self._to_content(events)
        name = text[:newline].strip()
        if name not in self._names:
            return self._to_content(events)
        body = text[newline + 1:].lstrip()
        if not body:
            return False
        if body[0] != "{":
            return self._to_content(events)
        events.append(ToolEvent("call", name, self._calls))
        self._calls += 1
        self._state = "args"
        self._depth, self._in_str, self._escape = 0, False, False
        self._buf = body
        return True

    def _to_content(self, events: list[ToolEvent]) -> bool:
        self._state = "content"
        if self._calls:
            self._buf = self._buf.lstrip()
        return True

    def _scan(self, text: str) -> int | None:
        """Advance the JSON scanner over ``text``; the index just past the closing brace, or None."""
        for i, ch in enumerate(text):
            if self._in_str:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_str = False
            elif ch == '"':
                self._in_str = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return None
