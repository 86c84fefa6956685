"""A byte-level pushdown automaton that accepts compact JSON matching a compiled schema.

State is a list of *cells*, one per live parse (several only while ``anyOf`` branches or a
declared-vs-free key are still ambiguous). A cell is an immutable linked stack
``(frame, parent_cell, below)``: ``frame`` is the innermost open construct, ``below`` the bytes
every enclosing frame still needs once this one is finished. Frames are immutable and cached, so
stepping a byte costs a few dict lookups and one tuple, and a trie walk can keep every prefix's
state without copying.

Every frame knows ``cost``: the fewest bytes that finish the whole output from here (exact, given
the schema's minimal values and no whitespace), and ``after``: what it still needs once its child
value is done. ``cost + below`` is the closing cost of a cell.

Whitespace: one optional space after ``:`` and ``,``, nowhere else. Numbers and numeric enum
values at top level end with a newline (a number could always go on otherwise).

Nothing here knows about tokens; :mod:`autoglm.engine.guided` maps tokens to bytes.
"""
from __future__ import annotations

from typing import Any

from autoglm.engine.guided.schema import (
    INF,
    K_ARRAY,
    K_LITERAL,
    K_NUMBER,
    K_OBJECT,
    K_STRING,
    MAX_FRAC_DIGITS,
    MAX_INT_DIGITS,
    ArrayAlt,
    LiteralAlt,
    Node,
    NumberAlt,
    ObjectAlt,
    StringAlt,
)

__all__ = ["Cell", "initial_cells", "feed", "cell_cost", "is_done", "StringFrame", "UTF8", "PENDING", "BAD"]

Cell = tuple  # (frame, parent Cell | None, below: int)

SP, QUOTE, BSLASH, COMMA, COLON = 0x20, 0x22, 0x5C, 0x2C, 0x3A
LBRACE, RBRACE, LBRACK, RBRACK, MINUS, DOT, NL = 0x7B, 0x7D, 0x5B, 0x5D, 0x2D, 0x2E, 0x0A
ZERO = 0x30
ESCAPABLE = frozenset(b'"\\/bfnrt')
NUMBER_START = frozenset(b"-0123456789")

# --- UTF-8 validity as a DFA over bytes. State 0: between characters; 1-7: inside one; 8: invalid.
BAD = 8
PENDING = (0, 1, 2, 2, 2, 3, 3, 3, 0)  # continuation bytes still owed in each state


def _utf8_table() -> tuple[tuple[int, ...], ...]:
    rows = [[BAD] * 256 for _ in range(9)]
    for b in range(0x80):
        rows[0][b] = 0
    for b in range(0xC2, 0xE0):
        rows[0][b] = 1
    rows[0][0xE0] = 3
    for b in list(range(0xE1, 0xED)) + [0xEE, 0xEF]:
        rows[0][b] = 2
    rows[0][0xED] = 4
    rows[0][0xF0] = 6
    for b in range(0xF1, 0xF4):
        rows[0][b] = 5
    rows[0][0xF4] = 7
    for b in range(0x80, 0xC0):
        rows[1][b] = 0
        rows[2][b] = 1
        rows[5][b] = 2
    for b in range(0xA0, 0xC0):
        rows[3][b] = 1  # E0: no overlong forms
    for b in range(0x80, 0xA0):
        rows[4][b] = 1  # ED: no surrogates
    for b in range(0x90, 0xC0):
        rows[6][b] = 2  # F0: no overlong forms
    for b in range(0x80, 0x90):
        rows[7][b] = 2  # F4: nothing above U+10FFFF
    return tuple(tuple(r) for r in rows)


UTF8 = _utf8_table()


def cell(frame: Any, parent: Cell | None) -> Cell:
    return (frame, parent, 0 if parent is None else parent[0].after + parent[2])


def _pop(parent: Cell) -> list[Cell]:
    """The frame on top of ``parent`` has a finished child."""
    return parent[0].child_done(parent[1])


def feed(c: Cell, b: int) -> list[Cell]:
    return c[0].step(b, c[1])


def cell_cost(c: Cell) -> int:
    return c[0].cost + c[2]


