"""The Responses API in chat terms: a ``/v1/responses`` request -> a chat request, a reply -> output items.

Request side: ``instructions`` become a system message; ``input`` (a string, or items: messages with
``input_text``/``output_text``/``input_image`` parts, ``function_call`` and ``function_call_output``)
becomes chat messages after the stored history of ``previous_response_id``; function ``tools``,
``tool_choice``, ``parallel_tool_calls`` and ``text.format`` map to their chat fields, so templating, tool
parsing and guided JSON are the chat path's own. An ``input_image`` part (``image_url``: a data: URL or
an http(s) URL) becomes the chat path's ``image_url`` part, so the image limits, fetching, private-address
refusal and the 400 for a text-only model are :mod:`autoglm.api.vision`'s; :func:`remap_error` names the
Responses part in such a 400 (``input[i].content[j].image_url``). What has no chat equivalent (an image by
``file_id``, files, audio, hosted tools such as web search, item references) is a 400 naming the item.
``reasoning`` items are dropped: a GLM model reads no reasoning it did not write in this turn.

Response side: pure functions from the reply text (or streamed items) to the Response object
(``object: "response"``, ``output`` items, ``usage`` in input/output tokens).

Knows the OpenAI Responses shapes and :class:`~autoglm.api.schemas.ChatCompletionRequest`; not
engines, HTTP or where stored responses live.
"""
from __future__ import annotations

import re
import secrets
import time
from typing import Any, NamedTuple

from pydantic import ValidationError

from autoglm.api.errors import APIError
from autoglm.api.schemas import ChatCompletionRequest, ResponsesRequest

__all__ = ["ChatTurn", "to_chat_request", "history_of", "output_items", "response_object", "responses_usage",
           "item_id", "remap_error"]

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_ROLES = frozenset({"user", "system", "developer", "assistant"})
_DETAILS = ("auto", "low", "high")


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _part_text(part: Any, where: str) -> str:
    """The text of one text (or refusal) content part at ``where``; a 400 for any other part."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "refusal":
        return str(part.get("refusal") or "")
    if kind not in _TEXT_PARTS:
        raise APIError(f"{where} has type {kind!r}; this server accepts text parts ('input_text', 'output_text') "
                       "and, in a message for a vision model, 'input_image' parts; it reads no audio or files.",
                       param=f"{where}.type", code="unsupported_content_type")
    text = part.get("text")
    if not isinstance(text, str):
        raise APIError(f"{where} is a text part without a string 'text'.", param=f"{where}.text")
    return text


def _text_of(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError(f"{where}.content must be a string or a list of content parts.", param=f"{where}.content")
    return "".join(_part_text(part, f"{where}.content[{j}]") for j, part in enumerate(content))


def _image_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An ``input_image`` part as the chat path's ``image_url`` part (the URL itself is checked there)."""
    if part.get("file_id") is not None and part.get("image_url") is None:
        raise APIError(f"{where} names an image by file_id; this server has no Files API, so file ids are not "
                       "supported. Send image_url as a data: URL (data:image/png;base64,...) or an http(s) URL.",
                       param=f"{where}.file_id", code="file_id_not_supported")
    url = part.get("image_url")
    if isinstance(url, dict):  # the chat shape {"url": ...}, sent here by mistake: accepted
        url = url.get("url")
    if not isinstance(url, str) or not url:
        raise APIError(f"{where} is an 'input_image' part without an 'image_url' string (a data: URL or an "
                       "http(s) URL).", param=f"{where}.image_url")
    detail = part.get("detail")
    if detail is not None and detail not in _DETAILS:
        raise APIError(f"{where}.detail is {detail!r}; use one of {', '.join(_DETAILS)}.", param=f"{where}.detail")
    return {"type": "image_url", "image_url": {"url": url, **({"detail": detail} if detail else {})}}


