"""The ``llguidance`` guided backend: llguidance's matcher for the language, the builtin automaton
beside it for the budget.

Language: llguidance (``LLMatcher``) enforces the whole JSON-schema subset OpenAI documents
(``pattern``, ``format``, numeric bounds, ``multipleOf`` included), regexes, choice lists and Lark or
GBNF grammars (vLLM's ``guided_regex`` / ``guided_choice`` / ``guided_grammar``). JSON is compact
(``,`` and ``:``, no whitespace), keys in the schema's order, as the builtin automaton writes it.

Budget (what no library does): for JSON kinds the builtin automaton (:mod:`autoglm.engine.guided`)
runs as a *shadow* on the same tokens. Masks are llguidance's alone (fast, batched over all guided
sequences with ``fill_next_token_bitmask_par``, which releases the GIL); after sampling,
:meth:`LlgConstraint.check` steps the shadow over the chosen token's bytes (microseconds) and
accepts it only if the value can still be closed within the remaining budget (the shadow's exact
closing cost, counting the shortest match of ``pattern`` / ``format``). When it refuses (near the end
of the budget, or a token the shadow's language lacks: an exponent, a string past its cap), the
caller asks :meth:`exact_mask` (llguidance ∩ shadow, one builtin mask) and samples again. So the
exact, slow mask is computed only on the few steps where it matters. If the two languages ever have
nothing in common the shadow is dropped and llguidance's mask alone is used (logged once).

Masks are computed ahead, while the forward pass runs (``overlap``: see
:mod:`autoglm.engine.guided.overlap`), into a per-thread reused int32 bitmask. Most steps need none:
:meth:`LlgConstraint.allows` answers for one sampled token what the exact mask would (llguidance's
``validate_tokens``, then the shadow's budget check), so a row whose sampling allows it is sampled
unmasked and masked only when its pick is refused.

When llguidance gives up (its parser limits: an object of thousands of properties makes a row of
more items than it allows), a JSON-kind constraint *fails over* to its shadow, a complete constraint
of the same schema (without ``pattern`` / ``format``), and the request goes on with exact builtin
masks; a regex, choice or grammar constraint has none, so that request (only) fails with
:class:`~autoglm.engine.guided.backends.GuidedDecodingError` (HTTP 400 naming the parameter).

Limits, stated: numeric bounds (``minimum: 1000``) may need more digits than the shadow counts, so
close to the budget such a value can still be cut (finish_reason ``length``); regex, choice and
grammar outputs have no closing guarantee (no shadow), only the early 400 of the smallest choice.

llguidance is imported only when this backend builds a constraint.
"""
from __future__ import annotations

import json
import logging
import threading
import weakref
from typing import Any

import numpy as np

from autoglm.engine.guided.backends import (
    JSON_KINDS,
    GuidedBackend,
    GuidedConstraint,
    GuidedDecodingError,
    register_backend,
)
from autoglm.errors import InvalidRequestError

__all__ = ["LlguidanceBackend", "LlgConstraint", "grammar_for", "min_tokens_other", "validate_spec"]

log = logging.getLogger(__name__)

# compact JSON, the same separators the builtin automaton writes
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}

_TOK_CACHE: dict[int, tuple[Any, Any]] = {}
_TOK_LOCK = threading.Lock()


def _ll_tokenizer(tokenizer: Any) -> Any:
    """llguidance's tokenizer for ``tokenizer`` (cached; building one takes ~1 s at 151k tokens)."""
    key = id(tokenizer)
    with _TOK_LOCK:
        hit = _TOK_CACHE.get(key)
        if hit is not None and hit[0]() is tokenizer:
            return hit[1]
    import llguidance.hf

    try:
        ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))
    except Exception as exc:  # not a fast tokenizer, or one llguidance cannot read
        raise InvalidRequestError(f"the llguidance backend cannot use this tokenizer ({exc}); serve with "
                                  "guided_backend: builtin", param="response_format") from None
    try:
        ref: Any = weakref.ref(tokenizer, lambda _r, k=key: _TOK_CACHE.pop(k, None))
    except TypeError:
        ref = lambda: tokenizer  # noqa: E731
    with _TOK_LOCK:
        _TOK_CACHE[key] = (ref, ll)
    return ll


def _param(spec: Any) -> str:
    return {"regex": "guided_regex", "choice": "guided_choice", "grammar": "guided_grammar"}.get(
        spec.kind, "response_format")


