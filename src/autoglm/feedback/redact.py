"""Redaction of e-mail addresses, phone numbers and card-like numbers in captured text.

:func:`redact_text` replaces each match with a placeholder (``[email]``, ``[phone]``, ``[card]``) and
says how many it replaced; :func:`redact_json` does it to every string of a JSON value except the
fields that are identifiers (``id``, ``model``, ``role``, ...). The patterns are heuristics, tuned to
err towards removing:

* e-mail: ``local@domain.tld``;
* card: 13-19 digits, optionally grouped by spaces or dashes, that pass the Luhn check (so an order
  number rarely goes, a real card number always does);
* phone: 7-15 digits written as a phone number: a leading ``+`` country code, or groups separated by
  spaces, dashes or a bracketed area code (``+44 20 7946 0958``, ``(555) 123-4567``, ``555-123-4567``).
  A bare run of digits and an ISO date (``2024-01-15``) are left alone.

Knows nothing about storage or HTTP.
"""
from __future__ import annotations

import re
from typing import Any, Callable

__all__ = ["REDACTORS", "redact_text", "redact_json"]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ -]?)?(?:\(\d{1,4}\)[ -]?)?\d{2,5}(?:[ -]\d{2,5}){0,4}(?!\w)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# identifiers and enums of the OpenAI shapes: never user text
_KEEP_FIELDS = frozenset({"id", "object", "model", "role", "finish_reason", "type", "system_fingerprint",
                          "tool_call_id", "name"})


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", m.group(0))
    return "[card]" if 13 <= len(digits) <= 19 and _luhn(digits) else None


def _phone(m: re.Match[str]) -> str | None:
    text = m.group(0)
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15 or _DATE.fullmatch(text):
        return None
    written_as_phone = text.startswith("+") or "(" in text or re.search(r"\d[ -]\d", text) is not None
    return "[phone]" if written_as_phone else None


def _email(m: re.Match[str]) -> str | None:
    return "[email]"


# name -> (pattern, replacement or None to keep the match); applied in this order
REDACTORS: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]]] = {
    "email": (_EMAIL, _email),
    "card": (_CARD, _card),
    "phone": (_PHONE, _phone),
}


def redact_text(text: str, kinds: tuple[str, ...] | list[str]) -> tuple[str, int]:
    """``text`` with every match of ``kinds`` (names of :data:`REDACTORS`) replaced; and the count."""
    count = 0
    for name in REDACTORS:
        if name not in kinds:
            continue
        pattern, replace = REDACTORS[name]

        def sub(m: re.Match[str]) -> str:
            nonlocal count
            out = replace(m)
            if out is None:
                return m.group(0)
            count += 1
            return out

        text = pattern.sub(sub, text)
    return text, count


def redact_json(value: Any, kinds: tuple[str, ...] | list[str]) -> tuple[Any, int]:
    """A copy of a JSON value with every string redacted (identifier fields kept); and the count."""
    if not kinds:
        return value, 0
    total = 0

    def walk(v: Any, field: str | None) -> Any:
        nonlocal total
        if isinstance(v, str):
            if field in _KEEP_FIELDS:
                return v
            out, n = redact_text(v, kinds)
            total += n
            return out
        if isinstance(v, dict):
            return {k: walk(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, field) for x in v]
        return v

    return walk(value, None), total
