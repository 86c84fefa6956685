"""Prefix affinity: send a request to the replica whose prefix cache already holds its prompt's start.

Replicas keep the KV cells of finished prompts (``prefix_cache_tokens``), so a multi-turn chat whose
every turn resends the history runs fastest where its previous turn ran. Least-outstanding routing
scatters the turns; :class:`PrefixAffinity` remembers, per route, which replica last served each
prompt prefix and prefers it - within a load bound, so a hot conversation cannot pile onto one replica.

How a prefix is known: :func:`request_text` turns the request into the text its prompt starts with (the
chat messages in order, or the completion prompt); :func:`block_hashes` cuts it into blocks of
``block_chars`` characters and hashes each block chained to the ones before it, so hash *i* stands for
the whole prefix up to block *i*. :meth:`PrefixAffinity.choose` walks those hashes longest first, takes
the replica that served the longest known prefix when its outstanding count is within
``load_bound`` of the least loaded replica's (``outstanding <= min + max(slack, factor * min)``), and
otherwise the least loaded one; then every block hash of the request is recorded for the chosen replica
(its cache will hold them). The table is an LRU bounded by ``max_entries``; a replica that goes away
simply stops being chosen. No prompt text is kept: only 64-bit hashes.

Knows replicas only as objects with ``outstanding``/``served`` and an ``is_up()``; nothing about HTTP.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["AffinitySettings", "PrefixAffinity", "request_text", "block_hashes", "POLICIES"]

POLICIES = ("least_outstanding", "prefix_affinity")


@dataclass(frozen=True)
class AffinitySettings:
    block_chars: int = 128  # prefix granularity; about 30-45 tokens of English text
    max_blocks: int = 64  # longer prompts are matched on their first max_blocks blocks
    load_factor: float = 0.5  # the affine replica may carry min + max(slack, factor * min) requests
    load_slack: int = 2
    max_entries: int = 100_000  # remembered prefixes per route (LRU)


def request_text(body: Any) -> str | None:
    """The text a request's prompt starts with: chat messages in order, or the completion prompt."""
    messages = getattr(body, "messages", None)
    if messages:
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
            role = m.get("role") if isinstance(m, dict) else getattr(m, "role", "")
            if not isinstance(content, str):
                content = json.dumps(content, sort_keys=True, default=str, ensure_ascii=False)
            parts.append(f"<{role}>{content}")
        return "".join(parts)
    prompt = getattr(body, "prompt", None)
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    instructions, given = getattr(body, "instructions", None), getattr(body, "input", None)
    if given is not None:  # the Responses API
        text = given if isinstance(given, str) else json.dumps(given, sort_keys=True, default=str, ensure_ascii=False)
        return (instructions or "") + text
    return None


def block_hashes(text: str, block_chars: int, max_blocks: int) -> list[int]:
    """Chained hashes of the text's whole blocks: element *i* identifies the prefix ``text[:(i+1)*block_chars]``."""
    out: list[int] = []
    h = hashlib.blake2b(digest_size=8)
    for i in range(min(len(text) // block_chars, max_blocks)):
        h.update(text[i * block_chars:(i + 1) * block_chars].encode("utf-8", "surrogatepass"))
        out.append(int.from_bytes(h.copy().digest(), "little"))
    return out


class PrefixAffinity:
    """The prefix -> replica table of one route, and the choice it makes."""

    def __init__(self, settings: AffinitySettings | None = None):
        self.settings = settings or AffinitySettings()
        self._owner: OrderedDict[int, int] = OrderedDict()  # prefix hash -> id(replica)
        self.affine = 0  # choices that followed a known prefix
        self.spilled = 0  # a known prefix's replica was too busy: least loaded instead
        self.cold = 0  # no known prefix

    def hashes(self, text: str | None) -> list[int]:
        if not text:
            return []
        return block_hashes(text, self.settings.block_chars, self.settings.max_blocks)

    def choose(self, candidates: Sequence[Any], hashes: Sequence[int]) -> Any:
        """The replica for a request with these prefix hashes (``candidates``: healthy, non-empty)."""
        least = min(candidates, key=lambda b: (b.outstanding, b.served))
        chosen = least
        if hashes and len(candidates) > 1:
            by_id = {id(b): b for b in candidates}
            owner = None
            for h in reversed(hashes):
                rid = self._owner.get(h)
                if rid is not None and rid in by_id:
                    owner = by_id[rid]
                    break
            if owner is None:
                self.cold += 1
            else:
                s = self.settings
                bound = least.outstanding + max(s.load_slack, int(s.load_factor * least.outstanding))
                if owner.outstanding <= bound:
                    chosen = owner
                    self.affine += 1
                else:
                    self.spilled += 1
        self.record(chosen, hashes)
        return chosen

    def record(self, replica: Any, hashes: Sequence[int]) -> None:
        rid = id(replica)
        table = self._owner
        for h in hashes:
            table[h] = rid
            table.move_to_end(h)
        while len(table) > self.settings.max_entries:
            table.popitem(last=False)

    def stats(self) -> dict[str, int]:
        return {"affine": self.affine, "spilled": self.spilled, "cold": self.cold, "prefixes": len(self._owner)}
