"""Compile a JSON Schema (or OpenAI's JSON mode) into a small graph of value nodes.

A :class:`Node` is one value position: a union of alternatives (object, array, string, number,
literal). Each alternative knows the fewest bytes of a valid value it can produce (``min_cost``),
which is what lets the decoder close a value before the token budget runs out. Recursive schemas
(``$ref`` cycles) are fine: costs are found by iterating to a fixed point.

What it enforces: ``type`` (one or a list), ``properties``/``required``/``additionalProperties``,
``items``/``minItems``/``maxItems``, ``enum``/``const``, ``anyOf``/``oneOf`` (both as "any of"),
``allOf`` (shallow merge), ``minLength``/``maxLength``, ``$ref`` into ``$defs``/``definitions``, and
``minimum >= 0`` (as "no minus sign") for numbers. Everything else (``pattern``, ``format``, other
numeric bounds, ``prefixItems``, ``not``, ``if``) is accepted and NOT enforced.

Caps so that a model that never wants to stop still stops: strings at most ``max_string_chars`` unless
the schema says otherwise, numbers at most 15 integer and 15 fraction digits, no exponent.

This module knows nothing about tokens or tokenizers; it works in bytes of compact JSON.
"""
from __future__ import annotations

import json
from typing import Any

from autoglm.errors import InvalidRequestError

__all__ = [
    "INF",
    "Node",
    "ObjectAlt",
    "ArrayAlt",
    "StringAlt",
    "NumberAlt",
    "LiteralAlt",
    "compile_json_object",
    "compile_schema",
    "DEFAULT_MAX_STRING_CHARS",
    "DEFAULT_MAX_KEY_CHARS",
]

INF = 10**9
DEFAULT_MAX_STRING_CHARS = 128
DEFAULT_MAX_KEY_CHARS = 64
MAX_INT_DIGITS = 15
MAX_FRAC_DIGITS = 15

K_OBJECT, K_ARRAY, K_STRING, K_NUMBER, K_LITERAL = range(5)
_NUMBER_START = b"-0123456789"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Node:
    """A value position: any of ``alts``. ``by_first`` maps a first byte to the alts it can start."""

    __slots__ = ("alts", "min_cost", "min_cost_root", "by_first", "_frames")

    def __init__(self) -> None:
        self.alts: list[Any] = []
        self.min_cost = INF
        self.min_cost_root = INF
        self.by_first: dict[int, tuple[Any, ...]] = {}
        self._frames: dict[Any, Any] = {}  # frame cache, filled by the automaton

    def _finish(self) -> None:
        firsts: dict[int, list[Any]] = {}
        for alt in self.alts:
            for b in alt.first_bytes():
                firsts.setdefault(b, []).append(alt)
        self.by_first = {b: tuple(a) for b, a in firsts.items()}


class _Alt:
    kind: int
    min_cost: int = INF

    def __init__(self) -> None:
        self._frames: dict[Any, Any] = {}  # frame cache, filled by the automaton

    def root_cost(self) -> int:
        """Cost when this is the whole output: values that could go on (numbers) need a terminator."""
        return self.min_cost


