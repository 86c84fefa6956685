"""Compile a JSON Schema (or OpenAI's JSON mode) into a small graph of value nodes.

A :class:`Node` is one value position: a union of alternatives (object, array, string, number,
literal). Each alternative knows the fewest bytes of a valid value it can produce (``min_cost``),
which is what lets the decoder close a value before the token budget runs out. Recursive schemas
(``$ref`` cycles) are fine: costs are found by iterating to a fixed point.

What it enforces: ``type`` (one or a list), ``properties``/``required``/``additionalProperties``,
``items``/``minItems``/``maxItems``, ``enum``/``const``, ``anyOf``/``oneOf`` (both as "any of"),
``allOf`` (shallow merge), ``minLength``/``maxLength``, ``$ref`` into ``$defs``/``definitions``, and
``minimum >= 0`` (as "no minus sign") for numbers. ``pattern`` and ``format`` only raise a string's
minimal length here (their shortest match); they, the other numeric bounds and ``multipleOf`` are
enforced by the llguidance backend (:mod:`autoglm.engine.guided.llg`), which runs this automaton
beside it for the closing-cost guarantee. ``prefixItems``, ``not``, ``if`` are accepted and NOT enforced.

Malformed keywords (``{"type": 5}``, a ``required`` that is not a list of names, a ``$ref`` that is not
a string, a negative ``minLength``) are :class:`~autoglm.errors.InvalidRequestError` s naming the place
in the schema; so are schemas that expand past :data:`MAX_SCHEMA_NODES` parts or nest deeper than
:data:`MAX_SCHEMA_DEPTH`. Compiling is linear in the schema's size.

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
# Bounds on what a request's schema may ask for (the caller also caps its size in bytes):
MAX_SIZE_KEYWORD = 1_000_000  # minLength/minItems above this cannot be generated anyway
MAX_SCHEMA_NODES = 20_000  # properties + subschemas after $ref/allOf/anyOf expansion
MAX_SCHEMA_DEPTH = 64  # nesting, including expansions

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


class _Candidates:
    """``cands[i]``: the declared properties that may come after position i, i.e. i up to and
    including the first required one. Built on demand (and kept): most positions are never visited."""

    __slots__ = ("_next_required", "_n", "_made")

    def __init__(self, next_required: list[int], n: int):
        self._next_required, self._n, self._made = next_required, n, {}

    def __len__(self) -> int:
        return self._n + 1

    def __getitem__(self, i: int) -> tuple[int, ...]:
        got = self._made.get(i)
        if got is None:
            stop = min(self._next_required[i] + 1, self._n)
            got = self._made[i] = tuple(range(i, stop))
        return got


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
        # Everything below is linear in n: a schema may have thousands of optional properties, and
        # per-position tuples of the candidates would make compiling it quadratic in time and memory.
        close = [True] * (n + 1)
        nxt_req = [n] * (n + 1)  # the first required property at or after i (n: none)
        for i in range(n - 1, -1, -1):
            close[i] = close[i + 1] and not required[i]
            nxt_req[i] = i if required[i] else nxt_req[i + 1]
        self.close_ok = tuple(close)
        self._next_required = nxt_req
        self.free_ok = tuple(additional is not None and close[i] for i in range(n + 1))
        self.cands_from = _Candidates(nxt_req, n)
        self.comma_ok = tuple(i < n or self.free_ok[i] for i in range(n + 1))
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
        best_key = INF  # min key_cost over cands_from[i]: i..first required, a running minimum
        for i in range(n - 1, -1, -1):
            key[i] = min(INF, len(self.keys[i]) + 1 + self.value_min(i) + after[i + 1])
            best_key = key[i] if self.required[i] else min(key[i], best_key)
            c = best_key
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


_JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_PARAM = "response_format"  # callers that know better (a tool's parameters) replace it


def _bad(path: str, message: str) -> InvalidRequestError:
    if len(path) > 80:
        path = path[:40] + "..." + path[-37:]
    return InvalidRequestError(f"JSON schema at {path}: {message}", param=_PARAM)


def _size(schema: dict[str, Any], kw: str, path: str) -> int | None:
    """A length or count keyword: a non-negative integer up to :data:`MAX_SIZE_KEYWORD`."""
    if kw not in schema:
        return None
    v = schema[kw]
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _bad(path, f"'{kw}' must be a non-negative integer, got {v!r}")
    if v > MAX_SIZE_KEYWORD:
        if kw.startswith("max"):
            return MAX_SIZE_KEYWORD  # a generous upper bound changes nothing this server can produce
        raise _bad(path, f"'{kw}' {v} is more than this server can generate (at most {MAX_SIZE_KEYWORD}); "
                         "lower it")
    return v


def _subschema(value: Any, path: str) -> Any:
    if not isinstance(value, (dict, bool)):
        raise _bad(path, f"expected a schema (an object or true/false), got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _schema_list(schema: dict[str, Any], kw: str, path: str, *, allow_empty: bool) -> list[Any]:
    v = schema[kw]
    if not isinstance(v, list) or (not v and not allow_empty):
        raise _bad(path, f"'{kw}' must be a non-empty list of schemas, got {_shown(v)}")
    return [_subschema(sub, f"{path}/{kw}/{i}") for i, sub in enumerate(v)]


class _Compiler:
    """Schema dict -> :class:`Node` graph. Every keyword it reads is checked first, so a malformed
    schema is an :class:`InvalidRequestError` naming the place (``#/properties/a``), never a crash;
    ``$ref``/``allOf``/``anyOf`` expansion is bounded by :data:`MAX_SCHEMA_NODES` and nesting by
    :data:`MAX_SCHEMA_DEPTH`, so a small schema cannot expand into unbounded work."""

    def __init__(self, root: Any, max_string_chars: int, max_key_chars: int):
        self.root = root
        self.max_string_chars = max_string_chars
        self.max_key_chars = max_key_chars
        self.refs: dict[str, Node] = {}
        self.nodes: list[Node] = []
        self._any: Node | None = None
        self._work = 0
        self._depth = 0

    def new_node(self) -> Node:
        node = Node()
        self.nodes.append(node)
        return node

    def _spend(self, path: str, units: int = 1) -> None:
        self._work += units
        if self._work > MAX_SCHEMA_NODES:
            raise _bad(path, f"the schema expands to more than {MAX_SCHEMA_NODES} parts (counting each "
                             "property, $ref, allOf and anyOf expansion); simplify it")

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

    def _target(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str):
            raise _bad(path, f"'$ref' must be a string such as '#/$defs/Name', got {_shown(ref)}")
        if not ref.startswith("#"):
            raise _bad(path, f"$ref {ref!r} points outside the schema; only local refs such as "
                             "'#/$defs/Name' are supported")
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                target = target[int(part)] if isinstance(target, list) else target[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise _bad(path, f"$ref {ref!r} does not resolve (no {part!r}); define it under "
                                 "'$defs' or 'definitions'") from None
        return _subschema(target, f"{path}/$ref")

    def resolve(self, ref: Any, path: str) -> Node:
        if isinstance(ref, str) and ref in self.refs:
            return self.refs[ref]
        target = self._target(ref, path)
        node = self.refs[ref] = self.new_node()
        node.alts.extend(self.compile(target, ref).alts)
        return node

    def compile(self, schema: Any, path: str = "#") -> Node:
        self._spend(path)
        if self._depth >= MAX_SCHEMA_DEPTH:
            raise _bad(path, f"the schema nests (or refers to itself through allOf/anyOf) more than "
                             f"{MAX_SCHEMA_DEPTH} levels deep; flatten it")
        self._depth += 1
        try:
            return self._compile(schema, path)
        finally:
            self._depth -= 1

    def _compile(self, schema: Any, path: str) -> Node:
        if schema is True or schema == {}:
            return self.any_node()
        if schema is False:
            raise _bad(path, "the schema 'false' allows no value; remove it or give a schema")
        if not isinstance(schema, dict):
            raise _bad(path, f"{_shown(schema)} is not a schema object; use a dict such as "
                             "{'type': 'object', 'properties': {...}}")
        for kw in ("$defs", "definitions", "properties"):
            if kw in schema and not isinstance(schema[kw], dict):
                raise _bad(path, f"'{kw}' must be an object mapping names to schemas, got {_shown(schema[kw])}")
        if "$ref" in schema:
            return self.resolve(schema["$ref"], path)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for i, sub in enumerate(_schema_list(schema, "allOf", path, allow_empty=True)):
                self._spend(path)
                merged = _merge(merged, self.deref(sub, f"{path}/allOf/{i}"))
            return self.compile(merged, path)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = _schema_list(schema, key, path, allow_empty=False)
                base = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
                node = self.new_node()
                for i, sub in enumerate(subs):
                    where = f"{path}/{key}/{i}"
                    sub = self.deref(sub, where)
                    node.alts.extend(self.compile(_merge(base, sub) if base else sub, where).alts)
                if not node.alts:
                    raise _bad(path, f"'{key}' allows no value; give at least one usable schema")
                return node
        node = self.new_node()
        if "const" in schema:
            node.alts.append(LiteralAlt([_dumps(schema["const"])]))
            return node
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise _bad(path, f"'enum' must be a non-empty list, got {_shown(values)}")
            self._spend(path, len(values))
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
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            raise _bad(path, f"'type' must be a type name or a non-empty list of them ({', '.join(_JSON_TYPES)}), "
                             f"got {_shown(schema.get('type'))}")
        nullable = schema.get("nullable")
        if nullable is not None and not isinstance(nullable, bool):
            raise _bad(path, f"'nullable' must be true or false, got {_shown(nullable)}")
        if nullable:
            types = list(types) + ["null"]
        for t in dict.fromkeys(types):
            node.alts.append(self.typed(t, schema, path))
        return node

    def deref(self, schema: Any, path: str) -> Any:
        # allOf/anyOf merging needs the referenced dict itself, not a compiled node
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema:
            if seen >= 32:
                raise _bad(path, "$ref chains through more than 32 references; shorten the chain")
            target = self._target(schema["$ref"], path)
            target = {} if target is True else target
            if target is False:
                raise _bad(path, "the $ref target 'false' allows no value")
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            schema = _merge(target, extra) if extra else target
            seen += 1
        return {} if schema is True else schema

    def typed(self, t: str, schema: dict[str, Any], path: str) -> Any:
        if t == "object":
            props = schema.get("properties") or {}
            required_list = schema.get("required") or []
            if not isinstance(required_list, list) or not all(isinstance(k, str) for k in required_list):
                raise _bad(path, f"'required' must be a list of property names, got {_shown(schema.get('required'))}")
            required = set(required_list)
            missing = required - set(props)
            addl = schema.get("additionalProperties", True)
            if not isinstance(addl, (bool, dict)):
                raise _bad(path, f"'additionalProperties' must be true, false or a schema, got {_shown(addl)}")
            if addl is False and missing:
                raise _bad(path, f"requires {sorted(missing)} but does not list them under properties "
                                 "and sets additionalProperties to false; add them to properties")
            self._spend(path, len(props) + len(missing))
            names = list(props)
            nodes = [self.compile(props[k], f"{path}/properties/{k}") for k in names]
            additional = None if addl is False else self.compile(addl, f"{path}/additionalProperties")
            # required keys that are not declared still have to appear: declare them as "any value"
            for k in sorted(missing):
                names.append(k)
                nodes.append(additional if additional is not None else self.any_node())
            return ObjectAlt(names, nodes, [k in required for k in names], additional, self.max_key_chars)
        if t == "array":
            items = schema.get("items", True)
            if isinstance(items, list):  # draft-4 tuple form: not enforced per position
                for i, sub in enumerate(items):
                    _subschema(sub, f"{path}/items/{i}")
                items = True
            items = _subschema(items, f"{path}/items")
            lo = _size(schema, "minItems", path) or 0
            hi = _size(schema, "maxItems", path)
            if hi is not None and hi < lo:
                raise _bad(path, f"maxItems {hi} is below minItems {lo}")
            return ArrayAlt(self.compile(items, f"{path}/items"), lo, hi)
        if t == "string":
            lo = _size(schema, "minLength", path) or 0
            hi = _size(schema, "maxLength", path)
            if hi is not None and hi < lo:
                raise _bad(path, f"maxLength {hi} is below minLength {lo}")
            # pattern/format are enforced by the llguidance backend; here they only raise the
            # minimal length (a lower bound, so this automaton's language stays a superset)
            lo = max(lo, _pattern_min_chars(schema.get("pattern")), FORMAT_MIN_CHARS.get(schema.get("format"), 0))
            if hi is not None:
                lo = min(lo, hi)
            return StringAlt(lo, max(lo, self.max_string_chars) if hi is None else hi)
        if t in ("number", "integer"):
            lo = schema.get("minimum", schema.get("exclusiveMinimum"))
            non_negative = isinstance(lo, (int, float)) and not isinstance(lo, bool) and lo >= 0
            return NumberAlt(t == "integer", not non_negative)
        if t == "boolean":
            return LiteralAlt([b"true", b"false"])
        if t == "null":
            return LiteralAlt([b"null"])
        raise _bad(path, f"type {t!r} is not a JSON type; use one of {', '.join(_JSON_TYPES)}")

    def finish(self, root: Node) -> Node:
        # Children were created after their parents: walking backwards settles an acyclic schema in
        # one or two passes; cycles ($ref) iterate to the fixed point.
        alts = [a for n in reversed(self.nodes) for a in n.alts]
        alts = list({id(a): a for a in alts}.values())
        nodes = list(reversed(self.nodes))
        for _ in range(len(alts) + len(nodes) + 2):
            changed = False
            for a in alts:
                a.recompute()
            for n in nodes:
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
                "JSON schema has no finite instance this server can produce: a required property or item refers "
                "back to itself, or the minimum sizes (minLength, minItems) multiply past 10^9 bytes; make the "
                "recursive part optional or lower the minimums", param=_PARAM)
        return root


# the shortest value of each string format llguidance enforces (lower bounds: "a@b", "::", "P1D")
FORMAT_MIN_CHARS = {"date-time": 19, "date": 10, "time": 8, "duration": 3, "email": 3, "hostname": 1,
                    "ipv4": 7, "ipv6": 2, "uuid": 36}


def _pattern_min_chars(pattern: Any) -> int:
    """Fewest characters any match of ``pattern`` has (0 when Python's re cannot read it)."""
    if not isinstance(pattern, str):
        return 0
    try:
        from re import _parser  # the stdlib's own regex parser: the only way to get a width

        return min(int(_parser.parse(pattern).getwidth()[0]), MAX_SIZE_KEYWORD)
    except Exception:  # an ECMA-only construct, or too complex: no bound
        return 0


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(b, dict):
        return b  # compiled (and rejected) as it is
    out = dict(a)
    for k, v in b.items():
        if k == "properties" and isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k] = {**out[k], **v}
        elif k == "required" and isinstance(out.get(k), list) and isinstance(v, list):
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
    try:
        return comp.finish(comp.compile(schema))
    except InvalidRequestError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        # a shape the checks above did not foresee: still the schema's fault, never a server error
        raise InvalidRequestError(f"JSON schema could not be used ({type(exc).__name__}: {exc}); check its "
                                  "keywords against JSON Schema", param=_PARAM) from None


def compile_json_object(*, max_string_chars: int = DEFAULT_MAX_STRING_CHARS,
                        max_key_chars: int = DEFAULT_MAX_KEY_CHARS) -> Node:
    """The root node for JSON mode: any object (values of any type)."""
    comp = _Compiler({}, max_string_chars, max_key_chars)
    root = comp.new_node()
    root.alts.append(comp.free_object(comp.any_node()))
    return comp.finish(root)
