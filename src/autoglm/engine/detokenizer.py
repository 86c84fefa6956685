"""Incremental detokenization and stop strings for one sequence.

Byte-level BPE tokens can split a UTF-8 character, so new text is released only once it decodes
cleanly (no trailing U+FFFD). While a stop string might still be forming, the last
``len(longest stop) - 1`` characters are held back, so a streamed reply never shows the start of a
stop string that later turns out to end it. Knows the tokenizer, nothing about the model or HTTP.
"""
from __future__ import annotations

from typing import Any

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, stop: list[str] | None = None, include_stop: bool = False):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.include_stop = include_stop
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""  # all decoded text so far (possibly past a stop string before it is cut)
        self.emitted = 0  # characters of self.text already released
        self._prefix_offset = 0
        self._read_offset = 0
        self.stopped_by: str | None = None

    def add(self, token_id: int, skip: bool = False) -> tuple[str, bool]:
        """Add a token; return ``(newly released text, stopped)``; ``stopped`` when a stop string
        ended the text (the text is then cut before it, or after it with ``include_stop``).

        ``skip``: the token counts but adds no text (an EOS or stop token id).
        """
        if not skip:
            self.token_ids.append(token_id)
            self._decode_step()
        if self.stop:
            # search only where a new match can be: the fresh text plus a stop's length behind it
            start = max(0, self.emitted - self.holdback)
            best = -1
            for s in self.stop:
                pos = self.text.find(s, start)
                if pos != -1 and (best == -1 or pos < best):
                    best, self.stopped_by = pos, s
            if best != -1:
                end = best + len(self.stopped_by) if self.include_stop else best
                self.text = self.text[:end]
                out = self.text[self.emitted :]
                self.emitted = len(self.text)
                return out, True
            release_to = max(self.emitted, len(self.text) - self.holdback)
        else:
            release_to = len(self.text)
        out = self.text[self.emitted : release_to]
        self.emitted = release_to
        return out, False

    def flush(self) -> str:
        """Release whatever is held back (the sequence ended for another reason), including tokens
        whose bytes never completed a character: they are decoded as they are (U+FFFD for the
        incomplete bytes), so the text holds every token, and a stop string inside them still cuts."""
        if self._read_offset < len(self.token_ids):
            self._decode_step(final=True)
            if self.stop:
                start = max(0, self.emitted - self.holdback)
                hits = [(pos, s) for s in self.stop if (pos := self.text.find(s, start)) != -1]
                if hits:
                    pos, self.stopped_by = min(hits)
                    self.text = self.text[: pos + len(self.stopped_by) if self.include_stop else pos]
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out

    def _decode_step(self, final: bool = False) -> None:
        ids = self.token_ids
        decode = self.tokenizer.decode
        prefix = decode(ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        full = decode(ids[self._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(ids)