class _Done:
    cost = 0
    after = 0
    done = True

    def step(self, b: int, parent: Cell | None) -> list[Cell]:
        return []


DONE = _Done()
_DONE_CELL: Cell = (DONE, None, 0)


def is_done(c: Cell) -> bool:
    return c[0] is DONE


class _Root:
    cost = 0
    after = 0

    def child_done(self, parent: Cell | None) -> list[Cell]:
        return [_DONE_CELL]


ROOT_CELL: Cell = (_Root(), None, 0)


class PrefixFrame:
    """Fixed bytes the output must start with (e.g. a forced tool call's ``name\\n``)."""

    __slots__ = ("data", "pos", "then", "cost", "after")

    def __init__(self, data: bytes, pos: int, then: Any):
        self.data, self.pos, self.then = data, pos, then
        self.cost = len(data) - pos + then.cost
        self.after = 0

    def step(self, b: int, parent: Cell | None) -> list[Cell]:
        if self.data[self.pos] != b:
            return []
        if self.pos + 1 == len(self.data):
            return [cell(self.then, parent)]
        return [cell(PrefixFrame(self.data, self.pos + 1, self.then), parent)]


class ValueFrame:
    """Before the first byte of a value. ``ws``: one space may come first."""

    __slots__ = ("node", "ws", "at_root", "cost", "after")

    def __init__(self, node: Node, ws: bool, at_root: bool):
        self.node, self.ws, self.at_root = node, ws, at_root
        self.cost = node.min_cost_root if at_root else node.min_cost
        self.after = 0

    def step(self, b: int, parent: Cell | None) -> list[Cell]:
        if b == SP and self.ws:
            return [cell(value_frame(self.node, False, self.at_root), parent)]
        alts = self.node.by_first.get(b)
        if not alts:
            return []
        if len(alts) == 1:
            return _START[alts[0].kind](alts[0], b, parent, self.at_root)
        out: list[Cell] = []
        for alt in alts:
            out.extend(_START[alt.kind](alt, b, parent, self.at_root))
        return out


def value_frame(node: Node, ws: bool, at_root: bool) -> ValueFrame:
    key = (ws, at_root)
    f = node._frames.get(key)
    if f is None:
        f = node._frames[key] = ValueFrame(node, ws, at_root)
    return f


# --- objects -------------------------------------------------------------------------------------

O_OPEN, O_AFTER_COMMA, O_AFTER_COMMA_SP, O_KEY_LIT, O_KEY_FREE, O_COLON, O_VALUE, O_AFTER_VALUE = range(8)


