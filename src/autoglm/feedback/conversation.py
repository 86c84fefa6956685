"""What a captured exchange says: the conversation it answers, each choice's answer, a stable hash.

Chat requests carry ``messages`` (content as text or as a list of parts, of which the text parts
count; ``developer`` is read as ``system``); completion requests a ``prompt`` (text, or a list of texts
where choice ``i`` answers prompt ``i // n``; token-id prompts have no text and are not exported).
:func:`conv_hash` is the sha256 of the canonical conversation, so the same conversation sent twice
hashes the same whatever the other request fields. Knows the OpenAI request and response shapes only.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["messages_of", "prompt_of", "answer_of", "conv_hash", "hash_messages"]


def _text(content: Any) -> str | None:
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(parts)
    return None


def messages_of(request: dict[str, Any]) -> list[dict[str, str]] | None:
    """The request's chat as ``[{"role", "content"}]`` (text only); None when it has none."""
    raw = request.get("messages")
    if not isinstance(raw, list):
        return None
    out = []
    for m in raw:
        if not isinstance(m, dict):
            return None
        role = "system" if m.get("role") == "developer" else str(m.get("role") or "")
        out.append({"role": role, "content": _text(m.get("content")) or ""})
    return out


def prompt_of(request: dict[str, Any], choice_index: int, n_choices: int) -> str | None:
    """The completion prompt choice ``choice_index`` answers (None for token-id prompts)."""
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        n = max(1, n_choices // len(prompt))
        i = choice_index // n
        return prompt[i] if i < len(prompt) else None
    return None


def answer_of(response: dict[str, Any], choice_index: int) -> str | None:
    """The text of choice ``choice_index`` (chat message content or completion text)."""
    for c in response.get("choices") or []:
        if c.get("index") == choice_index:
            if "message" in c:
                return _text((c.get("message") or {}).get("content"))
            return c.get("text")
    return None


def hash_messages(messages: list[dict[str, str]]) -> str:
    canon = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def conv_hash(kind: str, request: dict[str, Any]) -> str:
    if kind == "chat":
        messages = messages_of(request)
        if messages is not None:
            return hash_messages(messages)
    canon = json.dumps(request.get("prompt"), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(("prompt:" + canon).encode("utf-8")).hexdigest()
