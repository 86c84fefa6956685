"""From feedback to training data: weighted SFT rows, DPO pairs and KTO examples, as JSONL the trainers read.

Every feedback row on a choice of a captured exchange is a *signal* on (conversation, answer): its
rating (implicit ratings scaled by ``implicit_weight``) times its recency factor
``0.5 ** (age_days / half_life_days)``. A correction is a signal of -1 on the answer it corrects and +1
on the corrected text. Signals are pooled by (conversation, answer), which also de-duplicates: the same
answer to the same conversation rated in several exchanges is one row with all of their support.
A group with fewer than ``min_support`` signals is left out.

* ``sft``: ``{"messages": [...prompt, assistant answer], "weight"}`` (``prompt``/``completion`` for the
  completions API) with the seed's rule ``weight = 1 + sum(signal) * lr``; a row whose weight falls to 0
  or below is left out (a rejected answer is not imitated).
* ``dpo``: ``{"messages"|"prompt", "chosen", "rejected", "weight"}`` from corrections (the correction over
  the answer) and preferences (``preferred_over``: this answer over the other, both answering the same
  conversation), pooled by (conversation, chosen, rejected); ``weight`` = the sum of recency factors.
* ``kto``: ``{"messages"|"prompt", "completion", "label", "weight"}``: ``label`` is the sign of the
  pooled signal (0 is left out), ``weight`` the sum of its recency factors.

The rows are exactly what :mod:`autoglm.training.text_data` (sft) and :mod:`autoglm.training.preference`
(dpo, kto) validate. Knows the feedback store and request shapes; not the trainers' tokenisation.
"""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from autoglm.errors import ConfigError
from autoglm.feedback.conversation import answer_of, messages_of, prompt_of
from autoglm.feedback.store import Exchange, Feedback, FeedbackStore

__all__ = ["FORMATS", "ExportOptions", "ExportResult", "export_rows", "write_jsonl"]

FORMATS = ("sft", "dpo", "kto")
_ROLES = frozenset({"system", "user", "assistant", "tool", "observation"})


@dataclass
class ExportOptions:
    format: str = "sft"
    since: float | None = None  # feedback given at or after (epoch s)
    lr: float = 1.0  # the seed's rule: weight += signal * lr
    half_life_days: float = 30.0  # a signal this old counts half
    implicit_weight: float = 0.5  # implicit signals count this much of an explicit one
    min_support: int = 1  # signals a row needs
    now: float | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"export format {self.format!r} is not one of {', '.join(FORMATS)}")
        if not (self.half_life_days > 0 and math.isfinite(self.half_life_days)):
            raise ConfigError(f"half-life must be a positive number of days, got {self.half_life_days!r}")
        if self.min_support < 1:
            raise ConfigError(f"min-support must be at least 1, got {self.min_support!r}")
        if not (0 <= self.implicit_weight <= 1):
            raise ConfigError(f"implicit-weight must be in [0, 1], got {self.implicit_weight!r}")


@dataclass
class ExportResult:
    rows: list[dict[str, Any]]
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class _Group:
    convo: Any  # messages list or prompt text
    answer: str
    signals: list[float] = field(default_factory=list)
    recency: list[float] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


def _convo(ex: Exchange, choice: int) -> tuple[Any, str] | None:
    """(prompt messages or prompt text, canonical key) of what choice ``choice`` answers; None if unusable."""
    if ex.request is None:
        return None
    if ex.kind == "chat":
        messages = messages_of(ex.request)
        if not messages or any(m["role"] not in _ROLES for m in messages) or \
                any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
            return None
        return messages, json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    prompt = prompt_of(ex.request, choice, ex.n_choices)
    return (prompt, json.dumps(prompt, ensure_ascii=False)) if prompt else None


def _answer(ex: Exchange, choice: int) -> str | None:
    if ex.response is None:
        return None
    text = answer_of(ex.response, choice)
    return text if text and text.strip() else None


