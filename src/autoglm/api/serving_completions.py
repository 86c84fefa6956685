"""POST /v1/completions: prompts (a string, strings, or token ids) in, text completions out.

Choice ``index`` is ``prompt_index * n + i``. Streaming follows OpenAI's legacy format: chunks of
``object: text_completion`` with ``text`` deltas, a last chunk per choice with the finish reason, an
optional usage chunk, then ``[DONE]``. Optional :class:`~autoglm.api.streams.RequestHooks` wrap the
engine work as in :mod:`autoglm.api.serving_chat`. Knows the engine protocol and OpenAI shapes; not the model.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator, AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from autoglm.api.convert import (
    ChoiceState,
    CompletionPlan,
    build_completion_plan,
    completion_chunk,
    completion_logprobs,
    completion_prompt_tokens,
    completion_response,
    total_usage,
)
from autoglm.api.limits import RequestLimits
from autoglm.api.schemas import CompletionRequest
from autoglm.api.respond import guarded_stream, respond
from autoglm.api.sse import sse_event
from autoglm.api.streams import Fanout, NoHooks, RequestHooks

__all__ = ["create_completion"]


async def create_completion(engine: Any, body: CompletionRequest, raw: Request,
                            hooks: RequestHooks | None = None, *, limits: RequestLimits | None = None) -> Response:
    hooks = hooks or NoHooks()
    # templating, tokenizing and compiling a schema are CPU work: off the event loop
    plan = await asyncio.to_thread(build_completion_plan, engine, body, limits)
    await hooks.admit(completion_prompt_tokens(plan), plan.params.max_tokens * len(plan.prompts) * plan.n)
    fan = Fanout(engine, plan.requests(), observer=hooks.on_output)
    return await respond(raw, fan, hooks, stream=bool(body.stream), num_choices=len(plan.prompts) * plan.n,
                         make_stream=lambda: _stream(plan, fan, hooks),
                         make_response=lambda states: completion_response(plan, states))


def _stream(plan: CompletionPlan, fan: Fanout, hooks: RequestHooks) -> AsyncIterator[str]:
    states = [ChoiceState(i) for i in range(len(plan.prompts) * plan.n)]
    return guarded_stream(_events(plan, fan, states), fan, hooks, what=f"completion stream {plan.request_id}",
                          usage=lambda: total_usage(states, completion_prompt_tokens(plan)),
                          final=lambda: completion_response(plan, states))


async def _events(plan: CompletionPlan, fan: Fanout, states: list[ChoiceState]) -> AsyncGenerator[str, None]:
    offsets = [0] * len(states)
    want_logprobs = plan.params.logprobs is not None

    def choice(i: int, text: str, logprobs: Any = None, finish: str | None = None) -> str:
        return sse_event(completion_chunk(plan, [{"index": i, "text": text, "logprobs": logprobs,
                                                  "finish_reason": finish}]))

    for i in range(len(states)):
        echo = plan.echo_texts[i // plan.n]
        if echo:
            yield choice(i, echo)
            offsets[i] = len(echo)
    async for i, out in fan.events():
        states[i].add(out)
        logprobs = None
        if want_logprobs and out.logprobs:
            logprobs = completion_logprobs(out.logprobs, offsets[i])
        offsets[i] += len(out.text)
        if out.text or logprobs is not None:
            yield choice(i, out.text, logprobs)
        if out.finished:
            yield choice(i, "", None, states[i].finish_reason or "stop")
    if plan.include_usage:
        yield sse_event(completion_chunk(plan, [], total_usage(states, completion_prompt_tokens(plan))))
