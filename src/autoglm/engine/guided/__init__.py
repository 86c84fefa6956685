"""Constrained decoding: JSON mode, JSON-schema ``response_format`` and forced tool calls.

The engine asks a :class:`Constraint` which token ids may come next (a boolean mask over the
tokenizer's vocabulary), samples among them, and reports the choice with :meth:`Constraint.advance`;
when :attr:`Constraint.done` is true a complete JSON value has been written and the request ends.

Guarantees, for any sequence of allowed tokens:
  * the output is compact JSON (one optional space after ``:`` and ``,``) that matches the schema,
    and valid UTF-8;
  * it is complete before the token budget runs out: a token is allowed only if, after it, the
    value can still be closed within the remaining budget (minus :data:`SAFETY_MARGIN`). The
    closing cost is exact, counted in bytes, which is an upper bound on tokens because the
    vocabulary has a one-byte token for every byte (checked when the index is built);
  * special tokens (EOS included) are never allowed.

Object keys are written in the schema's declaration order (optional ones may be skipped), so the
schema decides which key comes next and the model picks values. Strings are capped at
``max_string_chars`` code points unless the schema says otherwise, numbers at 15+15 digits.

How it is fast: per tokenizer, a byte trie of the vocabulary is built once; each call walks the
automaton over the trie and prunes dead branches. Inside a string, the tokens made only of plain
string bytes (most of the vocabulary) are decided by numpy from precomputed UTF-8 tables, and only
the few tokens holding a quote, backslash or control byte are walked.

This package knows nothing about the model, sampling or HTTP. It raises
:class:`~autoglm.errors.InvalidRequestError` for schemas it cannot use.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np

from autoglm.engine.guided.backends import (
    GUIDED_BACKEND_CHOICES,
    JSON_KINDS,
    GuidedBackend,
    GuidedConstraint,
    GuidedDecodingError,
    compute_masks,
    get_backend,
    resolve_backend,
)
from autoglm.engine.guided.automaton import (
    BAD,
    StringFrame,
    cell_cost,
    initial_cells,
    is_done,
)
from autoglm.engine.guided.schema import (
    DEFAULT_MAX_STRING_CHARS,
    INF,
    Node,
    compile_json_object,
    compile_schema,
)
from autoglm.engine.guided.vocab import TrieNode, VocabIndex, vocab_index
from autoglm.errors import InvalidRequestError

__all__ = ["Constraint", "build_constraint", "min_tokens_needed", "validate_schema", "validate_spec",
           "SAFETY_MARGIN", "GuidedBackend", "GuidedConstraint", "get_backend", "resolve_backend",
           "compute_masks", "recheck", "GUIDED_BACKEND_CHOICES",
           "GuidedDecodingError"]

# tokens kept in reserve beyond the exact closing cost, in case the caller counts one token
# differently than we do; costs one token of budget in the worst case
SAFETY_MARGIN = 1


def _spec_prefix(spec: Any) -> bytes:
    prefix = getattr(spec, "prefix", None) or ""
    return prefix.encode("utf-8") if isinstance(prefix, str) else bytes(prefix)


@lru_cache(maxsize=128)
def _compile(kind: str, schema_json: str, max_string_chars: int) -> Node:
    if kind == "json_object":
        return compile_json_object(max_string_chars=max_string_chars)
    if kind == "json_schema":
        schema = json.loads(schema_json)
        if schema is None:
            raise InvalidRequestError(
                "response_format json_schema needs a 'schema'; give a JSON Schema object or use "
                "{'type': 'json_object'}", param="response_format")
        return compile_schema(schema, max_string_chars=max_string_chars)
    raise InvalidRequestError(
        f"guided decoding kind {kind!r} is not supported; use 'json_object' or 'json_schema'",
        param="response_format")


def _root(spec: Any, max_string_chars: int) -> Node:
    try:
        schema_json = json.dumps(spec.schema, sort_keys=False)
        schema_json.encode("utf-8")  # a lone surrogate cannot become output bytes
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"JSON schema is not JSON-serialisable: {exc}",
                                  param="response_format") from None
    return _compile(spec.kind, schema_json, max_string_chars)


def validate_schema(schema: Any, *, max_string_chars: int = DEFAULT_MAX_STRING_CHARS) -> None:
    """Raise :class:`InvalidRequestError` when ``schema`` is not one guided decoding can use (the
    compiled result is cached, so checking first costs nothing later)."""
    _root(SimpleSpec("json_schema", schema), max_string_chars)


class SimpleSpec:
    __slots__ = ("kind", "schema")

    def __init__(self, kind: str, schema: Any):
        self.kind, self.schema = kind, schema


def min_tokens_needed(spec: Any, *, max_string_chars: int = DEFAULT_MAX_STRING_CHARS) -> int:
    """The smallest ``max_tokens`` with which ``spec`` can always be satisfied.

    Callers reject requests below it up front (HTTP 400) instead of returning broken JSON.
    Regex, choice and grammar specs (llguidance backend) have a looser bound, see
    :func:`autoglm.engine.guided.llg.min_tokens_other`.
    """
    if spec.kind not in JSON_KINDS:
        from autoglm.engine.guided.llg import min_tokens_other

        return min_tokens_other(spec)
    cells = initial_cells(_root(spec, max_string_chars), _spec_prefix(spec))
    return min(cell_cost(c) for c in cells) + SAFETY_MARGIN


def build_constraint(spec: Any, tokenizer: Any, *,
                     max_string_chars: int = DEFAULT_MAX_STRING_CHARS) -> Constraint:
    """A fresh constraint for one request. ``spec`` is a :class:`~autoglm.engine.io_struct.GuidedSpec`
    (``kind``, ``schema`` and, if it has one, a ``prefix`` string the output must start with)."""
    root = _root(spec, max_string_chars)
    return Constraint(vocab_index(tokenizer), initial_cells(root, _spec_prefix(spec)), SAFETY_MARGIN)


def validate_spec(spec: Any, backend: str | None = "auto") -> None:
    """InvalidRequestError (naming the parameter) when ``spec`` cannot be used by ``backend``:
    JSON kinds are compiled by the builtin automaton (it keeps the budget with either backend),
    regex / choice / grammar by llguidance. Blocking; call it off the event loop."""
    if spec.kind in JSON_KINDS:
        _root(spec, DEFAULT_MAX_STRING_CHARS)
        if spec.kind == "json_object":
            return
    name = resolve_backend(backend)
    if name == "llguidance":
        from autoglm.engine.guided.llg import validate_spec as llg_validate

        llg_validate(spec)
    elif spec.kind not in JSON_KINDS:
        get_backend("builtin").build(spec, None)  # raises: names the missing extra


def recheck(constraints: list[Any], tokens: list[int], remaining: list[int]) -> list[int]:
    """Indices whose sampled token a fast mask let through but the constraint refuses (see
    :meth:`GuidedConstraint.check`): sample those again with :meth:`GuidedConstraint.exact_mask`."""
    return [i for i, (c, t, r) in enumerate(zip(constraints, tokens, remaining)) if not c.check(t, r)]


class Constraint(GuidedConstraint):
    """The state of one constrained output. Not thread-safe; one per request."""

    backend = "builtin"

    def __init__(self, index: VocabIndex, cells: list[tuple], margin: int = SAFETY_MARGIN):
        self._index = index
        self._cells = cells
        self._margin = margin
        self._out = bytearray()
        self._peek: tuple[int, int, list[tuple]] | None = None  # (version, token, cells) of cost_after

    @property
    def margin(self) -> int:
        return self._margin

    def cost_after(self, token_id: int) -> int | None:
        """The closing cost after ``token_id`` (state unchanged), None when it cannot come next."""
        if not 0 <= token_id < self._index.size:
            return None
        data = self._index.tokens[token_id]
        if data is None:
            return None
        cells = self._cells
        for b in data:
            nxt: list[tuple] = []
            for c in cells:
                nxt.extend(c[0].step(b, c[1]))
            if not nxt:
                return None
            cells = nxt
        self._peek = (self.version, token_id, cells)  # advance() after a check reuses the walk
        return min(cell_cost(c) for c in cells)

    @property
    def vocab_size(self) -> int:
        return self._index.size

    @property
    def done(self) -> bool:
        """A complete JSON value has been emitted."""
        return any(is_done(c) for c in self._cells)

    @property
    def output(self) -> bytes:
        """Every byte accepted so far (for debugging and tests)."""
        return bytes(self._out)

    def closing_cost(self) -> int:
        """The fewest bytes (hence at most that many tokens) that finish the value from here."""
        return min(cell_cost(c) for c in self._cells)

    def allowed_token_ids(self, remaining_tokens: int) -> np.ndarray:
        """Boolean mask [vocab_size]: tokens that keep the output valid and closable within
        ``remaining_tokens`` (how many tokens the request may still emit, this one included)."""
        index = self._index
        mask = np.zeros(index.size, dtype=bool)
        if self.done:
            return mask
        limit = remaining_tokens - 1 - self._margin  # closing cost allowed after this token
        ids: list[int] = []
        for c in self._cells:
            frame = c[0]
            if type(frame) is StringFrame and not frame.esc:
                mask |= self._plain_string_mask(frame, c[2], limit)
                if frame.spec.excluded is not None:  # closing depends on the content: walk it
                    _walk(index.special_trie, [c], limit, ids)
                    continue
                self._closing_quote_mask(frame, c[1], limit, mask)
                if frame.spec.allow_escapes:
                    self._escape_mask(frame, c[2], limit, mask)
                    _walk(index.escape_trie, [c], limit, ids)
            else:
                _walk(index.trie, [c], limit, ids)
        if ids:
            mask[np.asarray(ids, dtype=np.int64)] = True
        return mask

    def _plain_string_mask(self, frame: StringFrame, below: int, limit: int) -> np.ndarray:
        # tokens of plain string bytes only: they keep us inside this string
        index, spec = self._index, frame.spec
        end = index.plain_end[frame.u8]
        ok = end != BAD
        room = spec.max_len - frame.n
        if room < index.max_plain_chars:  # otherwise no token is long enough for the cap to bite
            ok &= index.plain_chars <= room
        missing = spec.min_len - frame.n
        # closing after the token: owed continuation bytes + missing chars + quote + enclosing frames
        if 3 + max(missing, 0) + 1 + below > limit:
            after = index.pending[end] + 1 + below
            if missing > 0:
                after = after + np.maximum(missing - index.plain_chars, 0)
            ok &= after <= limit
        return ok

    def _closing_quote_mask(self, frame: StringFrame, parent: tuple, limit: int, mask: np.ndarray) -> None:
        # tokens "<plain prefix>\"<rest>": the prefix must fit the string, and <rest> must be valid
        # after the string closes, which is the same state whatever the prefix was
        index, spec = self._index, frame.spec
        if not len(index.q_ids):
            return
        after = parent[0].child_done(parent[1])
        ok_rest: list[int] = []
        if after and min(cell_cost(c) for c in after) <= limit:
            ok_rest.extend(index.quote_trie.ids)
        _walk(index.quote_trie, after, limit, ok_rest)
        if not ok_rest:
            return
        rest_ok = np.zeros(index.n_rests, dtype=bool)
        rest_ok[ok_rest] = True
        n = frame.n + index.q_pre_chars
        ok = (index.q_pre_end[frame.u8] == 0) & rest_ok[index.q_rest] & (n <= spec.max_len)
        if spec.min_len > frame.n:
            ok &= n >= spec.min_len
        mask[index.q_ids[ok]] = True

    def _escape_mask(self, frame: StringFrame, below: int, limit: int, mask: np.ndarray) -> None:
        # tokens "<plain>\\<escapable><plain>" or "<plain>\\": still inside this string afterwards
        index, spec = self._index, frame.spec
        if not len(index.e_ids):
            return
        n = frame.n + index.e_chars
        ok = (index.e_pre_end[frame.u8] == 0) & (index.e_rest_end != BAD) & (n <= spec.max_len)
        after = index.pending[index.e_rest_end] + index.e_open + np.maximum(spec.min_len - n, 0) + 1 + below
        ok &= after <= limit
        mask[index.e_ids[ok]] = True

    def advance(self, token_id: int) -> None:
        """Accept ``token_id``; raises ValueError when it cannot come next."""
        index = self._index
        if not 0 <= token_id < index.size:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {index.size})")
        data = index.tokens[token_id]
        if data is None:
            raise ValueError(f"token id {token_id} is a special token; it is never allowed in guided output")
        peek = self._peek
        if peek is not None and peek[0] == self.version and peek[1] == token_id:
            self._cells = list(dict.fromkeys(peek[2])) if len(peek[2]) > 1 else peek[2]
            self._out += data
            self.version += 1
            return
        cells = self._cells
        for b in data:
            nxt: list[tuple] = []
            for c in cells:
                nxt.extend(c[0].step(b, c[1]))
            if not nxt:
                raise ValueError(f"token id {token_id} ({data!r}) is not allowed after {bytes(self._out)!r}")
            cells = nxt
        self._cells = list(dict.fromkeys(cells)) if len(cells) > 1 else cells
        self._out += data
        self.version += 1


def _walk(root: TrieNode, cells: list[tuple], limit: int, ids: list[int]) -> None:
    """Depth-first over the trie from ``cells``: collect ids of tokens that are valid next and can
    still close within ``limit`` bytes afterwards. A branch is cut as soon as no parse survives or
    even its longest token could not bring the closing cost down far enough."""
    stack = [(root, cells)]
    while stack:
        node, cs = stack.pop()
        for b, kid in node.kids.items():
            if len(cs) == 1:
                c = cs[0]
                new = c[0].step(b, c[1])
            else:
                new = []
                for c in cs:
                    new.extend(c[0].step(b, c[1]))
            if not new:
                continue
            best = INF
            for c in new:
                cost = c[0].cost + c[2]
                if cost < best:
                    best = cost
            if best - kid.depth > limit:
                continue
            if kid.ids and best <= limit:
                ids.extend(kid.ids)
            if kid.kids:
                stack.append((kid, new))
