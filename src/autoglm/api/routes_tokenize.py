"""``POST /tokenize`` and ``POST /detokenize``, in vLLM's request and response shapes.

``/tokenize`` takes ``{"model", "prompt"}`` or ``{"model", "messages", "add_generation_prompt", "tools"}``
(rendered with the model's chat template, exactly as ``/v1/chat/completions`` renders them, control
tokens in client text kept as text) and answers ``{"count", "max_model_len", "tokens", "token_strs"}``
(``token_strs`` only with ``return_token_strs``). ``add_special_tokens`` defaults to false for both
forms — unlike vLLM's default for a prompt — because that is what this server feeds the model, so
``count`` is what a completion of that prompt is billed; true adds the tokenizer's own special tokens.
``/detokenize`` takes ``{"model", "tokens"}`` and answers ``{"prompt"}``; an id outside the
vocabulary is a 400 naming it.

The handlers have the serving functions' signature ``(engine, body, raw, hooks)`` so that the app runs
them through the gateway (keys, model authorization, rate limits, usage: one request, zero tokens).

Knows tokenizers and :mod:`autoglm.api.prompt`; not HTTP routing or the gateway.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from autoglm.api.convert import _client_strings, _messages_for_template
from autoglm.api.errors import APIError
from autoglm.api.limits import RequestLimits
from autoglm.api.prompt import check_prompt_chars, encode_chat, encode_text
from autoglm.api.schemas import DetokenizeRequest, TokenizeRequest
from autoglm.api.streams import NoHooks, RequestHooks

__all__ = ["tokenize", "detokenize", "create_tokenize", "create_detokenize"]

_NO_TOKENS = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _with_specials(tokenizer: Any, ids: list[int]) -> list[int]:
    build = getattr(tokenizer, "build_inputs_with_special_tokens", None)
    try:
        return list(build(ids)) if build is not None else ids
    except Exception:  # noqa: BLE001 - a tokenizer without the hook: no special tokens to add
        return ids


def tokenize(engine: Any, req: TokenizeRequest, limits: RequestLimits | None = None) -> dict[str, Any]:
    """Blocking (template, tokenizer): run it in a worker thread."""
    limits = limits or RequestLimits()
    tok, limit = engine.tokenizer, int(engine.max_model_len)
    if (req.prompt is None) == (req.messages is None):
        raise APIError("send either 'prompt' (text) or 'messages' (a chat), not both and not neither.",
                       param="prompt" if req.prompt is not None else "messages")
    if req.prompt is not None:
        check_prompt_chars(tok, req.prompt, limit, "prompt", "prompt")
        ids = encode_text(tok, req.prompt, allow_control_tokens=limits.allow_control_tokens)
    else:
        messages = _messages_for_template(req)
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        try:
            text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=req.add_generation_prompt,
                                           tokenize=False)
        except Exception as exc:  # jinja raise_exception: the messages are at fault
            raise APIError(f"The chat template of this model could not render the messages: {exc}",
                           param="messages") from exc
        check_prompt_chars(tok, text, limit, "messages", "messages")
        ids = encode_chat(tok, text, _client_strings(messages, tools),
                          allow_control_tokens=limits.allow_control_tokens)
    if req.add_special_tokens:
        ids = _with_specials(tok, ids)
    out: dict[str, Any] = {"count": len(ids), "max_model_len": limit, "tokens": ids, "token_strs": None}
    if req.return_token_strs:
        out["token_strs"] = list(tok.convert_ids_to_tokens(ids))
    return out


def detokenize(engine: Any, req: DetokenizeRequest) -> dict[str, Any]:
    vocab = len(engine.tokenizer)
    for i, t in enumerate(req.tokens):
        if not 0 <= t < vocab:
            raise APIError(f"tokens[{i}] is {t}, outside this model's vocabulary (0..{vocab - 1}).",
                           param=f"tokens[{i}]")
    return {"prompt": engine.tokenizer.decode(req.tokens)}


async def create_tokenize(engine: Any, body: TokenizeRequest, raw: Request, hooks: RequestHooks | None = None, *,
                          limits: RequestLimits | None = None) -> Response:
    return await _counted(hooks, lambda: asyncio.to_thread(tokenize, engine, body, limits))


async def create_detokenize(engine: Any, body: DetokenizeRequest, raw: Request,
                            hooks: RequestHooks | None = None) -> Response:
    return await _counted(hooks, lambda: asyncio.to_thread(detokenize, engine, body))


async def _counted(hooks: RequestHooks | None, work: Any) -> Response:
    hooks = hooks or NoHooks()
    await hooks.admit(0, 0)  # one request against the key's rpm; no tokens generated
    try:
        result = await work()
    except BaseException as exc:
        await hooks.finish(None, None, exc)
        raise
    await hooks.finish(dict(_NO_TOKENS), None)
    return JSONResponse(result)
