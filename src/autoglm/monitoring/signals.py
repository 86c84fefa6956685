"""What the served-model monitor measures of one exchange: a few small histograms, never text.

:func:`observe` turns one completed exchange (the request body as the client sent it and the response
the server returned) into an :class:`Observation`: for each signal, the histogram bins it adds to. A
window of observations is a :class:`Counts` (signal -> bin counts, plus the number of requests), which
is all the monitor keeps and stores: the text is read, binned and dropped.

Signals (every one a categorical histogram with fixed bins, so counts from any process add up):

* input: ``prompt_tokens`` (log-spaced length bins), ``language`` (the dominant script of the user's
  text: latin, zh, ja, ko, cyrillic, arabic, other, none) and ``tokens`` (a token-frequency
  distribution: words, and CJK characters one by one, hashed with CRC-32 into 32 buckets - the same
  bucket in every process, and no word can be read back from a bucket count);
* output: ``completion_tokens`` (per choice), ``finish_reason`` (stop, length, tool_calls,
  content_filter, other), ``answer`` (text, empty, refusal-like, tool_call) and ``json_valid`` (valid,
  invalid; only requests that asked for JSON with ``response_format``).

Knows the OpenAI request and response shapes; not HTTP, stores or statistics.
"""
from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SIGNALS", "INPUT_SIGNALS", "OUTPUT_SIGNALS", "Counts", "Observation", "observe", "length_bin",
           "language_of", "is_refusal", "extract_score", "TEXT_CAP"]

TEXT_CAP = 4000  # characters of the user's text read per request (the rest cannot change the bins much)
TOKEN_BUCKETS = 32
LENGTH_EDGES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)  # bin i: [edge[i-1], edge[i])


def _length_bins() -> tuple[str, ...]:
    lows = (0,) + LENGTH_EDGES
    return tuple(f"{lo}-{hi - 1}" for lo, hi in zip(lows, LENGTH_EDGES)) + (f"{LENGTH_EDGES[-1]}+",)


LANGUAGES = ("latin", "zh", "ja", "ko", "cyrillic", "arabic", "other", "none")
FINISH = ("stop", "length", "tool_calls", "content_filter", "other")
ANSWERS = ("text", "empty", "refusal", "tool_call")

# signal -> bin labels (the order is the storage format: append new bins at the end, never reorder)
SIGNALS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": _length_bins(),
    "language": LANGUAGES,
    "tokens": tuple(f"h{i:02d}" for i in range(TOKEN_BUCKETS)),
    "completion_tokens": _length_bins(),
    "finish_reason": FINISH,
    "answer": ANSWERS,
    "json_valid": ("valid", "invalid"),
}
INPUT_SIGNALS = ("prompt_tokens", "language", "tokens")
OUTPUT_SIGNALS = ("completion_tokens", "finish_reason", "answer", "json_valid")

# One pass over runs of each script (a run of latin letters goes on over spaces, digits and ASCII
# punctuation, so an English sentence is one match); group i counts for _SCRIPT_NAMES[i].
_SCRIPT_NAMES = ("latin", "zh", "ja", "ko", "cyrillic", "arabic", "other")
_SCRIPT_RUNS = re.compile(
    r"([A-Za-z\u00c0-\u024f][A-Za-z\u00c0-\u024f\s0-9!-/:-@\[-`{-~]*)"
    r"|([\u3400-\u4dbf\u4e00-\u9fff]+)"
    r"|([\u3040-\u30ff]+)"
    r"|([\uac00-\ud7af\u1100-\u11ff]+)"
    r"|([\u0400-\u04ff]+)"
    r"|([\u0600-\u06ff]+)"
    r"|([^\W\d_]+)")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_PUNCT = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())