class ObjectAlt(_Alt):
    """An object whose declared keys come in declaration order, then (if allowed) free keys.

    ``keys[j]`` is property j's name as JSON bytes with quotes. Per "next free index" i:
    ``cands_from[i]``: the declared properties that may come next (up to the first required one);
    ``free_ok[i]``: a free key may come next; ``close_ok[i]``: ``}`` may come next.
    Costs (bytes to finish the object): ``key_cost[j]`` from right after an opening quote-less
    key start, ``comma_cost[i]`` right after a comma, ``after_value_cost[i]`` right after a value.
    """

    kind = K_OBJECT

    def __init__(self, names: list[str], nodes: list[Node], required: list[bool], additional: Node | None,
                 key_max: int):
        super().__init__()
        self.names = tuple(names)
        self.keys = tuple(_dumps(n) for n in names)
        self.nodes = tuple(nodes)
        self.required = tuple(required)
        self.additional = additional
        self.key_max = key_max
        self.excluded = frozenset(n.encode("utf-8") for n in names)
        # free keys: no escapes (so a key cannot spell a declared name in disguise), capped length
        self.key_spec = StringAlt(0, key_max, allow_escapes=False, excluded=self.excluded)
        n = len(names)
        self.n = n
        self.close_ok = tuple(not any(required[i:]) for i in range(n + 1))
        self.free_ok = tuple(additional is not None and self.close_ok[i] for i in range(n + 1))
        cands = []
        for i in range(n + 1):
            c = []
            for j in range(i, n):
                c.append(j)
                if required[j]:
                    break
            cands.append(tuple(c))
        self.cands_from = tuple(cands)
        self.comma_ok = tuple(bool(self.cands_from[i]) or self.free_ok[i] for i in range(n + 1))
        self.key_cost: list[int] = [INF] * n
        self.comma_cost: list[int] = [INF] * (n + 1)
        self.after_value_cost: list[int] = [INF] * (n + 1)
        self.free_key_cost = INF

    def first_bytes(self) -> bytes:
        return b"{"

    def value_min(self, j: int) -> int:
        node = self.nodes[j] if j >= 0 else self.additional
        return INF if node is None else node.min_cost

    def recompute(self) -> int:
        n = self.n
        after = [INF] * (n + 1)
        comma = [INF] * (n + 1)
        key = [INF] * n
        after[n] = 1
        addl = self.additional.min_cost if self.additional is not None else INF
        free_key = min(INF, 2 + 1 + addl + 1)  # "":<value>}
        comma[n] = free_key if self.free_ok[n] else INF
        for i in range(n - 1, -1, -1):
            key[i] = min(INF, len(self.keys[i]) + 1 + self.value_min(i) + after[i + 1])
            c = min((key[j] for j in self.cands_from[i]), default=INF)
            if self.free_ok[i]:
                c = min(c, free_key)
            comma[i] = c
            after[i] = min(1 if self.close_ok[i] else INF, 1 + c)
        self.key_cost, self.comma_cost, self.after_value_cost, self.free_key_cost = key, comma, after, free_key
        open_cost = min(1 if self.close_ok[0] else INF, comma[0])
        self.min_cost = min(INF, 1 + open_cost)
        return self.min_cost


class ArrayAlt(_Alt):
    kind = K_ARRAY

    def __init__(self, items: Node, min_items: int, max_items: int | None):
        super().__init__()
        self.items = items
        self.min_items = min_items
        self.max_items = max_items

    def first_bytes(self) -> bytes:
        return b"["

    def need_cost(self, have: int) -> int:
        """Bytes to close after ``have`` items: the missing items (each after a comma) and ``]``."""
        k = max(0, self.min_items - have)
        return min(INF, k * (1 + self.items.min_cost) + 1)

    def recompute(self) -> int:
        m = self.items.min_cost
        if self.min_items == 0:
            self.min_cost = 2
        else:
            self.min_cost = min(INF, 2 + self.min_items * m + self.min_items - 1)
        return self.min_cost


class StringAlt(_Alt):
    """A string of ``min_len``..``max_len`` code points. ``excluded``: contents it may not equal
    (used for free object keys, which must not repeat a declared name)."""

    kind = K_STRING

    def __init__(self, min_len: int, max_len: int, allow_escapes: bool = True,
                 excluded: frozenset[bytes] | None = None):
        super().__init__()
        self.min_len = min_len
        self.max_len = max_len
        self.allow_escapes = allow_escapes
        self.excluded = excluded or None
        self.min_cost = 2 + min_len

    def first_bytes(self) -> bytes:
        return b'"'

    def recompute(self) -> int:
        return self.min_cost


class NumberAlt(_Alt):
    kind = K_NUMBER

    def __init__(self, integer: bool, allow_negative: bool):
        super().__init__()
        self.integer = integer
        self.allow_negative = allow_negative
        self.min_cost = 1

    def first_bytes(self) -> bytes:
        return _NUMBER_START if self.allow_negative else _NUMBER_START[1:]

    def root_cost(self) -> int:
        return self.min_cost + 1

    def recompute(self) -> int:
        return self.min_cost


class LiteralAlt(_Alt):
    """One of a fixed set of compact JSON texts (enum, const, true/false, null)."""

    kind = K_LITERAL

    def __init__(self, cands: list[bytes]):
        super().__init__()
        self.cands = tuple(dict.fromkeys(cands))
        self.min_cost = min(len(c) for c in self.cands)

    def first_bytes(self) -> bytes:
        return bytes(sorted({c[0] for c in self.cands}))

    def root_cost(self) -> int:
        return min(len(c) + (c[0] in _NUMBER_START) for c in self.cands)

    def recompute(self) -> int:
        return self.min_cost


