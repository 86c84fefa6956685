"""The exact bytes of a token, for the ``bytes`` field of OpenAI logprobs.

A token's text is not always its bytes: in a byte-level BPE vocabulary (GLM-4's, the demo model's)
one token may hold the first two bytes of a three-byte character, and decoding it alone gives
``"\\ufffd"``. Clients join ``bytes`` across tokens to rebuild such characters, so they must be
exact. :class:`TokenBytes` reads them from the vocabulary: byte-level BPE pieces through the
byte-to-character table those vocabularies are written in, byte-fallback pieces (``<0xE6>``) as
their byte, special tokens and anything else as the UTF-8 of their decoded text.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

__all__ = ["TokenBytes", "byte_level_alphabet"]

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """Character -> byte of the byte-level BPE alphabet: printable bytes stand for themselves, the
    other 68 are shifted to code points 256 and up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


class TokenBytes:
    """``token_bytes(token_id)`` -> list of byte values (cached per id)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._byte_level = _is_byte_level(tokenizer)
        self._cache: dict[int, list[int]] = {}

    def __call__(self, token_id: int) -> list[int]:
        got = self._cache.get(token_id)
        if got is None:
            got = self._cache[token_id] = self._compute(token_id)
        return got

    def _compute(self, token_id: int) -> list[int]:
        if token_id not in self._special:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str):
                m = _BYTE_FALLBACK.fullmatch(piece)
                if m:
                    return [int(m.group(1), 16)]
                if self._byte_level:
                    alphabet = byte_level_alphabet()
                    if all(ch in alphabet for ch in piece):
                        return [alphabet[ch] for ch in piece]
        return list(self.tokenizer.decode([token_id]).encode("utf-8"))


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    return type(decoder).__name__ == "ByteLevel"