def _capped(schema: Any, cap: int) -> Any:
    """A copy of ``schema`` whose string schemas without ``maxLength`` get the builtin automaton's
    cap (``max(minLength, cap)``), so the two languages agree on long strings (an email local part
    would otherwise grow past the cap with no way back)."""
    if isinstance(schema, list):
        return [_capped(s, cap) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _capped(v, cap) if k not in ("enum", "const", "default", "examples", "required") else v
           for k, v in schema.items()}
    t = schema.get("type")
    stringy = t == "string" or (isinstance(t, list) and "string" in t) or (
        t is None and any(k in schema for k in ("pattern", "format", "minLength")))
    if stringy and "maxLength" not in schema and "enum" not in schema and "const" not in schema:
        lo = schema.get("minLength", 0)
        out["maxLength"] = max(lo if isinstance(lo, int) else 0, cap)
    return out


def grammar_for(spec: Any) -> str:
    """The llguidance grammar (a string ``LLMatcher`` takes) for ``spec``."""
    from llguidance import LLMatcher

    kind = spec.kind
    prefix = getattr(spec, "prefix", None) or ""
    if kind in JSON_KINDS:
        from autoglm.engine.guided.schema import DEFAULT_MAX_STRING_CHARS

        schema = {"type": "object"} if kind == "json_object" else _capped(spec.schema, DEFAULT_MAX_STRING_CHARS)
        if not isinstance(schema, dict):
            if schema is True or schema == {}:
                schema = {}
            else:
                raise InvalidRequestError("response_format json_schema needs a 'schema' object",
                                          param="response_format")
        if not prefix:
            try:
                return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
            except ValueError as exc:
                raise InvalidRequestError(f"JSON schema not usable: {exc}", param="response_format") from None
        # a forced tool call written after a prefix: "name\n" then the arguments object
        schema = dict(schema, **{"x-guidance": dict(JSON_OPTIONS, **(schema.get("x-guidance") or {}))})
        return LLMatcher.grammar_from_lark(f"start: {json.dumps(prefix)} value\nvalue: %json {json.dumps(schema)}\n")
    if kind == "regex":
        if not isinstance(spec.regex, str) or not spec.regex:
            raise InvalidRequestError("guided_regex must be a non-empty string", param="guided_regex")
        return LLMatcher.grammar_from_regex(spec.regex)
    if kind == "choice":
        choices = list(spec.choices or [])
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise InvalidRequestError("guided_choice must be a non-empty list of non-empty strings",
                                      param="guided_choice")
        return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices) + "\n")
    if kind == "grammar":
        from llguidance.gbnf_to_lark import any_to_lark

        if not isinstance(spec.grammar, str) or not spec.grammar.strip():
            raise InvalidRequestError("guided_grammar must be a non-empty grammar (Lark or GBNF)",
                                      param="guided_grammar")
        try:
            lark = any_to_lark(spec.grammar)
        except Exception as exc:  # the GBNF converter's own parse errors
            raise InvalidRequestError(f"guided_grammar could not be read: {exc}", param="guided_grammar") from None
        return LLMatcher.grammar_from_lark(lark)
    raise InvalidRequestError(f"guided decoding kind {kind!r} is not supported", param="response_format")


def validate_spec(spec: Any) -> None:
    """InvalidRequestError naming the parameter when llguidance cannot compile ``spec``."""
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar_for(spec))
    if error and not error.startswith("WARNING"):
        raise InvalidRequestError(f"{_param(spec)} is not usable: {error[:300]}", param=_param(spec))


def min_tokens_other(spec: Any) -> int:
    """Smallest budget for the non-JSON kinds: the shortest choice's bytes (an upper bound on its
    tokens with a byte-level vocabulary) plus an EOS; 1 for a regex or grammar."""
    if spec.kind == "choice" and spec.choices:
        return min(len(c.encode("utf-8")) for c in spec.choices) + 1
    return 1