class ObjectFrame:
    """``idx``: the first declared property that may still come; ``j``: the property being written
    (-1 for a free key); ``cands``/``pos``: declared keys still matching ``pos`` bytes in."""

    __slots__ = ("alt", "phase", "idx", "j", "cands", "pos", "cost", "after")

    def __init__(self, alt: ObjectAlt, phase: int, idx: int, j: int, cands: tuple[int, ...], pos: int):
        self.alt, self.phase, self.idx, self.j, self.cands, self.pos = alt, phase, idx, j, cands, pos
        cost = after = INF
        if phase == O_OPEN:
            cost = min(1 if alt.close_ok[idx] else INF, alt.comma_cost[idx])
        elif phase in (O_AFTER_COMMA, O_AFTER_COMMA_SP):
            cost = alt.comma_cost[idx]
        elif phase == O_AFTER_VALUE:
            cost = alt.after_value_cost[idx]
        elif phase == O_KEY_LIT:
            cost = min(alt.key_cost[c] - pos for c in cands)
        elif phase == O_COLON:
            cost = 1 + alt.value_min(j) + alt.after_value_cost[idx]
        elif phase == O_VALUE:
            after = alt.after_value_cost[idx]
        elif phase == O_KEY_FREE:
            after = 1 + alt.value_min(-1) + alt.after_value_cost[alt.n]
        self.cost, self.after = min(cost, INF), min(after, INF)

    def step(self, b: int, parent: Cell | None) -> list[Cell]:
        alt, ph, idx = self.alt, self.phase, self.idx
        if ph == O_KEY_LIT:
            pos = self.pos
            keep = tuple(j for j in self.cands if alt.keys[j][pos] == b)
            if not keep:
                return []
            if len(alt.keys[keep[0]]) == pos + 1:  # keys end with a quote, so at most one completes
                return [cell(_object_frame(alt, O_COLON, keep[0] + 1, keep[0]), parent)]
            return [cell(_object_frame(alt, O_KEY_LIT, idx, -1, keep, pos + 1), parent)]
        if ph == O_COLON:
            if b != COLON:
                return []
            node = alt.nodes[self.j] if self.j >= 0 else alt.additional
            holder = cell(_object_frame(alt, O_VALUE, idx, self.j), parent)
            return [cell(value_frame(node, True, False), holder)]
        if ph == O_AFTER_VALUE:
            if b == COMMA and alt.comma_ok[idx]:
                return [cell(_object_frame(alt, O_AFTER_COMMA, idx), parent)]
            if b == RBRACE and alt.close_ok[idx]:
                return _pop(parent)
            return []
        # O_OPEN, O_AFTER_COMMA, O_AFTER_COMMA_SP: a key (or, when open, the end) comes next
        if b == QUOTE:
            out: list[Cell] = []
            cands = alt.cands_from[idx]
            if cands:
                out.append(cell(_object_frame(alt, O_KEY_LIT, idx, -1, cands, 1), parent))
            if alt.free_ok[idx]:
                holder = cell(_object_frame(alt, O_KEY_FREE, alt.n), parent)
                out.append(cell(string_frame(alt.key_spec, 0, 0, False, b""), holder))
            return out
        if ph == O_AFTER_COMMA and b == SP:
            return [cell(_object_frame(alt, O_AFTER_COMMA_SP, idx), parent)]
        if ph == O_OPEN and b == RBRACE and alt.close_ok[idx]:
            return _pop(parent)
        return []

    def child_done(self, parent: Cell | None) -> list[Cell]:
        if self.phase == O_VALUE:
            return [cell(_object_frame(self.alt, O_AFTER_VALUE, self.idx), parent)]
        return [cell(_object_frame(self.alt, O_COLON, self.alt.n, -1), parent)]  # O_KEY_FREE


def _object_frame(alt: ObjectAlt, phase: int, idx: int, j: int = -1, cands: tuple[int, ...] = (),
                  pos: int = 0) -> ObjectFrame:
    key = (phase, idx, j, cands, pos)
    f = alt._frames.get(key)
    if f is None:
        f = alt._frames[key] = ObjectFrame(alt, phase, idx, j, cands, pos)
    return f


def _start_object(alt: ObjectAlt, b: int, parent: Cell | None, at_root: bool) -> list[Cell]:
    return [cell(_object_frame(alt, O_OPEN, 0), parent)]


# --- arrays --------------------------------------------------------------------------------------

A_OPEN, A_VALUE, A_AFTER_VALUE = range(3)


class ArrayFrame:
    __slots__ = ("alt", "phase", "count", "cost", "after")

    def __init__(self, alt: ArrayAlt, phase: int, count: int):
        self.alt, self.phase, self.count = alt, phase, count
        if phase == A_OPEN:
            self.cost, self.after = alt.min_cost - 1, INF
        elif phase == A_VALUE:
            self.cost, self.after = INF, alt.need_cost(count + 1)
        else:
            self.cost, self.after = alt.need_cost(count), INF

    def step(self, b: int, parent: Cell | None) -> list[Cell]:
        alt = self.alt
        if self.phase == A_OPEN:
            if b == RBRACK:
                return _pop(parent) if alt.min_items == 0 else []
            if alt.max_items == 0:
                return []
            holder = cell(_array_frame(alt, A_VALUE, 0), parent)
            return value_frame(alt.items, False, False).step(b, holder)
        # A_AFTER_VALUE
        if b == COMMA and (alt.max_items is None or self.count < alt.max_items):
            holder = cell(_array_frame(alt, A_VALUE, self.count), parent)
            return [cell(value_frame(alt.items, True, False), holder)]
        if b == RBRACK and self.count >= alt.min_items:
            return _pop(parent)
        return []

    def child_done(self, parent: Cell | None) -> list[Cell]:
        return [cell(_array_frame(self.alt, A_AFTER_VALUE, self.count + 1), parent)]


