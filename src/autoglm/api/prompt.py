"""Text -> token ids for a request, with two protections against hostile text.

* **Control tokens stay text.** A client who types ``<|assistant|>`` in a message must not get the
  model's real role token (that would let them forge turns). :func:`encode_chat` tokenizes the rendered
  prompt so that special-token strings coming from the chat template are special tokens, and those
  inside client-supplied strings (message contents, names, tool descriptions, call arguments) are
  encoded as plain text. When no client string holds a special-token string (the normal case) the
  result is exactly ``tokenizer.encode(prompt)``. ``allow_control_tokens`` restores the old behaviour
  (a deployment that trusts its clients). :func:`encode_text` does the same for a completion prompt.
* **No tokenizing what cannot fit.** A prompt longer in characters than ``max_model_len`` tokens can
  ever hold (the vocabulary's longest token, times two for normalizers) is refused before the
  tokenizer runs, so a 20 MB prompt costs a string length, not seconds of tokenizer time.

Runs in a worker thread (the routes call it through :func:`asyncio.to_thread`); knows tokenizers'
``encode`` / ``get_vocab`` / ``all_special_tokens``; not HTTP, not the engine.
"""
from __future__ import annotations

import re
from typing import Any

from autoglm.api.errors import APIError

__all__ = ["encode_chat", "encode_text", "check_prompt_chars", "max_token_chars"]

_SLACK = 2  # normalizers may fold characters (NFKC, combining marks): stay on the safe side


def max_token_chars(tokenizer: Any) -> int | None:
    """The most characters one token can stand for (None when the tokenizer cannot say)."""
    cached = getattr(tokenizer, "_autoglm_max_token_chars", None)
    if cached is not None:
        return cached or None
    try:
        vocab = tokenizer.get_vocab()
        # byte-level BPE spells each byte as one character, so len(piece) >= characters it decodes to
        longest = max((len(k) for k in vocab), default=0)
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary: no pre-check
        longest = 0
    try:
        tokenizer._autoglm_max_token_chars = longest
    except Exception:  # noqa: BLE001 - some tokenizer objects refuse new attributes; recompute then
        pass
    return longest or None


def check_prompt_chars(tokenizer: Any, text: str, limit: int, param: str, what: str) -> None:
    """400 ``context_length_exceeded`` when ``text`` cannot fit in ``limit`` tokens, without tokenizing."""
    per = max_token_chars(tokenizer)
    if per is None:
        return
    if len(text) > limit * per * _SLACK:
        raise APIError(
            f"This model's maximum context length is {limit} tokens. However, your {what} has {len(text)} "
            f"characters, more than {limit} tokens can hold (at most {per} characters per token). Please "
            f"reduce the length of the {what}.", param=param, code="context_length_exceeded")


def _special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    cached = getattr(tokenizer, "_autoglm_special_re", None)
    if cached is not None:
        return cached or None
    names: set[str] = set(getattr(tokenizer, "all_special_tokens", None) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    names.update(str(getattr(t, "content", t)) for t in decoder.values())
    names = {n for n in names if n}
    pattern: Any = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))) if names else False
    try:
        tokenizer._autoglm_special_re = pattern
    except Exception:  # noqa: BLE001
        pass
    return pattern or None


def _encode_as_text(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    try:
        return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
    except TypeError:  # a tokenizer without split_special_tokens cannot keep them text: refuse
        raise APIError("This server's tokenizer cannot encode special-token strings as text; remove "
                       "control tokens such as '<|user|>' from the request.", param="messages") from None


def encode_text(tokenizer: Any, text: str, *, allow_control_tokens: bool = False) -> list[int]:
    """A completion prompt: every special-token string in it is text unless ``allow_control_tokens``."""
    pattern = _special_pattern(tokenizer)
    if allow_control_tokens or pattern is None or not pattern.search(text):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return _encode_as_text(tokenizer, text)


def encode_chat(tokenizer: Any, rendered: str, client_strings: list[tuple[str, str]], *,
                allow_control_tokens: bool = False) -> list[int]:
    """Token ids of the rendered chat prompt; ``client_strings`` are ``(param, text)`` pairs in the
    order the template renders them. Special-token strings inside them are encoded as text."""
    pattern = _special_pattern(tokenizer)
    suspects = [(p, s) for p, s in client_strings if s and pattern is not None and pattern.search(s)]
    if allow_control_tokens or not suspects:
        return list(tokenizer.encode(rendered, add_special_tokens=False))
    # Where the suspect strings sit in the prompt: the template writes them in order.
    spans: list[tuple[int, int]] = []
    pos = 0
    for param, s in suspects:
        at = rendered.find(s, pos)
        if at < 0:
            at = rendered.find(s)
        if at < 0:  # the template rewrote the text; we cannot tell its tokens from the template's
            raise APIError(f"'{param}' contains a control token such as '<|user|>', which this server encodes "
                           "as text, but this model's chat template changes the text so it cannot be "
                           "located; remove the control token.", param=param)
        spans.append((at, at + len(s)))
        pos = at + len(s)
    assert pattern is not None

    def inside(start: int) -> bool:
        return any(a <= start < b for a, b in spans)

    ids: list[int] = []
    last = 0
    for m in pattern.finditer(rendered):
        if inside(m.start()):
            continue  # a client's control token: stays in the text run
        ids += _encode_as_text(tokenizer, rendered[last:m.start()])
        ids.append(int(tokenizer.convert_tokens_to_ids(m.group(0))))
        last = m.end()
    ids += _encode_as_text(tokenizer, rendered[last:])
    return ids