def _content_of(content: Any, where: str) -> Any:
    """A message's content for the chat request: its text (as before images), or, when it has an
    ``input_image`` part, the chat path's list of ``text`` and ``image_url`` parts in the same order."""
    if not isinstance(content, list) or not any(isinstance(p, dict) and p.get("type") == "input_image"
                                                for p in content):
        return _text_of(content, where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "input_image":
            parts.append(_image_part(part, f"{where}.content[{j}]"))
        else:  # one text part at the same index, so a chat 400 at content[j] names this part
            parts.append({"type": "text", "text": _part_text(part, f"{where}.content[{j}]")})
    return parts


def _input_messages(items: str | list[dict[str, Any]], sources: list[str]) -> list[dict[str, Any]]:
    """``input`` as chat message dicts (the shape of :class:`~autoglm.api.schemas.ChatMessage`); appends
    to ``sources`` the input item each message comes from (``input[i]``, ``input`` for a string)."""
    if isinstance(items, str):
        sources.append("input")
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
            out.append({"role": role, "content": _content_of(item.get("content"), where)})
            sources.append(where)
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
                sources.append(where)
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise APIError(f"{where} (function_call_output) needs a string 'call_id'.", param=f"{where}.call_id")
            text = output if isinstance(output, str) else _text_of(output, where)
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
            sources.append(where)
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


class ChatTurn(NamedTuple):
    """A Responses request in chat terms."""

    chat: ChatCompletionRequest  # the chat request to run
    turn: list[dict[str, Any]]  # this turn's input messages: what a later turn's history adds
    sources: list[str]  # per chat message, where it came from: instructions, previous_response_id, input[i]


def to_chat_request(req: ResponsesRequest, history: list[dict[str, Any]]) -> ChatTurn:
    """The chat request of ``req`` after ``history`` (see :class:`ChatTurn`); a 400 naming the item for
    anything the chat path has no equivalent of."""
    turn_sources: list[str] = []
    turn = _input_messages(req.input, turn_sources)
    if not history and not turn:
        raise APIError("input is empty; send a string or at least one message item.", param="input")
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    sources = ["instructions"] * len(system) + ["previous_response_id"] * len(history) + turn_sources
    fields: dict[str, Any] = {
        "model": req.model, "messages": system + history + turn, "stream": req.stream,
        "max_completion_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "tools": _tools(req.tools), "tool_choice": _tool_choice(req.tool_choice),
        "parallel_tool_calls": req.parallel_tool_calls, "response_format": _response_format(req),
        "seed": req.seed, "top_k": req.top_k, "user": req.user,
    }
    try:
        return ChatTurn(ChatCompletionRequest.model_validate(fields), turn, sources)
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
_MESSAGE_PATH = re.compile(r"messages\[(\d+)\]((?:\.[A-Za-z_]+|\[\d+\])*)")
_IMAGE_URL = re.compile(r"\.content\[\d+\]\.image_url\.url")


def _input_path(match: re.Match[str], sources: list[str], *, in_text: bool) -> str | None:
    """A chat path (``messages[k].content[j].image_url.url``) as this request's name for it, or None when
    ``sources`` does not say where message ``k`` came from."""
    k, rest = int(match.group(1)), match.group(2)
    if k >= len(sources):
        return None
    source = sources[k]
    if source == "input":  # input was a string: it has no parts
        return source
    if source.startswith("input["):
        if _IMAGE_URL.fullmatch(rest):  # a Responses input_image has the URL itself as image_url
            rest = rest[: -len(".url")]
        return source + ("" if rest.startswith(".tool_calls") else rest)
    # the instructions, or a message of the stored conversation
    if source == "previous_response_id" and in_text:
        return f"{match.group(0)} of the conversation continued by previous_response_id"
    return source


def remap_error(exc: APIError, sources: list[str] | None = None) -> APIError:
    """A chat-path 400 in Responses names: a message's part as the input item's (``input[i].content[j]``,
    ``input[i].content[j].image_url``) when ``sources`` (:attr:`ChatTurn.sources`) says where each chat
    message came from; ``text.format.schema``, ``max_output_tokens``, ``tools[i].parameters``."""
    param = exc.param or ""
    if "'image_url' part" in exc.message or "image_url part" in exc.message:  # the client sent input_image parts
        exc.message = exc.message.replace("'image_url' part", "'input_image' part").replace(
            "image_url part", "input_image part")
    found = _MESSAGE_PATH.fullmatch(param)
    mapped = _input_path(found, sources, in_text=False) if found and sources else None
    if mapped is not None:
        exc.param = mapped
        exc.message = _MESSAGE_PATH.sub(lambda m: _input_path(m, sources, in_text=True) or m.group(0), exc.message)
        return exc
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