class LlgConstraint(GuidedConstraint):
    backend = "llguidance"

    def __init__(self, matcher: Any, vocab_size: int, eos_ids: list[int], shadow: Any | None,
                 param: str = "response_format"):
        self.matcher = matcher
        self.param = param  # the request field an error names
        self.vocab_size = vocab_size
        self._eos = np.array(sorted(i for i in eos_ids if 0 <= i < vocab_size), dtype=np.int64)
        self._eos_set = set(self._eos.tolist())
        self.shadow = shadow  # builtin Constraint over the same tokens (JSON kinds), or None
        self.resampled = 0  # how often check() refused (for tests and the benchmark)
        # llguidance gave up (a parser limit, e.g. an object of thousands of properties); the shadow,
        # a complete JSON-schema constraint itself, carries on alone with exact masks
        self.failed = False

    @property
    def done(self) -> bool:
        if self.failed:
            return self.shadow.done  # type: ignore[union-attr]
        return bool(self.matcher.is_stopped()) or (self.shadow is not None and self.shadow.done)

    def advance(self, token_id: int) -> None:
        self.version += 1
        token_id = int(token_id)
        if not self.failed and not self.matcher.consume_token(token_id):
            error = self.matcher.get_error()[:300]
            if self.shadow is None or self.shadow.cost_after(token_id) is None:
                raise GuidedDecodingError(f"{self.param} could not be followed (token {token_id} refused; a choice "
                                          f"list or grammar this large exceeds the parser's limits): {error}",
                                          param=self.param)
            self.fail_over(error)
        if token_id in self._eos_set and not self.failed or self.shadow is None:
            return
        try:
            self.shadow.advance(token_id)
        except ValueError as exc:
            if self.failed:  # nothing left to follow
                raise GuidedDecodingError(f"{self.param} could not be followed: {exc}", param=self.param) from None
            self._drop_shadow("a token outside its language was accepted")  # a caller skipped check()

    def fail_over(self, error: str) -> None:
        """llguidance stopped with ``error`` (its matcher stays in error); the shadow goes on alone."""
        log.warning("guided decoding: llguidance stopped (%s); the builtin automaton enforces the schema "
                    "from here (pattern and format keywords no longer)", error.splitlines()[0][:200])
        self.failed = True

    def llg_mask(self) -> np.ndarray:
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

        bm = allocate_token_bitmask(1, self.vocab_size)
        fill_next_token_bitmask(self.matcher, bm, 0)
        return unpack(bm, self.vocab_size)[0]

    def allowed_token_ids(self, remaining_tokens: int) -> np.ndarray:
        return self.exact_mask(remaining_tokens)

    def exact_mask(self, remaining_tokens: int, fast: np.ndarray | None = None) -> np.ndarray:
        if self.failed:
            return self.shadow.allowed_token_ids(remaining_tokens)  # type: ignore[union-attr]
        mask = self.llg_mask() if fast is None else fast
        if self.shadow is None or self.done:
            return mask
        both = mask & self.shadow.allowed_token_ids(remaining_tokens)
        if len(self._eos):
            both[self._eos] = mask[self._eos]  # EOS ends a complete value (a top-level number)
        if not both.any():
            self._drop_shadow("its language and llguidance's have nothing in common here")
            return mask
        return both

    def check(self, token_id: int, remaining_tokens: int) -> bool:
        if self.shadow is None or self.failed or token_id in self._eos_set:
            return True
        cost = self.shadow.cost_after(int(token_id))
        ok = cost is not None and cost <= remaining_tokens - 1 - self.shadow.margin
        self.resampled += not ok
        return ok

    @property
    def checks_picks(self) -> bool:
        return not self.failed

    def allows(self, token_id: int, remaining_tokens: int) -> bool | None:
        """llguidance's own check of one token (its lexer and parser, microseconds, state unchanged),
        then the shadow's budget check: the same answer as :meth:`exact_mask`, without computing a mask.
        None once failed over (the shadow's masks are the constraint then)."""
        if self.failed:
            return None
        ok = self.matcher.validate_tokens([int(token_id)]) == 1
        if self.matcher.is_error():  # a parser limit, met here instead of in a mask: as after a mask
            LlguidanceBackend.shadow_takes_over(self)
            return False
        return ok and self.check(token_id, remaining_tokens)

    def _drop_shadow(self, why: str) -> None:
        log.warning("guided decoding: budget shadow dropped (%s); output after %d bytes may be cut at "
                    "max_tokens", why, len(self.shadow.output))
        self.shadow = None


def unpack(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """int32 bitmask [B, ceil(V/32)] → bool [B, V] (bit i of word w is token 32*w + i)."""
    return np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab_size].view(bool)


# byte -> its 8 bits (little-endian) as additive mask values (0: allowed, -inf: not): unpacking by table
# lookup writes into a reused buffer
_BIAS = np.where(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool),
                 np.float32(0), np.float32(-np.inf)).astype(np.float32)


