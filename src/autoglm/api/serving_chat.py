"""POST /v1/chat/completions: plan, run the fan-out, answer as one JSON or as an SSE stream.

The stream sends, per choice, a first chunk with ``role: assistant``, then content (or tool-call)
deltas in arrival order with their ``index``, then a chunk with the finish reason; an optional usage
chunk (``choices: []``); then ``[DONE]``. A failure after the stream has started is sent as an
``{"error": ...}`` event before ``[DONE]``. A client that goes away cancels every choice.
Optional :class:`~autoglm.api.streams.RequestHooks` (the gateway's limits, usage, cache and metrics)
are called around the engine work; on a completed stream they get the same response object a
non-streamed request would have returned.

Knows the engine protocol and the OpenAI shapes (through :mod:`autoglm.api.convert`); not the model.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator, AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from autoglm.api.convert import (
    ChatPlan,
    ChoiceState,
    build_chat_plan,
    chat_chunk,
    chat_logprobs,
    chat_response,
    final_finish_reason,
    tool_call_id,
    total_usage,
)
from autoglm.api.limits import RequestLimits
from autoglm.api.schemas import ChatCompletionRequest
from autoglm.api.respond import guarded_stream, respond
from autoglm.api.sse import sse_event
from autoglm.api.streams import Fanout, NoHooks, RequestHooks
from autoglm.api.tool_parser import StreamingToolParser, ToolEvent
from autoglm.api.vision import load_images

__all__ = ["create_chat_completion"]


async def create_chat_completion(engine: Any, body: ChatCompletionRequest, raw: Request,
                                 hooks: RequestHooks | None = None, *, limits: RequestLimits | None = None) -> Response:
    hooks = hooks or NoHooks()
    images = await load_images(engine, body, limits or RequestLimits())  # image_url parts: fetched, checked
    # templating, tokenizing and compiling a schema are CPU work: off the event loop
    plan = await asyncio.to_thread(build_chat_plan, engine, body, limits, images)
    await hooks.admit(len(plan.prompt_token_ids), plan.params.max_tokens * plan.n)
    fan = Fanout(engine, plan.requests(), observer=hooks.on_output)
    return await respond(raw, fan, hooks, stream=bool(body.stream), num_choices=plan.n,
                         make_stream=lambda: _stream(plan, fan, hooks),
                         make_response=lambda states: chat_response(plan, states))


def _tool_delta(ev: ToolEvent, ids: dict[int, str]) -> dict[str, Any]:
    if ev.kind == "content":
        return {"content": ev.text}
    if ev.kind == "call":
        ids[ev.index] = tool_call_id()
        return {"tool_calls": [{"index": ev.index, "id": ids[ev.index], "type": "function",
                                "function": {"name": ev.text, "arguments": ""}}]}
    return {"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]}


def _stream(plan: ChatPlan, fan: Fanout, hooks: RequestHooks) -> AsyncIterator[str]:
    states = [ChoiceState(i) for i in range(plan.n)]
    return guarded_stream(_events(plan, fan, states), fan, hooks, what=f"chat stream {plan.request_id}",
                          usage=lambda: total_usage(states, len(plan.prompt_token_ids)),
                          final=lambda: chat_response(plan, states))


async def _events(plan: ChatPlan, fan: Fanout, states: list[ChoiceState]) -> AsyncGenerator[str, None]:
    parsers = [StreamingToolParser(plan.tool_names) if plan.tool_names else None for _ in range(plan.n)]
    call_ids: list[dict[int, str]] = [{} for _ in range(plan.n)]

    def choice(i: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> str:
        return sse_event(chat_chunk(plan, [{"index": i, "delta": delta, "logprobs": logprobs,
                                            "finish_reason": finish}]))

    for i in range(plan.n):
        if plan.forced_tool is not None:
            yield choice(i, {"role": "assistant", "content": None})
            yield choice(i, _tool_delta(ToolEvent("call", plan.forced_tool, 0), call_ids[i]))
        else:
            yield choice(i, {"role": "assistant", "content": ""})
    async for i, out in fan.events():
        states[i].add(out)
        deltas: list[dict[str, Any]] = []
        parser = parsers[i]
        if plan.forced_tool is not None:
            if out.text:
                deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": out.text}}]})
        elif parser is not None:
            events = parser.feed(out.text) + (parser.finish() if out.finished else [])
            deltas.extend(_tool_delta(ev, call_ids[i]) for ev in events
                          if plan.parallel_tool_calls or ev.kind == "content" or ev.index == 0)
        elif out.text:
            deltas.append({"content": out.text})
        logprobs = chat_logprobs(out.logprobs) if plan.logprobs and out.logprobs else None
        if not deltas and logprobs is not None:
            deltas.append({})
        for delta in deltas:
            yield choice(i, delta, logprobs)
            logprobs = None
        if out.finished:
            called = plan.forced_tool is not None or bool(parser and parser.num_calls)
            yield choice(i, {}, None, final_finish_reason(states[i].finish_reason, called))
    if plan.include_usage:
        yield sse_event(chat_chunk(plan, [], total_usage(states, len(plan.prompt_token_ids))))
