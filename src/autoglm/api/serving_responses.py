"""POST /v1/responses (and GET/DELETE /v1/responses/{id}): the Responses API on the chat path.

A request is converted to a chat request (:mod:`autoglm.api.responses_convert`), planned and run like
``/v1/chat/completions`` with one choice, and answered as a Response object, or streamed as typed
events — ``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, (``response.content_part.added``, ``response.output_text.delta`` ...,
``response.output_text.done``, ``response.content_part.done``) or
(``response.function_call_arguments.delta`` ..., ``response.function_call_arguments.done``),
``response.output_item.done``; last ``response.completed`` (``response.incomplete`` when
``max_output_tokens`` cut it). Every event is ``event: <type>`` + ``data: {...}`` with a
``sequence_number``; a trailing ``data: [DONE]`` (which the SDK skips) ends the body as on the chat
route, and a failure after the first byte is an ``{"error": ...}`` event before it.

``input_image`` parts are loaded as the chat route loads ``image_url`` parts (:mod:`autoglm.api.vision`:
limits, fetching, the 400 for a text-only model), before anything streams; a 400 names the input part.

With ``store`` (the default) a finished response is kept in the app's
:class:`~autoglm.api.response_store.ResponseStore` (in-process LRU), so ``previous_response_id`` can
continue it and ``GET /v1/responses/{id}`` can read it; ``store: false`` keeps nothing. The gateway's
hooks (limits, usage, metrics) wrap the engine work exactly as for chat; usage is reported to them in
prompt/completion tokens. The response cache and the feedback tap do not apply to this route.

Knows the engine protocol and the Responses shapes; not the model or where keys live.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncGenerator

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from autoglm.api.convert import ChatPlan, ChoiceState, build_chat_plan, total_usage
from autoglm.api.errors import APIError
from autoglm.api.limits import RequestLimits
from autoglm.api.respond import CLIENT_CLOSED, guarded_stream
from autoglm.api.response_store import ResponseStore, StoredResponse
from autoglm.api.responses_convert import (
    function_call_item,
    history_of,
    item_id,
    message_item,
    output_items,
    output_text_part,
    remap_error,
    response_object,
    responses_usage,
    to_chat_request,
)
from autoglm.api.schemas import ResponsesRequest
from autoglm.api.sse import SSE_HEADERS
from autoglm.api.streams import ClientDisconnected, Fanout, NoHooks, RequestHooks, cancel_on_disconnect
from autoglm.api.tool_parser import StreamingToolParser, parse_tool_calls
from autoglm.api.vision import load_images

__all__ = ["create_response", "install_stored_response_routes", "owner_of", "stored_or_404"]


def owner_of(raw: Request) -> str | None:
    key = raw.scope.get("state", {}).get("autoglm_key")
    return getattr(key, "id", None)


def stored_or_404(store: ResponseStore, response_id: str, owner: str | None,
                  param: str | None = None) -> StoredResponse:
    entry = store.get(response_id, owner)
    if entry is None:
        raise APIError(f"No stored response with id {response_id[:80]!r} (responses are kept in this server's "
                       "memory, most recent first, and only for the key that created them).", 404, param=param,
                       code="response_not_found")
    return entry


class _Turn:
    """One request's plan and what its answer is built from."""

    def __init__(self, req: ResponsesRequest, plan: ChatPlan, history: list[dict[str, Any]],
                 store: ResponseStore, owner: str | None):
        self.req, self.plan, self.history, self.store, self.owner = req, plan, history, store, owner
        self.id, self.created = item_id("resp"), int(time.time())

    def response(self, status: str, output: list[dict[str, Any]], state: ChoiceState | None) -> dict[str, Any]:
        usage = responses_usage(len(self.plan.prompt_token_ids), state.num_output_tokens) if state else None
        return response_object(self.req, id_=self.id, created=self.created, model=self.plan.model, status=status,
                               output=output, usage=usage)

    def finished(self, output: list[dict[str, Any]], state: ChoiceState) -> dict[str, Any]:
        resp = self.response(_status(state), output, state)
        if self.req.store:
            self.store.put(StoredResponse(resp, self.history + history_of(output), self.owner))
        return resp


def _status(state: ChoiceState) -> str:
    return "incomplete" if state.finish_reason == "length" else "completed"


async def create_response(engine: Any, body: ResponsesRequest, raw: Request, hooks: RequestHooks | None = None, *,
                          limits: RequestLimits | None = None, store: ResponseStore) -> Response:
    hooks = hooks or NoHooks()
    owner = owner_of(raw)
    prior: list[dict[str, Any]] = []
    if body.previous_response_id:
        prior = stored_or_404(store, body.previous_response_id, owner, "previous_response_id").history
    chat, turn_input, sources = to_chat_request(body, prior)
    try:
        images = await load_images(engine, chat, limits or RequestLimits())  # input_image parts: fetched, checked
        plan = await asyncio.to_thread(build_chat_plan, engine, chat, limits, images)
    except APIError as exc:
        raise remap_error(exc, sources) from None
    turn = _Turn(body, plan, prior + turn_input, store, owner)
    await hooks.admit(len(plan.prompt_token_ids), plan.params.max_tokens)
    fan = Fanout(engine, plan.requests(), observer=hooks.on_output)
    try:
        await cancel_on_disconnect(raw, fan.prime())
    except BaseException as exc:
        fan.close()
        return await _failed(hooks, exc)
    if body.stream:
        state = ChoiceState(0)
        items = _Items()
        stream = guarded_stream(_events(turn, fan, state, items), fan, hooks, what=f"responses stream {turn.id}",
                                usage=lambda: total_usage([state], len(plan.prompt_token_ids)),
                                final=lambda: items.final_response)
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        state = await cancel_on_disconnect(raw, _collect(fan))
    except BaseException as exc:
        return await _failed(hooks, exc)
    finally:
        fan.close()
    resp = turn.finished(_reply_items(plan, state), state)
    await hooks.finish(total_usage([state], len(plan.prompt_token_ids)), resp)
    return JSONResponse(resp)