def _base(convo: Any) -> dict[str, Any]:
    return {"messages": convo} if isinstance(convo, list) else {"prompt": convo}


def export_rows(fs: FeedbackStore, options: ExportOptions) -> ExportResult:
    """The rows of ``options.format`` from every feedback row since ``options.since``."""
    now = time.time() if options.now is None else options.now
    stats: dict[str, int] = defaultdict(int)
    groups: dict[tuple[str, str], _Group] = {}
    pairs: dict[tuple[str, str, str], _Group] = {}
    others: dict[str, Exchange | None] = {}

    def decay(fb: Feedback) -> float:
        return 0.5 ** (max(0.0, now - fb.created_at) / 86400.0 / options.half_life_days)

    def add(key: str, convo: Any, answer: str, value: float, r: float, fb_id: str) -> None:
        g = groups.setdefault((key, answer), _Group(convo, answer))
        g.signals.append(value)
        g.recency.append(r)
        g.ids.add(fb_id)

    for fb, ex in fs.iter_joined(since=options.since):
        stats["feedback"] += 1
        got = _convo(ex, fb.choice_index)
        answer = _answer(ex, fb.choice_index)
        if got is None or answer is None:
            stats["skipped_unusable"] += 1
            continue
        convo, key = got
        r = decay(fb)
        scale = options.implicit_weight if fb.source.startswith("implicit:") else 1.0
        if fb.rating is not None:
            add(key, convo, answer, fb.rating * scale * r, r, fb.id)
        if fb.correction and fb.correction.strip() and fb.correction.strip() != answer.strip():
            add(key, convo, answer, -1.0 * r, r, fb.id + ":c-")
            add(key, convo, fb.correction, 1.0 * r, r, fb.id + ":c+")
            p = pairs.setdefault((key, fb.correction, answer), _Group(convo, fb.correction))
            p.signals.append(1.0)
            p.recency.append(r)
            p.ids.add(fb.id)
        if fb.other_id:
            if fb.other_id not in others:
                others[fb.other_id] = fs.get_exchange(fb.other_id)
            other = others[fb.other_id]
            other_got = _convo(other, fb.other_choice or 0) if other is not None else None
            rejected = _answer(other, fb.other_choice or 0) if other is not None else None
            if other_got is None or rejected is None or other_got[1] != key:
                stats["skipped_preference"] += 1
            elif rejected.strip() != answer.strip():
                p = pairs.setdefault((key, answer, rejected), _Group(convo, answer))
                p.signals.append(1.0)
                p.recency.append(r)
                p.ids.add(fb.id)
    rows: list[dict[str, Any]] = []
    if options.format == "dpo":
        for (_, chosen, rejected), p in pairs.items():
            if len(p.ids) < options.min_support:
                stats["below_min_support"] += 1
                continue
            rows.append({**_base(p.convo), "chosen": chosen, "rejected": rejected, "weight": round(sum(p.recency), 6)})
    else:
        for g in groups.values():
            if len(g.ids) < options.min_support:
                stats["below_min_support"] += 1
                continue
            score = sum(g.signals)
            if options.format == "sft":
                weight = 1.0 + score * options.lr  # the seed's rule, from a neutral 1
                if weight <= 0:
                    stats["rejected_answers"] += 1
                    continue
                row = {**_base(g.convo)}
                if isinstance(g.convo, list):
                    row["messages"] = [*g.convo, {"role": "assistant", "content": g.answer}]
                else:
                    row["completion"] = g.answer
                rows.append({**row, "weight": round(weight, 6)})
            else:
                if score == 0:
                    stats["neutral"] += 1
                    continue
                rows.append({**_base(g.convo), "completion": g.answer, "label": score > 0,
                             "weight": round(sum(g.recency), 6)})
    stats["rows"] = len(rows)
    return ExportResult(rows, dict(stats))


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write ``rows`` as JSON lines (atomically); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