_BUCKET_CACHE: dict[str, int] = {}
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry, (?:but )?i|i (?:can(?:no|')t|cannot|won'?t|am unable|'m unable|am not able)"
    r"|as an ai\b|unfortunately,? i (?:can(?:no|')t|cannot)"
    r"|抱歉|对不起|很抱歉|我(?:无法|不能|没办法)|作为(?:一个)?(?:ai|人工智能))",
    re.IGNORECASE)


@dataclass
class Counts:
    """Histograms of one window (or a reference): ``n`` requests, and signal -> bin counts."""

    n: int = 0
    bins: dict[str, list[int]] = field(default_factory=dict)

    def add(self, obs: Observation) -> None:
        self.n += 1
        for signal, index, amount in obs.items:
            row = self.bins.get(signal)
            if row is None:
                row = self.bins[signal] = [0] * len(SIGNALS[signal])
            row[index] += amount

    def merge(self, other: Counts) -> None:
        self.n += other.n
        for signal, row in other.bins.items():
            width = len(SIGNALS.get(signal, row))
            mine = self.bins.setdefault(signal, [0] * width)
            if len(mine) < len(row):
                mine.extend([0] * (len(row) - len(mine)))
            for i, c in enumerate(row):
                mine[i] += c

    def total(self, signal: str) -> int:
        return sum(self.bins.get(signal, ()))

    def share(self, signal: str, label: str) -> float | None:
        row, total = self.bins.get(signal), self.total(signal)
        if not row or not total:
            return None
        return row[SIGNALS[signal].index(label)] / total

    def to_json(self) -> str:
        return json.dumps({"n": self.n, "bins": self.bins}, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Counts:
        if not text:
            return cls()
        data = json.loads(text)
        bins = {s: [int(c) for c in row] for s, row in (data.get("bins") or {}).items() if s in SIGNALS}
        return cls(int(data.get("n") or 0), bins)


@dataclass
class Observation:
    """One exchange, binned: ``(signal, bin index, amount)`` triples; ``score`` when the answer is a number."""

    model: str
    items: list[tuple[str, int, int]] = field(default_factory=list)
    score: float | None = None  # a classifier-like answer's score, for AUC from labels


def length_bin(tokens: int) -> int:
    for i, edge in enumerate(LENGTH_EDGES):
        if tokens < edge:
            return i
    return len(LENGTH_EDGES)


def language_of(text: str) -> str:
    """The dominant script of ``text`` (first :data:`TEXT_CAP` characters); kana anywhere means ``ja``."""
    counts = [0] * len(_SCRIPT_NAMES)
    for m in _SCRIPT_RUNS.finditer(text[:TEXT_CAP]):
        counts[m.lastindex - 1] += m.end() - m.start()
    total = sum(counts)
    if not total:
        return "none"
    if counts[2]:  # kanji in Japanese text
        counts[2] += counts[1]
        counts[1] = 0
    best = max(range(len(counts)), key=counts.__getitem__)
    return _SCRIPT_NAMES[best] if counts[best] * 2 >= total and best < len(_SCRIPT_NAMES) - 1 else "other"


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.match(text[:200]))


def _bucket(token: str) -> int:
    b = _BUCKET_CACHE.get(token)
    if b is None:
        b = zlib.crc32(token.encode("utf-8")) % TOKEN_BUCKETS  # the same in every process (unlike hash())
        if len(_BUCKET_CACHE) < 65536:
            _BUCKET_CACHE[token] = b
    return b


def _token_buckets(text: str) -> dict[int, int]:
    """Words (CJK: characters) of the first :data:`TEXT_CAP` characters, counted by hash bucket."""
    out: dict[int, int] = {}
    for word, k in Counter(text[:TEXT_CAP].lower().split()).items():
        if word.isascii() or not _CJK.search(word):
            word = word.strip(_PUNCT)
            if word:
                b = _bucket(word)
                out[b] = out.get(b, 0) + k
            continue
        for ch, kk in Counter(word).items():
            if ch.isalnum():
                b = _bucket(ch)
                out[b] = out.get(b, 0) + k * kk
    return out


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def user_text(request: dict[str, Any]) -> str:
    """The user's text of a chat or completion request (system prompts and token-id prompts left out)."""
    messages = request.get("messages")
    if isinstance(messages, list):
        return "\n".join(_content_text(m.get("content")) for m in messages
                         if isinstance(m, dict) and m.get("role") == "user")
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return ""


def _wants_json(request: dict[str, Any]) -> bool:
    fmt = request.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


_SCORE_KEYS = ("score", "probability", "prob", "p", "confidence")


def extract_score(text: str) -> float | None:
    """A classifier-like answer's score: the answer is a number, or JSON with a numeric score field."""
    text = text.strip()
    if not text or len(text) > 200:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = next((value[k] for k in _SCORE_KEYS if k in value), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def observe(request: dict[str, Any] | None, response: dict[str, Any]) -> Observation:
    """Bin one completed chat or completion exchange (see the module docstring for the signals).

    ``request`` None: the request was not read (too large to parse cheaply); its text signals
    (``language``, ``tokens``, ``json_valid``) are left out, the rest is counted."""
    obs = Observation(str(response.get("model") or (request or {}).get("model") or ""))
    add = obs.items.append
    usage = response.get("usage") or {}
    choices = [c for c in response.get("choices") or [] if isinstance(c, dict)]
    add(("prompt_tokens", length_bin(int(usage.get("prompt_tokens") or 0)), 1))
    if request is not None:
        text = user_text(request)
        add(("language", LANGUAGES.index(language_of(text)), 1))
        for bucket, n in _token_buckets(text).items():
            add(("tokens", bucket, n))
    if not choices:
        return obs
    per_choice = int(usage.get("completion_tokens") or 0) // len(choices)
    wants_json = request is not None and _wants_json(request)
    for choice in choices:
        add(("completion_tokens", length_bin(per_choice), 1))
        finish = choice.get("finish_reason") or "stop"
        add(("finish_reason", FINISH.index(finish) if finish in FINISH else FINISH.index("other"), 1))
        message = choice.get("message")
        if isinstance(message, dict):
            answer, calls = _content_text(message.get("content")), bool(message.get("tool_calls"))
        else:
            answer, calls = str(choice.get("text") or ""), False
        if calls:
            kind = "tool_call"
        elif not answer.strip():
            kind = "empty"
        elif is_refusal(answer):
            kind = "refusal"
        else:
            kind = "text"
        add(("answer", ANSWERS.index(kind), 1))
        if wants_json and not calls:
            try:
                json.loads(answer)
                add(("json_valid", 0, 1))
            except ValueError:
                add(("json_valid", 1, 1))
        if obs.score is None and choice.get("index", 0) == 0 and not calls:
            obs.score = extract_score(answer)
    return obs