def _array_frame(alt: ArrayAlt, phase: int, count: int) -> ArrayFrame:
    key = (phase, count)
    f = alt._frames.get(key)
    if f is None:
        f = alt._frames[key] = ArrayFrame(alt, phase, count)
    return f


def _start_array(alt: ArrayAlt, b: int, parent: Cell | None, at_root: bool) -> list[Cell]:
    return [cell(_array_frame(alt, A_OPEN, 0), parent)]


# --- strings -------------------------------------------------------------------------------------


class StringFrame:
    """Inside a string: ``n`` code points so far, ``u8`` the UTF-8 DFA state, ``esc`` right after a
    backslash. ``content`` is tracked only when the spec excludes some contents (free keys)."""

    __slots__ = ("spec", "n", "u8", "esc", "content", "cost", "after")

    def __init__(self, spec: StringAlt, n: int, u8: int, esc: bool, content: bytes):
        self.spec, self.n, self.u8, self.esc, self.content = spec, n, u8, esc, content
        self.cost = esc + PENDING[u8] + max(0, spec.min_len - n) + 1
        self.after = INF

    def step(self, b: int, parent: Cell | None) -> list[Cell]:
        spec = self.spec
        track = spec.excluded is not None
        content = self.content + bytes((b,)) if track else b""
        if self.esc:
            return [cell(string_frame(spec, self.n, 0, False, content), parent)] if b in ESCAPABLE else []
        u8 = self.u8
        if u8:
            nxt = UTF8[u8][b]
            return [] if nxt == BAD else [cell(string_frame(spec, self.n, nxt, False, content), parent)]
        if b == QUOTE:
            if self.n < spec.min_len or (track and self.content in spec.excluded):
                return []
            return _pop(parent)
        if b < 0x20 or self.n >= spec.max_len:
            return []
        if b == BSLASH:
            return [cell(string_frame(spec, self.n + 1, 0, True, content), parent)] if spec.allow_escapes else []
        nxt = UTF8[0][b]
        return [] if nxt == BAD else [cell(string_frame(spec, self.n + 1, nxt, False, content), parent)]


def string_frame(spec: StringAlt, n: int, u8: int, esc: bool, content: bytes) -> StringFrame:
    if spec.excluded is not None:
        return StringFrame(spec, n, u8, esc, content)
    key = (n, u8, esc)
    f = spec._frames.get(key)
    if f is None:
        f = spec._frames[key] = StringFrame(spec, n, u8, esc, b"")
    return f


def _start_string(alt: StringAlt, b: int, parent: Cell | None, at_root: bool) -> list[Cell]:
    return [cell(string_frame(alt, 0, 0, False, b""), parent)]


# --- numbers -------------------------------------------------------------------------------------

N_SIGN, N_ZERO, N_INT, N_DOT, N_FRAC = range(5)
_COMPLETE = (False, True, True, False, True)


class NumberFrame:
    """``-?(0|[1-9][0-9]*)(\\.[0-9]+)?``, digits capped. A complete number ends at the first byte
    that cannot continue it; that byte then goes to the enclosing frame."""

    __slots__ = ("alt", "phase", "digits", "at_root", "cost", "after")

    def __init__(self, alt: NumberAlt, phase: int, digits: int, at_root: bool):
        self.alt, self.phase, self.digits, self.at_root = alt, phase, digits, at_root
        self.cost = (0 if _COMPLETE[phase] else 1) + at_root
        self.after = INF

    def step(self, b: int, parent: Cell | None) -> list[Cell]:
        ph, alt = self.phase, self.alt
        digit = 0x30 <= b <= 0x39
        nxt = None
        if ph == N_SIGN:
            if digit:
                nxt = (N_ZERO, 0) if b == ZERO else (N_INT, 1)
        elif ph == N_INT and digit:
            if self.digits < MAX_INT_DIGITS:
                nxt = (N_INT, self.digits + 1)
        elif ph == N_DOT:
            if digit:
                nxt = (N_FRAC, 1)
        elif ph == N_FRAC and digit:
            # the last allowed digit is never a trailing 0: a bounded number's canonical form (what
            # llguidance's range grammar writes) has none, so "...0" at the cap could never be closed
            if self.digits < MAX_FRAC_DIGITS - 1 or (self.digits == MAX_FRAC_DIGITS - 1 and b != ZERO):
                nxt = (N_FRAC, self.digits + 1)
        elif b == DOT and not alt.integer and ph in (N_ZERO, N_INT):
            nxt = (N_DOT, 0)
        if nxt is not None:
            return [cell(_number_frame(alt, nxt[0], nxt[1], self.at_root), parent)]
        if not _COMPLETE[ph]:
            return []
        return _end_open_value(b, parent, self.at_root)


