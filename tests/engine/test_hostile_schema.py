"""Schemas built to make the compiler work hard: it stays linear, and expansion is bounded."""
from __future__ import annotations

import time

import pytest

from autoglm.engine.guided.schema import MAX_SCHEMA_NODES, compile_schema
from autoglm.errors import InvalidRequestError


def _flat(n: int) -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(n)}}


def _best_of(n: int, fn):
    """(the fastest of ``n`` timed calls, the last result): a GC pause or a busy core in one call is not the
    compiler's growth."""
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def test_compile_is_linear_in_properties():
    small, _ = _best_of(3, lambda: compile_schema(_flat(2000)))
    big, root = _best_of(3, lambda: compile_schema(_flat(8000)))
    assert root.min_cost == 2  # "{}": every property optional
    assert big < max(8 * small, 0.5) and big < 3.0, (small, big)  # 4x the size: about 4x the time


def test_expansion_and_nesting_are_bounded():
    defs = {"a0": {"type": "string"}}
    for k in range(1, 40):  # each level doubles: 2**39 copies if expanded naively
        defs[f"a{k}"] = {"anyOf": [{"$ref": f"#/$defs/a{k - 1}"}, {"$ref": f"#/$defs/a{k - 1}"}]}
    t = time.monotonic()
    with pytest.raises(InvalidRequestError, match=str(MAX_SCHEMA_NODES)):
        compile_schema({"$defs": defs, "$ref": "#/$defs/a39"})
    deep: dict = {"type": "string"}
    for _ in range(3000):
        deep = {"type": "array", "items": deep}
    with pytest.raises(InvalidRequestError, match="levels deep"):
        compile_schema(deep)
    with pytest.raises(InvalidRequestError, match="levels deep"):
        compile_schema({"allOf": [{"$ref": "#"}]})  # merges itself forever
    assert time.monotonic() - t < 3.0


def test_size_keywords_give_the_real_reason():
    with pytest.raises(InvalidRequestError, match="more than this server can generate"):
        compile_schema({"type": "string", "minLength": 10**9})
    with pytest.raises(InvalidRequestError, match="non-empty list"):
        compile_schema({"type": []})
    compile_schema({"type": "string", "maxLength": 10**12})  # a generous maximum is harmless
