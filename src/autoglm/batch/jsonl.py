"""Reading a batch input file (OpenAI's JSONL) and writing the lines of its output and error files.

Input: one request per line, ``{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
"body": {...}}``. :func:`parse_input` splits a file into the requests to run and the malformed lines:
a line that is not a JSON object, lacks a ``custom_id``, names another method or URL than the batch's
endpoint, has no ``body`` object or asks for ``stream`` becomes an error-file entry carrying its line
number. A file that cannot be a batch at all -- not UTF-8, empty, no valid line, a ``custom_id`` used
twice, more requests than allowed -- is an :class:`InputFileError` (the API answers 400).

Output lines: ``{"id": "batch_req_...", "custom_id": ..., "response": {"status_code", "request_id",
"body"}, "error": null}``; an error-file line has ``response`` with a non-2xx status, or ``response:
null`` and ``error: {"code", "message"}`` when the request never ran. Pure functions, no I/O.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from autoglm.errors import AutoGLMError

__all__ = ["ENDPOINTS", "InputFileError", "ParsedInput", "parse_input", "result_line", "error_line"]

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_CUSTOM_ID = 512


class InputFileError(AutoGLMError):
    """The file as a whole cannot be run as a batch (400)."""


@dataclass
class ParsedInput:
    requests: list[tuple[int, str, str]] = field(default_factory=list)  # (line, custom_id, body JSON)
    line_errors: list[tuple[int, str, str]] = field(default_factory=list)  # (line, result key, record JSON)
    model: str | None = None

    @property
    def total(self) -> int:
        return len(self.requests) + len(self.line_errors)


def _req_id() -> str:
    return f"batch_req_{secrets.token_hex(12)}"


def result_line(custom_id: str, status: int, body: Any, request_id: str | None = None) -> dict[str, Any]:
    return {"id": _req_id(), "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id or _req_id(), "body": body}, "error": None}


def error_line(custom_id: str | None, code: str, message: str, line: int | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if line is not None:
        err["line"] = line
    return {"id": _req_id(), "custom_id": custom_id, "response": None, "error": err}


def parse_input(data: bytes | str, endpoint: str, *, max_requests: int = 50_000) -> ParsedInput:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputFileError(f"the input file is not UTF-8 text (byte {exc.start}); a batch file is JSONL, one "
                                 "request object per line") from None
    out = ParsedInput()
    seen: dict[str, int] = {}
    first_error = ""
    for n, text in enumerate(data.splitlines(), start=1):
        if not text.strip():
            continue
        if out.total >= max_requests:
            raise InputFileError(f"the input file has more than {max_requests} requests; split it into several "
                                 "batches (or raise batch.max_requests)")
        custom_id, problem = None, None
        try:
            item = json.loads(text)
        except ValueError as exc:
            item, problem = None, ("invalid_json_line", f"line {n} is not valid JSON ({getattr(exc, 'msg', exc)})")
        if item is not None and not isinstance(item, dict):
            problem = ("invalid_json_line", f"line {n} is a JSON {type(item).__name__}, not an object")
        elif isinstance(item, dict):
            cid = item.get("custom_id")
            if isinstance(cid, str) and cid:
                custom_id = cid
                if cid in seen:
                    raise InputFileError(f"custom_id {cid[:80]!r} is used on line {seen[cid]} and line {n}; every "
                                         "request of a batch needs its own custom_id")
                seen[cid] = n
            problem = _check(item, n, endpoint)
        if problem is not None:
            code, message = problem
            first_error = first_error or message
            out.line_errors.append((n, f"__line_{n}", json.dumps(error_line(custom_id, code, message, n))))
            continue
        body = item["body"]
        if out.model is None and isinstance(body.get("model"), str):
            out.model = body["model"]
        out.requests.append((n, custom_id, json.dumps(body, ensure_ascii=False)))
    if not out.total:
        raise InputFileError("the input file holds no request; write one JSON object per line: {\"custom_id\": "
                             f"\"r1\", \"method\": \"POST\", \"url\": \"{endpoint}\", \"body\": {{...}}}}")
    if not out.requests:
        raise InputFileError(f"the input file holds no valid request ({len(out.line_errors)} malformed line(s); "
                             f"{first_error})")
    return out


def _check(item: dict[str, Any], n: int, endpoint: str) -> tuple[str, str] | None:
    cid = item.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return "missing_custom_id", f"line {n} has no custom_id (a non-empty string that names the request)"
    if len(cid) > MAX_CUSTOM_ID:
        return "invalid_custom_id", f"line {n}: custom_id is {len(cid)} characters; at most {MAX_CUSTOM_ID}"
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    if unknown:
        return "invalid_request", f"line {n}: unknown field(s) {unknown}; a line has custom_id, method, url, body"
    if item.get("method", "POST") != "POST":
        return "invalid_method", f"line {n}: method must be POST, got {str(item.get('method'))[:20]!r}"
    if item.get("url") != endpoint:
        return "invalid_url", (f"line {n}: url {str(item.get('url'))[:80]!r} is not this batch's endpoint "
                               f"{endpoint!r}")
    body = item.get("body")
    if not isinstance(body, dict):
        return "invalid_body", f"line {n}: body must be a JSON object (the request sent to {endpoint})"
    if body.get("stream"):
        return "invalid_body", f"line {n}: stream is not supported in a batch; drop it"
    return None
