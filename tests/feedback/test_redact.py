"""Redaction removes e-mail addresses, phone numbers and card numbers, and leaves ordinary numbers alone."""
from __future__ import annotations

import pytest

from autoglm.feedback.redact import REDACTORS, redact_json, redact_text

ALL = tuple(REDACTORS)


@pytest.mark.parametrize("text,expected", [
    ("write to jane.roe+work@mail.example.co.uk today", "write to [email] today"),
    ("card 4111 1111 1111 1111, exp 12/29", "card [card], exp 12/29"),
    ("card 5500-0000-0000-0004 thanks", "card [card] thanks"),
    ("call +44 20 7946 0958 or (555) 123-4567 or 555-123-4567", "call [phone] or [phone] or [phone]"),
])
def test_each_kind_is_replaced(text, expected):
    out, n = redact_text(text, ALL)
    assert out == expected and n == expected.count("[")


@pytest.mark.parametrize("text", [
    "order 1234567890123 shipped",  # 13 digits failing the Luhn check: not a card
    "on 2024-01-15 at 10:30", "what is 12345678 * 3?", "version 1.2.3, ip 10.0.0.12", "I am 42",
])
def test_ordinary_numbers_stay(text):
    assert redact_text(text, ALL) == (text, 0)


def test_only_the_chosen_kinds_run():
    text = "jane@example.com 4111111111111111"
    assert redact_text(text, ["card"]) == ("jane@example.com [card]", 1)
    assert redact_text(text, []) == (text, 0)


def test_json_strings_are_redacted_identifiers_kept():
    value = {"id": "chatcmpl-jane@example.com", "model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "mail jane@example.com"}]}], "seed": 4111111111111111}
    out, n = redact_json(value, ALL)
    assert n == 1 and out["messages"][0]["content"][0]["text"] == "mail [email]"
    assert out["id"] == value["id"] and out["seed"] == 4111111111111111
    assert value["messages"][0]["content"][0]["text"] == "mail jane@example.com"  # a copy; the input is untouched
