"""What each token of a byte-level BPE vocabulary stands for, as bytes, plus the indexes the guided
decoder walks: a byte trie of all tokens, a trie of the tokens that contain a JSON-string special
byte, and numpy tables that say, for tokens made only of plain string bytes, how they move the
UTF-8 state and how many characters they add.

Built once per tokenizer (cached by identity) and read-only afterwards. Special tokens (EOS and
friends) map to ``None``: they are never allowed. Nothing here knows about JSON schemas.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from autoglm.engine.guided.automaton import BAD, UTF8
from autoglm.errors import UnsupportedError

__all__ = ["VocabIndex", "TrieNode", "vocab_index", "token_bytes"]


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable Latin-1 bytes stand for themselves, the rest
    are shifted to U+0100 and up in byte order."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(0x100 + shift)
            shift += 1
    return {c: b for b, c in chars.items()}


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """``result[i]``: the bytes token ``i`` decodes to, or None for special and unusable tokens."""
    size = len(tokenizer)
    alphabet = _byte_alphabet()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added: dict[int, Any] = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    for i, tok in added.items():
        if getattr(tok, "special", False):
            special.add(i)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    out: list[bytes | None] = [None] * size
    for i, piece in enumerate(pieces):
        if piece is None or i in special:
            continue
        if i in added:  # added tokens hold their text as is, not through the byte alphabet
            content = getattr(added[i], "content", piece)
            out[i] = content.encode("utf-8") or None
            continue
        try:
            out[i] = bytes(alphabet[ch] for ch in piece) or None
        except KeyError:
            out[i] = piece.encode("utf-8") or None
    return out


class TrieNode:
    __slots__ = ("kids", "ids", "depth")

    def __init__(self) -> None:
        self.kids: dict[int, TrieNode] = {}
        self.ids: list[int] = []
        self.depth = 0  # the longest token below, in bytes past this node


def _build_trie(items: list[tuple[int, bytes]]) -> TrieNode:
    root = TrieNode()
    for tid, data in items:
        node = root
        for b in data:
            nxt = node.kids.get(b)
            if nxt is None:
                nxt = node.kids[b] = TrieNode()
            node = nxt
        node.ids.append(tid)
    order: list[TrieNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.kids.values())
    for node in reversed(order):
        node.depth = max((k.depth + 1 for k in node.kids.values()), default=0)
    return root


# bytes a closing path may need as a one-byte token: ASCII text, newline, UTF-8 lead/continuation
_NEEDED_SINGLE = [0x0A] + list(range(0x20, 0x7F)) + list(range(0x80, 0xC0)) + list(range(0xC2, 0xF5))


class VocabIndex:
    """Read-only per-tokenizer tables for the guided decoder.

    ``plain_end[s, t]``: the UTF-8 state after token t starting in state s, or 8 (BAD) when t has
    a byte that is not plain string content (quote, backslash, control) or breaks UTF-8.
    ``plain_chars[t]``: code points t starts. ``trie``: every usable token; ``special_trie``:
    usable tokens with at least one non-plain byte.
    """

    def __init__(self, tokenizer: Any):
        self.tokens = token_bytes(tokenizer)
        self.size = len(self.tokens)
        singles = {d[0] for d in self.tokens if d is not None and len(d) == 1}
        missing = [b for b in _NEEDED_SINGLE if b not in singles]
        if missing:
            raise UnsupportedError(
                f"guided decoding needs a byte-level vocabulary with a one-byte token for every byte; "
                f"this tokenizer has none for {len(missing)} bytes (e.g. {bytes(missing[:8])!r}); "
                "use a byte-level BPE tokenizer or drop response_format/tool_choice")
        usable = [(i, d) for i, d in enumerate(self.tokens) if d is not None]
        self.trie = _build_trie(usable)
        self._plain_tables(usable)
        special_items = [(i, d) for i, d in usable if not self._plain_any[i]]
        self.special_trie = _build_trie(special_items)

    def _plain_tables(self, usable: list[tuple[int, bytes]]) -> None:
        size = self.size
        ids = np.array([i for i, _ in usable], dtype=np.int64)
        lens = np.array([len(d) for _, d in usable], dtype=np.int64)
        flat = np.frombuffer(b"".join(d for _, d in usable), dtype=np.uint8).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else np.zeros(0, np.int64)
        is_special = (flat < 0x20) | (flat == 0x22) | (flat == 0x5C)
        is_lead = (flat < 0x80) | (flat >= 0xC0)
        csum_s = np.concatenate([[0], np.cumsum(is_special)])
        csum_l = np.concatenate([[0], np.cumsum(is_lead)])
        n_special = csum_s[starts + lens] - csum_s[starts]
        self.plain_chars = np.zeros(size, dtype=np.int64)
        self.plain_chars[ids] = csum_l[starts + lens] - csum_l[starts]
        self.max_plain_chars = int(self.plain_chars.max()) if size else 0
        # a plain byte may still be invalid UTF-8 in a given start state; only the special bytes
        # make a token non-plain in every state
        self._plain_any = np.zeros(size, dtype=bool)
        self._plain_any[ids] = n_special == 0
        table = np.array(UTF8, dtype=np.int64)  # [9, 256]
        table[:, [0x22, 0x5C]] = BAD
        table[:, :0x20] = BAD
        order = np.argsort(-lens, kind="stable")
        o_lens, o_starts = lens[order], starts[order]
        self.plain_end = np.full((8, size), BAD, dtype=np.int8)
        for s in range(8):
            state = np.full(len(order), s, dtype=np.int64)
            for pos in range(int(o_lens.max()) if len(o_lens) else 0):
                k = int(np.searchsorted(-o_lens, -pos, side="left"))  # tokens longer than pos
                state[:k] = table[state[:k], flat[o_starts[:k] + pos]]
            self.plain_end[s, ids[order]] = state
        self.pending = np.array([0, 1, 2, 2, 2, 3, 3, 3, 0], dtype=np.int64)


_CACHE: dict[int, tuple[Any, VocabIndex]] = {}
_LOCK = threading.Lock()


def vocab_index(tokenizer: Any) -> VocabIndex:
    """The (cached) index for ``tokenizer``; built on first use, which takes a moment for big vocabs."""
    key = id(tokenizer)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is tokenizer:
            return hit[1]
    index = VocabIndex(tokenizer)
    try:
        ref: Any = weakref.ref(tokenizer, lambda _r, k=key: _CACHE.pop(k, None))
    except TypeError:
        ref = lambda: tokenizer  # noqa: E731 - not weak-referenceable: keep it alive
    with _LOCK:
        _CACHE[key] = (ref, index)
    return index