async def _failed(hooks: RequestHooks, exc: BaseException) -> Response:
    await hooks.finish(None, None, exc)
    if isinstance(exc, ClientDisconnected):
        return Response(status_code=CLIENT_CLOSED)
    raise exc


async def _collect(fan: Fanout) -> ChoiceState:
    state = ChoiceState(0)
    async for _, out in fan.events():
        state.add(out)
    return state


def _reply_items(plan: ChatPlan, state: ChoiceState) -> list[dict[str, Any]]:
    incomplete = state.finish_reason == "length"
    if plan.forced_tool is not None:
        return output_items(None, [(plan.forced_tool, state.text)], incomplete)
    if plan.tool_names:
        content, calls = parse_tool_calls(state.text, plan.tool_names)
        if not plan.parallel_tool_calls:
            calls = calls[:1]
        return output_items(content, [(c.name, c.arguments) for c in calls], incomplete)
    return output_items(state.text, [], incomplete)


# ---- streaming --------------------------------------------------------------------------------


class _Items:
    """The output items of a stream as they open, grow and close, and the events that say so."""

    def __init__(self) -> None:
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None
        self.seq = 0
        self.final_response: dict[str, Any] = {}

    def event(self, type_: str, **fields: Any) -> str:
        obj = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {type_}\ndata: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1}

    def text(self, delta: str) -> list[str]:
        events = []
        if self.open is None or self.open["type"] != "message":
            events += self.close()
            self.open = message_item(item_id("msg"), "", "in_progress")
            self.output.append(self.open)
            events.append(self.event("response.output_item.added", output_index=len(self.output) - 1,
                                     item=dict(self.open, content=[])))
            self.open["content"] = [output_text_part("")]
            events.append(self.event("response.content_part.added", **self._where(), content_index=0,
                                     part=output_text_part("")))
        if not delta:
            return events
        self.open["content"][0]["text"] += delta
        events.append(self.event("response.output_text.delta", **self._where(), content_index=0, delta=delta,
                                 logprobs=[]))
        return events

    def call(self, name: str) -> list[str]:
        events = self.close()
        self.open = function_call_item(item_id("fc"), item_id("call"), name, "", "in_progress")
        self.output.append(self.open)
        events.append(self.event("response.output_item.added", output_index=len(self.output) - 1,
                                 item=dict(self.open)))
        return events

    def args(self, delta: str) -> list[str]:
        if self.open is None or self.open["type"] != "function_call":
            return []
        self.open["arguments"] += delta
        return [self.event("response.function_call_arguments.delta", **self._where(), delta=delta)]

    def close(self, status: str = "completed") -> list[str]:
        item, events = self.open, []
        if item is None:
            return events
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self.event("response.output_text.done", **self._where(), content_index=0,
                                     text=part["text"], logprobs=[]))
            events.append(self.event("response.content_part.done", **self._where(), content_index=0, part=part))
        else:
            events.append(self.event("response.function_call_arguments.done", **self._where(),
                                     name=item["name"], arguments=item["arguments"]))
        item["status"] = status
        events.append(self.event("response.output_item.done", output_index=len(self.output) - 1, item=item))
        self.open = None
        return events


async def _events(turn: _Turn, fan: Fanout, state: ChoiceState, items: _Items) -> AsyncGenerator[str, None]:
    plan = turn.plan
    started = turn.response("in_progress", [], None)
    yield items.event("response.created", response=started)
    yield items.event("response.in_progress", response=started)
    parser = StreamingToolParser(plan.tool_names) if plan.tool_names and plan.forced_tool is None else None
    dropping = False  # parallel_tool_calls=false: a second call and its arguments are not sent
    if plan.forced_tool is not None:
        for line in items.call(plan.forced_tool):
            yield line
    async for _, out in fan.events():
        state.add(out)
        lines: list[str] = []
        if plan.forced_tool is not None:
            lines = items.args(out.text) if out.text else []
        elif parser is not None:
            for ev in parser.feed(out.text) + (parser.finish() if out.finished else []):
                if ev.kind == "content":
                    lines += items.text(ev.text) if ev.text else []
                elif ev.kind == "call":
                    dropping = not plan.parallel_tool_calls and ev.index > 0
                    lines += [] if dropping else items.call(ev.text)
                elif not dropping:
                    lines += items.args(ev.text)
        elif out.text:
            lines = items.text(out.text)
        for line in lines:
            yield line
    status = _status(state)
    if not items.output:  # nothing was said: one empty message, as the non-streamed answer has
        for line in items.text(""):
            yield line
    for line in items.close(status):
        yield line
    items.final_response = turn.finished(items.output, state)
    yield items.event(f"response.{status}", response=items.final_response)


def install_stored_response_routes(app: Any, store: ResponseStore) -> None:
    """``GET /v1/responses/{id}`` and ``DELETE /v1/responses/{id}``, for the key that created it."""

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(response_id: str, request: Request) -> dict[str, Any]:
        return stored_or_404(store, response_id, owner_of(request)).response

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
        if not store.delete(response_id, owner_of(request)):
            stored_or_404(store, response_id, owner_of(request))  # the 404
        return {"id": response_id, "object": "response.deleted", "deleted": True}
