"""The Responses API in chat terms: a ``/v1/responses`` request -> a chat request, a reply -> output items.

Request side: ``instructions`` become a system message; ``input`` (a string, or items: messages with
``input_text``/``output_text`` parts, ``function_call`` and ``function_call_output``) becomes chat
messages after the stored history of ``previous_response_id``; function ``tools``, ``tool_choice``,
``parallel_tool_calls`` and ``text.format`` map to their chat fields, so templating, tool parsing and
guided JSON are the chat path's own. What has no chat equivalent (images, files, hosted tools such as
web search, item references) is a 400 naming the item. ``reasoning`` items are dropped: a GLM model
reads no reasoning it did not write in this turn.

Response side: pure functions from the reply text (or streamed items) to the Response object
(``object: "response"``, ``output`` items, ``usage`` in input/output tokens).

Knows the OpenAI Responses shapes and :class:`~autoglm.api.schemas.ChatCompletionRequest`; not
engines, HTTP or where stored responses live.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import ValidationError

from autoglm.api.errors import APIError
from autoglm.api.schemas import ChatCompletionRequest, ResponsesRequest

__all__ = ["to_chat_request", "history_of", "output_items", "response_object", "responses_usage",
           "item_id", "remap_error"]

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_ROLES = frozenset({"user", "system", "developer", "assistant"})


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _text_of(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError(f"{where}.content must be a string or a list of content parts.", param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
            continue
        if kind not in _TEXT_PARTS:
            raise APIError(f"{where}.content[{j}] has type {kind!r}; this server accepts only text parts "
                           "('input_text', 'output_text'): GLM text models read no images, audio or files.",
                           param=f"{where}.content[{j}].type", code="unsupported_content_type")
        text = part.get("text")
        if not isinstance(text, str):
            raise APIError(f"{where}.content[{j}] is a text part without a string 'text'.",
                           param=f"{where}.content[{j}].text")
        texts.append(text)
    return "".join(texts)


def _input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``input`` as chat message dicts (the shape of :class:`~autoglm.api.schemas.ChatMessage`)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise APIError(f"{where}.role is {role!r}; use one of user, system, developer, assistant.",
                               param=f"{where}.role")
            out.append({"role": role, "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            name, args, call_id = item.get("name"), item.get("arguments", "{}"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(args, str) or not isinstance(call_id, str):
                raise APIError(f"{where} (function_call) needs string 'call_id', 'name' and 'arguments'.",
                               param=where)
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            if out and out[-1]["role"] == "assistant" and "tool_call_id" not in out[-1]:
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise APIError(f"{where} (function_call_output) needs a string 'call_id'.", param=f"{where}.call_id")
            text = output if isinstance(output, str) else _text_of(output, where)
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise APIError(f"{where} has type {kind!r}; this server accepts 'message', 'function_call' and "
                           "'function_call_output' items.", param=f"{where}.type", code="unsupported_item_type")
    return out


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise APIError(f"tools[{i}] has type {tool.get('type')!r}; this server runs only 'function' tools "
                           "(hosted tools such as web or file search are OpenAI's).", param=f"tools[{i}].type",
                           code="unsupported_tool_type")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise APIError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'name': ...}.",
                   param="tool_choice")


def _response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.json_schema is None:
        raise APIError("text.format type 'json_schema' needs 'schema' (a JSON Schema object).",
                       param="text.format.schema")
    return {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.json_schema,
                                                   "strict": fmt.strict}}


def to_chat_request(req: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[ChatCompletionRequest,
                                                                                   list[dict[str, Any]]]:
    """(the chat request to run, this turn's input messages — what a later turn's history adds)."""
    turn = _input_messages(req.input)
    if not history and not turn:
        raise APIError("input is empty; send a string or at least one message item.", param="input")
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    fields: dict[str, Any] = {
        "model": req.model, "messages": system + history + turn, "stream": req.stream,
        "max_completion_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "tools": _tools(req.tools), "tool_choice": _tool_choice(req.tool_choice),
        "parallel_tool_calls": req.parallel_tool_calls, "response_format": _response_format(req),
        "seed": req.seed, "top_k": req.top_k, "user": req.user,
    }
    try:
        return ChatCompletionRequest.model_validate(fields), turn
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _where(first.get("loc", ()))
        raise APIError(f"Invalid value for '{where}': {first.get('msg')}.", param=where or None) from None


def _where(loc: tuple[Any, ...]) -> str:
    """A chat-request location in this request's names: ``("tools", 0, "function", "name")`` -> ``tools[0].name``."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (part == "function" and i >= 2 and loc[0] in ("tools", "tool_choice")):
            out += f".{part}" if out else str(part)
    return {"messages": "input", "max_completion_tokens": "max_output_tokens"}.get(out, out)


_PARAMS = (("response_format.json_schema.schema", "text.format.schema"), ("response_format", "text.format"),
           ("messages", "input"),
           ("max_tokens", "max_output_tokens"), ("tool_choice.function.name", "tool_choice.name"))


def remap_error(exc: APIError) -> APIError:
    """A chat-path 400 in Responses names (``text.format.schema``, ``max_output_tokens``, ``tools[i].parameters``)."""
    param = exc.param or ""
    for old, new in _PARAMS:
        if param.startswith(old):
            exc.param = new + param[len(old):]
            exc.message = exc.message.replace(old, new)
            return exc
    if param.startswith("tools[") and ".function." in param:
        exc.param = param.replace(".function.", ".")
        exc.message = exc.message.replace(".function.", ".")
    return exc


def output_items(content: str | None, calls: list[tuple[str, str]], incomplete: bool) -> list[dict[str, Any]]:
    """A reply as output items: one message (when it has text or no calls), then one item per call."""
    status = "incomplete" if incomplete else "completed"
    items: list[dict[str, Any]] = []
    if content or not calls:
        items.append(message_item(item_id("msg"), content or "", status))
    items.extend(function_call_item(item_id("fc"), item_id("call"), name, args, status) for name, args in calls)
    return items


def message_item(id_: str, text: str, status: str) -> dict[str, Any]:
    parts = [] if status == "in_progress" else [output_text_part(text)]
    return {"id": id_, "type": "message", "role": "assistant", "status": status, "content": parts}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(id_: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": id_, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def history_of(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as chat messages (one assistant message), for the next turn's history."""
    text = "".join(p["text"] for it in output if it["type"] == "message" for p in it["content"])
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in output if it["type"] == "function_call"]
    msg: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        msg["tool_calls"] = calls
    return [msg]


def responses_usage(prompt_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + output_tokens}


def response_object(req: ResponsesRequest, *, id_: str, created: int, model: str, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else \
        {"type": "text"}
    return {
        "id": id_, "object": "response", "created_at": created, "status": status,
        "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": model,
        "output": output, "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id, "store": req.store,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "text": {"format": fmt}, "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
        "truncation": "disabled", "usage": usage, "user": req.user, "metadata": req.metadata or {},
    }
