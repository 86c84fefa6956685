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

from autoglm.engine.guided.automaton import BAD, ESCAPABLE, UTF8
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


def _plain_runs(pieces: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """For byte strings of plain string content: ``end[s, i]``, the UTF-8 state after piece i from
    state s (BAD when it holds a quote, backslash or control byte, or breaks UTF-8), and
    ``chars[i]``, the code points it starts. Vectorised over pieces, one step per byte position."""
    n = len(pieces)
    end = np.full((8, n), BAD, dtype=np.int8)
    chars = np.zeros(n, dtype=np.int64)
    if n == 0:
        return end, chars
    lens = np.array([len(p) for p in pieces], dtype=np.int64)
    flat = np.frombuffer(b"".join(pieces) or b"\0", dtype=np.uint8).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    csum_l = np.concatenate([[0], np.cumsum((flat < 0x80) | (flat >= 0xC0))])
    chars[:] = csum_l[starts + lens] - csum_l[starts]
    table = np.array(UTF8, dtype=np.int64)  # [9, 256]
    table[:, [0x22, 0x5C]] = BAD
    table[:, :0x20] = BAD
    order = np.argsort(-lens, kind="stable")
    o_lens, o_starts = lens[order], starts[order]
    for s in range(8):
        state = np.full(n, s, dtype=np.int64)
        for pos in range(int(o_lens.max())):
            k = int(np.searchsorted(-o_lens, -pos, side="left"))  # pieces longer than pos
            state[:k] = table[state[:k], flat[o_starts[:k] + pos]]
        end[s, order] = state
    return end, chars


class VocabIndex:
    """Read-only per-tokenizer tables for the guided decoder.

    Tokens seen from inside a JSON string fall in four groups by their first "special" byte
    (quote, backslash, control byte):
      * none: plain content. ``plain_end[s, t]`` is the UTF-8 state after t from state s (BAD when
        t breaks UTF-8 or is not plain), ``plain_chars[t]`` the code points it adds;
      * a quote: t = plain prefix + ``"`` + rest. Arrays ``q_ids``, ``q_pre_end[s]``,
        ``q_pre_chars`` describe the prefix, ``q_rest[i]`` indexes the distinct rests, which
        ``quote_trie`` holds (its root stands for the empty rest): after the string closes, the
        state no longer depends on the prefix, so each rest is walked once;
      * a backslash: when it is plain + one escape + plain, numpy decides it (``e_*`` arrays);
        other such tokens are in ``escape_trie`` and walked; a control byte: never valid.
    ``trie`` holds every usable token; ``special_trie`` every token with a special byte (used for
    strings whose content matters, i.e. free keys that must differ from declared names).
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
        self.pending = np.array([0, 1, 2, 2, 2, 3, 3, 3, 0], dtype=np.int64)

        end, chars = _plain_runs([d for _, d in usable])
        ids = np.array([i for i, _ in usable], dtype=np.int64)
        self.plain_end = np.full((8, self.size), BAD, dtype=np.int8)
        self.plain_chars = np.zeros(self.size, dtype=np.int64)
        self.plain_chars[ids] = chars
        special_items, quote_items, escape_items = [], [], []
        for i, d in usable:
            cut = next((k for k, b in enumerate(d) if b < 0x20 or b == 0x22 or b == 0x5C), -1)
            if cut < 0:
                continue
            special_items.append((i, d))
            if d[cut] == 0x22:
                quote_items.append((i, d[:cut], d[cut + 1:]))
            elif d[cut] == 0x5C:
                escape_items.append((i, d[:cut], d[cut + 1:]))
        special = np.array([i for i, _ in special_items], dtype=np.int64)
        plain = np.ones(len(ids), dtype=bool)
        plain[np.searchsorted(ids, special)] = False
        self.plain_end[:, ids[plain]] = end[:, plain]
        self.max_plain_chars = int(self.plain_chars[ids[plain]].max()) if plain.any() else 0
        self.special_trie = _build_trie(special_items)
        # escapes: "<plain>\\<one escapable byte><plain>" is decided by numpy, anything else walked
        simple = [(i, p, r) for i, p, r in escape_items
                  if not r or (r[0] in ESCAPABLE and not any(b < 0x20 or b in (0x22, 0x5C) for b in r[1:]))]
        simple_ids = {i for i, _, _ in simple}
        # a backslash before anything but an escapable byte is never valid in a string: left out
        self.escape_trie = _build_trie([(i, p + b"\\" + r) for i, p, r in escape_items
                                        if i not in simple_ids and (not r or r[0] in ESCAPABLE)])
        self.e_ids = np.array([i for i, _, _ in simple], dtype=np.int64)
        e_pre_end, e_pre_chars = _plain_runs([p for _, p, _ in simple])
        e_rest_end, e_rest_chars = _plain_runs([r[1:] for _, _, r in simple])
        self.e_pre_end = e_pre_end
        self.e_rest_end = e_rest_end[0]  # after an escape the UTF-8 state is 0
        self.e_chars = e_pre_chars + 1 + e_rest_chars
        self.e_open = np.array([not r for _, _, r in simple], dtype=np.int64)  # ends right after the backslash

        rests: dict[bytes, int] = {}
        self.q_ids = np.array([i for i, _, _ in quote_items], dtype=np.int64)
        self.q_pre_end, self.q_pre_chars = _plain_runs([p for _, p, _ in quote_items])
        self.q_rest = np.array([rests.setdefault(r, len(rests)) for _, _, r in quote_items], dtype=np.int64)
        self.quote_trie = _build_trie([(k, r) for r, k in rests.items()])
        self.n_rests = len(rests)


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