def _end_open_value(b: int, parent: Cell | None, at_root: bool) -> list[Cell]:
    """A value that could have gone on ends here; ``b`` belongs to what encloses it."""
    if at_root:
        return _pop(parent) if b == NL else []
    out: list[Cell] = []
    for c in _pop(parent):
        out.extend(c[0].step(b, c[1]))
    return out


def _number_frame(alt: NumberAlt, phase: int, digits: int, at_root: bool) -> NumberFrame:
    key = (phase, digits, at_root)
    f = alt._frames.get(key)
    if f is None:
        f = alt._frames[key] = NumberFrame(alt, phase, digits, at_root)
    return f


def _start_number(alt: NumberAlt, b: int, parent: Cell | None, at_root: bool) -> list[Cell]:
    if b == MINUS:
        return [cell(_number_frame(alt, N_SIGN, 0, at_root), parent)]
    if b == ZERO:
        return [cell(_number_frame(alt, N_ZERO, 0, at_root), parent)]
    return [cell(_number_frame(alt, N_INT, 1, at_root), parent)]


# --- literals (enum, const, true/false/null) ------------------------------------------------------


class LiteralFrame:
    """``pos`` bytes of one of ``cands`` matched; ``complete``: one candidate ended exactly there
    (only numbers can be a prefix of another candidate, e.g. ``1`` and ``12``)."""

    __slots__ = ("alt", "cands", "pos", "complete", "at_root", "cost", "after")

    def __init__(self, alt: LiteralAlt, cands: tuple[bytes, ...], pos: int, complete: bool, at_root: bool):
        self.alt, self.cands, self.pos, self.complete, self.at_root = alt, cands, pos, complete, at_root
        numeric = at_root and (cands[0][0] in NUMBER_START if cands else True)
        rest = 0 if complete else min(len(c) - pos for c in cands)
        self.cost = rest + numeric
        self.after = INF

    def step(self, b: int, parent: Cell | None) -> list[Cell]:
        pos = self.pos
        keep = tuple(c for c in self.cands if c[pos] == b)
        out: list[Cell] = []
        if keep:
            ended = any(len(c) == pos + 1 for c in keep)
            longer = tuple(c for c in keep if len(c) > pos + 1)
            if ended and not longer and not (self.at_root and keep[0][0] in NUMBER_START):
                out.extend(_pop(parent))
            else:
                out.append(cell(_literal_frame(self.alt, longer, pos + 1, ended, self.at_root), parent))
        if self.complete:
            out.extend(_end_open_value(b, parent, self.at_root))
        return out


def _literal_frame(alt: LiteralAlt, cands: tuple[bytes, ...], pos: int, complete: bool,
                   at_root: bool) -> LiteralFrame:
    key = (cands, pos, complete, at_root)
    f = alt._frames.get(key)
    if f is None:
        f = alt._frames[key] = LiteralFrame(alt, cands, pos, complete, at_root)
    return f


def _start_literal(alt: LiteralAlt, b: int, parent: Cell | None, at_root: bool) -> list[Cell]:
    return _literal_frame(alt, alt.cands, 0, False, at_root).step(b, parent)


_START = {
    K_OBJECT: _start_object,
    K_ARRAY: _start_array,
    K_STRING: _start_string,
    K_NUMBER: _start_number,
    K_LITERAL: _start_literal,
}


def initial_cells(root: Node, prefix: bytes = b"") -> list[Cell]:
    first: Any = ValueFrame(root, False, True)
    if prefix:
        first = PrefixFrame(prefix, 0, first)
    return [cell(first, ROOT_CELL)]