@register_backend("llguidance")
class LlguidanceBackend(GuidedBackend):
    """Batched masks with ``fill_next_token_bitmask_par`` (llguidance's thread pool, GIL released:
    ``overlap``). The int32 bitmask buffer is reused per thread (several engines may share this
    backend, each from its own threads)."""

    overlap = True

    def __init__(self) -> None:
        self._executor: Any = None
        self._local = threading.local()

    def build(self, spec: Any, tokenizer: Any) -> GuidedConstraint:
        from llguidance import LLMatcher

        ll_tok = _ll_tokenizer(tokenizer)
        grammar = grammar_for(spec)
        matcher = LLMatcher(ll_tok, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(f"{_param(spec)} is not usable: {matcher.get_error()[:300]}",
                                      param=_param(spec))
        shadow = None
        if spec.kind in JSON_KINDS:
            from autoglm.engine.guided import build_constraint

            shadow = build_constraint(spec, tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        return LlgConstraint(matcher, len(tokenizer), [] if eos is None else [int(eos)], shadow, _param(spec))

    def _bitmask(self, constraints: list[LlgConstraint]) -> np.ndarray:
        """int32 [n, ceil(V/32)] (a view of this thread's reused buffer), filled in one parallel call;
        rows of failed-over constraints are left as they were (their callers use the shadow)."""
        from llguidance import LLExecutor
        from llguidance.numpy import fill_next_token_bitmask_par

        if self._executor is None:
            self._executor = LLExecutor()
        n, words = len(constraints), (constraints[0].vocab_size + 31) // 32
        buf = getattr(self._local, "bitmask", None)
        if buf is None or buf.shape[0] < n or buf.shape[1] != words:
            buf = self._local.bitmask = np.empty((max(n, 16), words), dtype=np.int32)
        bm = buf[:n]
        live = [(c.matcher, j) for j, c in enumerate(constraints) if not c.failed]
        if live:
            fill_next_token_bitmask_par(self._executor, live, bm)
        for c in constraints:
            if not c.failed:
                self.shadow_takes_over(c)
        return bm

    @staticmethod
    def shadow_takes_over(c: LlgConstraint) -> bool:
        """After a mask: when llguidance's matcher went into error (a limit hit while computing it),
        JSON kinds fail over to the shadow; True when ``c`` now takes its mask from the shadow."""
        if not c.matcher.is_error():
            return False
        if c.shadow is None:
            return False  # its mask allows nothing sensible: advance() reports the error for this request
        c.fail_over(c.matcher.get_error())
        return True

    def _by_size(self, constraints: list[GuidedConstraint]) -> dict[int, list[int]]:
        by_size: dict[int, list[int]] = {}
        for i, c in enumerate(constraints):
            by_size.setdefault(c.vocab_size, []).append(i)  # type: ignore[attr-defined]
        return by_size

    def fill_masks(self, constraints: list[GuidedConstraint], remaining: list[int]) -> list[np.ndarray]:
        """All masks of a step in one parallel call (llguidance's thread pool, GIL released)."""
        out: list[np.ndarray] = [None] * len(constraints)  # type: ignore[list-item]
        for size, idx in self._by_size(constraints).items():
            group = [constraints[i] for i in idx]
            bits = unpack(self._bitmask(group), size)  # type: ignore[arg-type]
            for j, i in enumerate(idx):
                c = constraints[i]
                out[i] = c.allowed_token_ids(remaining[i]) if c.failed else bits[j]  # type: ignore[attr-defined]
        return out

    def mask_bias(self, constraints: list[GuidedConstraint], remaining: list[int],
                  out: np.ndarray | None = None) -> list[np.ndarray]:
        """:meth:`fill_masks` as additive float32 rows, unpacked by table lookup into ``out`` when it fits."""
        rows: list[np.ndarray] = [None] * len(constraints)  # type: ignore[list-item]
        groups = self._by_size(constraints)
        for size, idx in groups.items():
            group = [constraints[i] for i in idx]
            bm = self._bitmask(group)  # type: ignore[arg-type]
            n, words = bm.shape
            fits = out is not None and len(groups) == 1 and out.shape[0] >= n and out.shape[1] == 32 * words
            dest = out[:n] if fits else np.empty((n, 32 * words), dtype=np.float32)  # type: ignore[index]
            np.take(_BIAS, bm.view(np.uint8), axis=0, out=dest.reshape(n, 4 * words, 8), mode="wrap")
            for j, i in enumerate(idx):
                c = constraints[i]
                rows[i] = (np.where(c.allowed_token_ids(remaining[i]), np.float32(0), np.float32(-np.inf))
                           if c.failed else dest[j, :size])  # type: ignore[attr-defined]
        return rows