# --------------------------------------------------------------------------------------------------


class _Compiler:
    def __init__(self, root: Any, max_string_chars: int, max_key_chars: int):
        self.root = root
        self.max_string_chars = max_string_chars
        self.max_key_chars = max_key_chars
        self.refs: dict[str, Node] = {}
        self.nodes: list[Node] = []
        self._any: Node | None = None

    def new_node(self) -> Node:
        node = Node()
        self.nodes.append(node)
        return node

    def any_node(self) -> Node:
        if self._any is None:
            node = self._any = self.new_node()
            node.alts = [
                self.free_object(node),
                ArrayAlt(node, 0, None),
                StringAlt(0, self.max_string_chars),
                NumberAlt(False, True),
                LiteralAlt([b"true", b"false", b"null"]),
            ]
        return self._any

    def free_object(self, values: Node) -> ObjectAlt:
        return ObjectAlt([], [], [], values, self.max_key_chars)

    def resolve(self, ref: str) -> Node:
        if ref in self.refs:
            return self.refs[ref]
        if not ref.startswith("#"):
            raise InvalidRequestError(
                f"JSON schema $ref {ref!r} points outside the schema; only local refs such as "
                "'#/$defs/Name' are supported", param="response_format")
        node = self.refs[ref] = self.new_node()
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                target = target[int(part)] if isinstance(target, list) else target[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise InvalidRequestError(
                    f"JSON schema $ref {ref!r} does not resolve (no {part!r}); define it under "
                    "'$defs' or 'definitions'", param="response_format") from None
        node.alts.extend(self.compile(target).alts)
        return node

    def compile(self, schema: Any) -> Node:
        if schema is True or schema == {}:
            return self.any_node()
        if schema is False or not isinstance(schema, dict):
            raise InvalidRequestError(
                f"JSON schema {schema!r} is not a schema object; use a dict such as "
                "{'type': 'object', 'properties': {...}}", param="response_format")
        if "$ref" in schema:
            return self.resolve(schema["$ref"])
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for sub in schema["allOf"]:
                merged = _merge(merged, self.deref(sub))
            return self.compile(merged)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                node = self.new_node()
                for sub in schema[key]:
                    sub = self.deref(sub)
                    node.alts.extend(self.compile(_merge(base, sub) if base else sub).alts)
                if not node.alts:
                    raise InvalidRequestError(f"JSON schema {key} is empty; give at least one schema",
                                              param="response_format")
                return node
        node = self.new_node()
        if "const" in schema:
            node.alts.append(LiteralAlt([_dumps(schema["const"])]))
            return node
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise InvalidRequestError(f"JSON schema enum {values!r} must be a non-empty list",
                                          param="response_format")
            node.alts.append(LiteralAlt([_dumps(v) for v in values]))
            return node
        types = schema.get("type")
        if types is None:
            if any(k in schema for k in ("properties", "required", "additionalProperties")):
                types = ["object"]
            elif any(k in schema for k in ("items", "minItems", "maxItems")):
                types = ["array"]
            elif any(k in schema for k in ("minLength", "maxLength")):
                types = ["string"]
            else:
                return self.any_node()
        if isinstance(types, str):
            types = [types]
        if schema.get("nullable") is True:
            types = list(types) + ["null"]
        for t in dict.fromkeys(types):
            node.alts.append(self.typed(t, schema))
        return node

    def deref(self, schema: Any) -> Any:
        # allOf/anyOf merging needs the referenced dict itself, not a compiled node
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            ref = schema["$ref"]
            target: Any = self.root
            for part in [p for p in ref.lstrip("#").split("/") if p]:
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            schema = _merge(target, extra) if extra else target
            seen += 1
        return schema

    def typed(self, t: str, schema: dict[str, Any]) -> Any:
        if t == "object":
            props = schema.get("properties") or {}
            if not isinstance(props, dict):
                raise InvalidRequestError(f"JSON schema properties {props!r} must be an object",
                                          param="response_format")
            required = set(schema.get("required") or [])
            missing = required - set(props)
            addl = schema.get("additionalProperties", True)
            if addl is False and missing:
                raise InvalidRequestError(
                    f"JSON schema requires {sorted(missing)} but does not list them under properties "
                    "and sets additionalProperties to false; add them to properties",
                    param="response_format")
            names = list(props)
            nodes = [self.compile(props[k]) for k in names]
            additional = None if addl is False else self.compile(addl)
            # required keys that are not declared still have to appear: declare them as "any value"
            for k in sorted(missing):
                names.append(k)
                nodes.append(additional if additional is not None else self.any_node())
            return ObjectAlt(names, nodes, [k in required for k in names], additional, self.max_key_chars)
        if t == "array":
            items = schema.get("items", True)
            if isinstance(items, list):  # draft-4 tuple form: not enforced per position
                items = True
            lo = int(schema.get("minItems", 0))
            hi = schema.get("maxItems")
            if hi is not None and int(hi) < lo:
                raise InvalidRequestError(f"JSON schema maxItems {hi} is below minItems {lo}",
                                          param="response_format")
            return ArrayAlt(self.compile(items), lo, None if hi is None else int(hi))
        if t == "string":
            lo = int(schema.get("minLength", 0))
            hi = schema.get("maxLength")
            hi = self.max_string_chars if hi is None else int(hi)
            if hi < lo:
                if "maxLength" in schema:
                    raise InvalidRequestError(f"JSON schema maxLength {hi} is below minLength {lo}",
                                              param="response_format")
                hi = lo
            return StringAlt(lo, hi)
        if t in ("number", "integer"):
            lo = schema.get("minimum", schema.get("exclusiveMinimum"))
            non_negative = isinstance(lo, (int, float)) and not isinstance(lo, bool) and lo >= 0
            return NumberAlt(t == "integer", not non_negative)
        if t == "boolean":
            return LiteralAlt([b"true", b"false"])
        if t == "null":
            return LiteralAlt([b"null"])
        raise InvalidRequestError(
            f"JSON schema type {t!r} is not a JSON type; use one of object, array, string, number, "
            "integer, boolean, null", param="response_format")

    def finish(self, root: Node) -> Node:
        alts = [a for n in self.nodes for a in n.alts]
        alts = list({id(a): a for a in alts}.values())
        for _ in range(len(alts) + len(self.nodes) + 2):
            changed = False
            for a in alts:
                a.recompute()
            for n in self.nodes:
                c = min((a.min_cost for a in n.alts), default=INF)
                if c != n.min_cost:
                    n.min_cost, changed = c, True
            if not changed:
                break
        for a in alts:
            a.recompute()
        for n in self.nodes:
            n.min_cost_root = min((a.root_cost() for a in n.alts), default=INF)
            n._finish()
        if root.min_cost >= INF:
            raise InvalidRequestError(
                "JSON schema has no finite instance (a required property or item recurses forever); "
                "make the recursive part optional", param="response_format")
        return root


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        elif k == "required" and isinstance(out.get(k), list):
            out[k] = list(dict.fromkeys(list(out[k]) + list(v)))
        else:
            out[k] = v
    return out


def _unwrap(schema: Any) -> Any:
    """Accept OpenAI's ``{"name": ..., "schema": {...}, "strict": ...}`` wrapper too."""
    if (isinstance(schema, dict) and isinstance(schema.get("schema"), dict)
            and set(schema) <= {"name", "schema", "strict", "description"}):
        return schema["schema"]
    return schema


def compile_schema(schema: Any, *, max_string_chars: int = DEFAULT_MAX_STRING_CHARS,
                   max_key_chars: int = DEFAULT_MAX_KEY_CHARS) -> Node:
    """The root node for a JSON Schema. Raises InvalidRequestError for schemas it cannot use."""
    schema = _unwrap(schema)
    comp = _Compiler(schema, max_string_chars, max_key_chars)
    return comp.finish(comp.compile(schema))


def compile_json_object(*, max_string_chars: int = DEFAULT_MAX_STRING_CHARS,
                        max_key_chars: int = DEFAULT_MAX_KEY_CHARS) -> Node:
    """The root node for JSON mode: any object (values of any type)."""
    comp = _Compiler({}, max_string_chars, max_key_chars)
    root = comp.new_node()
    root.alts.append(comp.free_object(comp.any_node()))
    return comp.finish(root)
