"""OpenAI requests -> engine requests, and engine outputs -> OpenAI responses and chunks.

Request side: render chat messages with the model's chat template, tokenize (client text as text,
see :mod:`autoglm.api.prompt`), check the context length and the size and shape of every JSON schema
(a malformed one is a 400 naming ``response_format.json_schema.schema`` or ``tools[i].function.parameters``), build :class:`~autoglm.engine.io_struct.SamplingParams` (guided JSON for response_format and
forced tool calls) and fan ``n`` choices out into ``n`` :class:`EngineRequest` s. Response side: pure
functions from accumulated :class:`ChoiceState` s or single deltas to OpenAI's JSON shapes, logprobs
included. Nothing here does I/O or knows about FastAPI; errors are :class:`~autoglm.api.errors.APIError`.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from autoglm.api.errors import APIError
from autoglm.api.limits import RequestLimits
from autoglm.api.prompt import check_prompt_chars, encode_chat, encode_text
from autoglm.api.schemas import MAX_N, ChatCompletionRequest, CompletionRequest, ResponseFormat
from autoglm.engine.io_struct import (
    EngineRequest,
    GuidedSpec,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)

__all__ = [
    "ChatPlan",
    "CompletionPlan",
    "ChoiceState",
    "build_chat_plan",
    "build_completion_plan",
    "fan_out",
    "chat_logprobs",
    "completion_logprobs",
    "new_id",
    "tool_call_id",
]

_MIN_LOGPROB = -9999.0  # JSON has no -inf


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def tool_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass
class ChatPlan:
    request_id: str
    created: int
    model: str
    prompt_token_ids: list[int]
    params: SamplingParams
    n: int
    forced_tool: str | None = None  # the name written into the prompt; output is its arguments
    tool_names: list[str] = field(default_factory=list)  # parse replies for calls to these
    logprobs: bool = False
    include_usage: bool = False
    parallel_tool_calls: bool = True  # False: a reply keeps only its first tool call
    mm_inputs: Any = None  # the images' engine inputs (autoglm.api.vision.attach_images); None: text only

    def requests(self) -> list[EngineRequest]:
        return fan_out(self.request_id, [self.prompt_token_ids], self.params, self.n, mm_inputs=self.mm_inputs)


@dataclass
class CompletionPlan:
    request_id: str
    created: int
    model: str
    prompts: list[list[int]]
    echo_texts: list[str]  # per prompt; "" unless echo
    params: SamplingParams
    n: int
    include_usage: bool = False

    def requests(self) -> list[EngineRequest]:
        return fan_out(self.request_id, self.prompts, self.params, self.n)


def fan_out(request_id: str, prompts: list[list[int]], params: SamplingParams, n: int,
            mm_inputs: Any = None) -> list[EngineRequest]:
    """One engine request per (prompt, choice); choice ``i`` of a seeded request uses ``seed + i``.

    The output index (OpenAI's ``choices[].index``) is ``prompt_index * n + i``; the engine request
    id is ``<request_id>-<index>``.
    """
    out: list[EngineRequest] = []
    for p, ids in enumerate(prompts):
        for i in range(n):
            seed = None if params.seed is None else params.seed + i
            choice_params = SamplingParams(**{**params.__dict__, "seed": seed})
            out.append(EngineRequest(f"{request_id}-{p * n + i}", list(ids), choice_params, mm_inputs=mm_inputs))
    return out


# ---- request side ----------------------------------------------------------------------------


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind != "text":
            raise APIError(
                f"{where}.content[{j}] has type {kind!r}; this server accepts only 'text' content "
                "parts (images, audio and files are not supported by GLM text models).",
                param=f"{where}.content[{j}].type", code="unsupported_content_type")
        text = part.get("text")
        if not isinstance(text, str):
            raise APIError(f"{where}.content[{j}] is a 'text' part without a string 'text' field.",
                           param=f"{where}.content[{j}].text")
        texts.append(text)
    return "".join(texts)


def _messages_for_template(req: ChatCompletionRequest, images: bool = False) -> list[dict[str, Any]]:
    from autoglm.api.vision import template_content

    out = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        msg: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": template_content(m.content, where) if images else _content_text(m.content, where),
        }
        if m.role == "assistant" and m.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id or tool_call_id(), "type": "function",
                 "function": {"name": c.function.name, "arguments": _arguments_text(c.function.arguments)}}
                for c in m.tool_calls
            ]
        if m.role == "tool":
            msg["tool_call_id"] = m.tool_call_id
        if m.name:
            msg["name"] = m.name
        out.append(msg)
    return out


def _arguments_text(arguments: str | dict[str, Any]) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _resolve_tool_choice(req: ChatCompletionRequest) -> tuple[str | None, list[str], list[dict] | None]:
    """(forced tool name, names to parse for, tools for the template)."""
    tools = req.tools or []
    choice = req.tool_choice
    if not tools:
        if choice not in (None, "none", "auto"):
            raise APIError("tool_choice was set but no tools were given; pass 'tools' or drop 'tool_choice'.",
                           param="tool_choice")
        return None, [], None
    names = [t.function.name for t in tools]
    if choice == "none":
        return None, [], None
    template_tools = [t.model_dump(exclude_none=True) for t in tools]
    if choice is None or choice == "auto":
        return None, names, template_tools
    if choice == "required":
        # One tool: force it. Several: GLM-4 picks the name itself; we parse its reply as for "auto".
        return (names[0] if len(names) == 1 else None), names, template_tools
    wanted = choice.function.name
    if wanted not in names:
        raise APIError(f"tool_choice names function {wanted!r}, which is not among the tools given "
                       f"({', '.join(names)}).", param="tool_choice.function.name")
    return wanted, names, template_tools


RESPONSE_SCHEMA_PARAM = "response_format.json_schema.schema"


_VLLM_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def _vllm_guided(req: Any, limits: RequestLimits) -> GuidedSpec | None:
    """vLLM's ``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar`` (or its newer
    ``structured_outputs`` object) as a GuidedSpec; a 400 naming the field when unusable."""
    given = {k: getattr(req, k, None) for k in _VLLM_GUIDED if getattr(req, k, None) is not None}
    so = getattr(req, "structured_outputs", None)
    if so:
        for key, value in so.items():
            if key in ("json", "regex", "choice", "grammar") and value is not None:
                given[f"guided_{key}"] = value
    if not given:
        return None
    if len(given) > 1:
        raise APIError(f"give one of {', '.join(sorted(given))}, not several.", param=sorted(given)[1])
    (field_name, value), = given.items()
    if field_name == "guided_json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise APIError("guided_json is not JSON; give a JSON Schema object.", param="guided_json") from None
        if not isinstance(value, dict):
            raise APIError("guided_json must be a JSON Schema object.", param="guided_json")
        spec = GuidedSpec(kind="json_schema", schema=value)
        check_schema(value, "guided_json", limits)
        return spec
    if field_name == "guided_choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise APIError("guided_choice must be a non-empty list of non-empty strings.", param="guided_choice")
        spec = GuidedSpec(kind="choice", choices=tuple(value))
    elif not isinstance(value, str) or not value:
        raise APIError(f"{field_name} must be a non-empty string.", param=field_name)
    elif field_name == "guided_regex":
        spec = GuidedSpec(kind="regex", regex=value)
    else:
        spec = GuidedSpec(kind="grammar", grammar=value)
    try:
        from autoglm.engine.guided import validate_spec
    except ImportError:
        return spec
    from autoglm.errors import InvalidRequestError

    try:
        validate_spec(spec)
    except InvalidRequestError as exc:
        raise APIError(f"Invalid {field_name}: {exc}", param=field_name) from None
    except ValueError as exc:  # no backend can take it (llguidance missing)
        raise APIError(f"{field_name} cannot be served here: {exc}", param=field_name) from None
    return spec


def _guided(fmt: ResponseFormat | None, limits: RequestLimits, req: Any = None) -> GuidedSpec | None:
    extra = _vllm_guided(req, limits) if req is not None else None
    if extra is not None:
        if fmt is not None and fmt.type != "text":
            raise APIError("response_format and a guided_* field both constrain the output; give one.",
                           param="response_format")
        return extra
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return GuidedSpec(kind="json_object")
    if fmt.json_schema is None or fmt.json_schema.json_schema is None:
        raise APIError("response_format type 'json_schema' needs json_schema.schema (a JSON Schema object).",
                       param="response_format.json_schema")
    spec = GuidedSpec(kind="json_schema", schema=fmt.json_schema.json_schema)
    check_schema(spec.schema, RESPONSE_SCHEMA_PARAM, limits)
    return spec


def check_schema(schema: Any, param: str, limits: RequestLimits) -> None:
    """400 naming ``param`` when the schema is too large or not one guided decoding can use."""
    size = len(json.dumps(schema, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > limits.max_schema_bytes:
        raise APIError(f"The JSON schema in '{param}' is {size} bytes; this server accepts at most "
                       f"{limits.max_schema_bytes} bytes per schema. Simplify it.", param=param,
                       code="schema_too_large")
    try:
        from autoglm.engine.guided import validate_schema
    except ImportError:  # guided decoding not in this build: the engine will say so
        return
    from autoglm.errors import InvalidRequestError

    try:
        validate_schema(schema)
    except InvalidRequestError as exc:
        raise APIError(f"Invalid JSON schema in '{param}': {exc}", param=param, code="invalid_schema") from None


def _check_context(engine: Any, prompt_len: int, max_tokens: int | None, what: str) -> int:
    limit = int(engine.max_model_len)
    if max_tokens is None:
        if prompt_len >= limit:
            raise APIError(
                f"This model's maximum context length is {limit} tokens. However, your {what} resulted in "
                f"{prompt_len} tokens. Please reduce the length of the {what}.",
                param="messages" if what == "messages" else "prompt", code="context_length_exceeded")
        return limit - prompt_len
    if prompt_len + max_tokens > limit:
        raise APIError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the {what}, {max_tokens} in the completion). "
            f"Please reduce the length of the {what} or completion (max_tokens).",
            param="messages" if what == "messages" else "prompt", code="context_length_exceeded")
    return max_tokens


def _check_guided_budget(guided: GuidedSpec | None, max_tokens: int, param: str) -> None:
    if guided is None:
        return
    try:
        from autoglm.engine.guided import min_tokens_needed
    except ImportError:  # guided decoding not installed in this build: the engine will say so
        return
    from autoglm.errors import InvalidRequestError

    try:
        needed = int(min_tokens_needed(guided))
    except InvalidRequestError as exc:
        raise APIError(f"Invalid JSON schema in '{param}': {exc}", param=param, code="invalid_schema") from None
    if max_tokens < needed:
        raise APIError(f"max_tokens={max_tokens} is too small for the requested JSON output, which needs at "
                       f"least {needed} tokens; raise max_tokens.", param="max_tokens")


def _stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(s == "" for s in stops):
        raise APIError("stop sequences must be non-empty strings.", param="stop")
    return stops


def _logit_bias(bias: dict[str, float] | None, vocab: int) -> dict[int, float] | None:
    """OpenAI's ``{"token id": bias}`` as ``{id: bias}``; a 400 naming a key that is not a token id."""
    if not bias:
        return None
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < vocab or str(token) != key.strip():
            raise APIError(f"logit_bias key {key[:40]!r} is not a token id of this model (0..{vocab - 1}).",
                           param="logit_bias")
        out[token] = float(value)
    return out


def _sampling(req: Any, max_tokens: int, logprobs: int | None, guided: GuidedSpec | None,
              vocab: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        top_k=max(0, req.top_k),
        min_p=req.min_p,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        stop=_stop_list(req.stop),
        stop_token_ids=list(req.stop_token_ids or []),
        ignore_eos=req.ignore_eos,
        include_stop_str_in_output=req.include_stop_str_in_output,
        logprobs=logprobs,
        guided=guided,
        logit_bias=_logit_bias(getattr(req, "logit_bias", None), vocab),
    )


def _render(engine: Any, messages: list[dict], tools: list[dict] | None) -> str:
    try:
        return engine.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                    tokenize=False)
    except Exception as exc:  # jinja raise_exception / TemplateError: the messages are at fault
        raise APIError(f"The chat template of this model could not render the messages: {exc}",
                       param="messages") from exc


def _client_strings(messages: list[dict[str, Any]], tools: list[dict] | None) -> list[tuple[str, str]]:
    """Every client-supplied string the template writes, as (param, text), in template order."""
    out: list[tuple[str, str]] = []
    for t_i, tool in enumerate(tools or []):
        fn = tool.get("function") or {}
        out.append((f"tools[{t_i}].function.name", str(fn.get("name") or "")))
        out.append((f"tools[{t_i}].function.description", str(fn.get("description") or "")))
    for i, m in enumerate(messages):
        out.append((f"messages[{i}].name", str(m.get("name") or "")))
        content = m.get("content") or ""
        if isinstance(content, list):  # a vision model's parts: the text parts are the client's strings
            out += [(f"messages[{i}].content[{j}].text", p["text"]) for j, p in enumerate(content) if "text" in p]
        else:
            out.append((f"messages[{i}].content", content))
        for j, call in enumerate(m.get("tool_calls") or []):
            out.append((f"messages[{i}].tool_calls[{j}].function.name", call["function"]["name"]))
            out.append((f"messages[{i}].tool_calls[{j}].function.arguments", call["function"]["arguments"]))
    return out


def build_chat_plan(engine: Any, req: ChatCompletionRequest, limits: RequestLimits | None = None,
                    images: list[Any] | None = None) -> ChatPlan:
    """Blocking (template, tokenizer, schema compilation): run it in a worker thread. ``images``: the
    request's decoded images (:func:`autoglm.api.vision.load_images`), None for a text request."""
    limits = limits or RequestLimits()
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError("top_logprobs requires logprobs=true.", param="top_logprobs")
    forced, tool_names, template_tools = _resolve_tool_choice(req)
    for i, tool in enumerate(req.tools or []):
        if tool.function.parameters is not None:
            check_schema(tool.function.parameters, f"tools[{i}].function.parameters", limits)
    guided = _guided(req.response_format, limits, req)
    guided_param = RESPONSE_SCHEMA_PARAM
    messages = _messages_for_template(req, images=images is not None)
    text = _render(engine, messages, template_tools)
    if forced is not None:
        # GLM-4 writes a call as "<|assistant|>{name}\n{arguments}": we write the name, it writes the rest.
        if text.endswith("<|assistant|>\n"):
            text = text[:-1]
        text += f"{forced}\n"
        params_schema = next(t["function"].get("parameters") for t in template_tools or []
                             if t["function"]["name"] == forced)
        guided = GuidedSpec(kind="json_schema", schema=params_schema or {"type": "object"})
        guided_param = f"tools[{tool_names.index(forced)}].function.parameters"
        tool_names = []
    check_prompt_chars(engine.tokenizer, text, int(engine.max_model_len), "messages", "messages")
    client = _client_strings(messages, template_tools)
    if forced is not None:
        client.append(("tool_choice.function.name", forced))
    ids = encode_chat(engine.tokenizer, text, client, allow_control_tokens=limits.allow_control_tokens)
    mm_inputs = None
    if images is not None:
        from autoglm.api.vision import attach_images

        ids, mm_inputs = attach_images(engine, ids, images)
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = _check_context(engine, len(ids), requested, "messages")
    _check_guided_budget(guided, max_tokens, guided_param)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return ChatPlan(
        request_id=new_id("chatcmpl"),
        created=int(time.time()),
        model=engine.model_name,
        prompt_token_ids=ids,
        params=_sampling(req, max_tokens, logprobs, guided, len(engine.tokenizer)),
        n=req.n,
        forced_tool=forced,
        tool_names=tool_names,
        logprobs=req.logprobs,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        parallel_tool_calls=req.parallel_tool_calls is not False,
        mm_inputs=mm_inputs,
    )


def _prompts(engine: Any, prompt: Any, limits: RequestLimits) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError("prompt is empty; send a string, a list of strings or a list of token ids.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    vocab = len(engine.tokenizer)
    limit = int(engine.max_model_len)
    out = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            check_prompt_chars(engine.tokenizer, p, limit, "prompt", "prompt")
            ids = encode_text(engine.tokenizer, p, allow_control_tokens=limits.allow_control_tokens)
        else:
            if len(p) >= limit:
                raise APIError(f"This model's maximum context length is {limit} tokens. However, prompt[{i}] "
                               f"has {len(p)} tokens. Please reduce the length of the prompt.", param="prompt",
                               code="context_length_exceeded")
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise APIError(f"prompt[{i}] has token id {bad[0]}, outside this model's vocabulary "
                               f"(0..{vocab - 1}).", param="prompt")
            ids = list(p)
        if not ids:
            raise APIError(f"prompt[{i}] is empty; it must contain at least one token.", param="prompt")
        out.append(ids)
    return out


def build_completion_plan(engine: Any, req: CompletionRequest, limits: RequestLimits | None = None) -> CompletionPlan:
    """Blocking (tokenizer, schema compilation): run it in a worker thread."""
    limits = limits or RequestLimits()
    if req.suffix:
        raise APIError("suffix (insertion) is not supported by this server; drop it.", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError(f"best_of={req.best_of} is not supported; only best_of equal to n (or unset).",
                       param="best_of")
    if req.echo and req.logprobs is not None:
        raise APIError("echo with logprobs (prompt logprobs) is not supported; drop one of them.", param="echo")
    guided = _guided(req.response_format, limits, req)
    prompts = _prompts(engine, req.prompt, limits)
    if len(prompts) * req.n > 4 * MAX_N:
        raise APIError(f"{len(prompts)} prompts x n={req.n} is more than {4 * MAX_N} choices; split the request.",
                       param="n")
    longest = max(len(p) for p in prompts)
    max_tokens = _check_context(engine, longest, req.max_tokens, "prompt")
    _check_guided_budget(guided, max_tokens, RESPONSE_SCHEMA_PARAM if guided is None or guided.kind in
                         ("json_object", "json_schema") else "max_tokens")
    echo = [engine.tokenizer.decode(p) if req.echo else "" for p in prompts]
    return CompletionPlan(
        request_id=new_id("cmpl"),
        created=int(time.time()),
        model=engine.model_name,
        prompts=prompts,
        echo_texts=echo,
        params=_sampling(req, max_tokens, req.logprobs, guided, len(engine.tokenizer)),
        n=req.n,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
    )


# ---- response side ---------------------------------------------------------------------------


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0

    def add(self, out: RequestOutput) -> None:
        self.text += out.text
        self.token_ids.extend(out.token_ids)
        if out.logprobs:
            self.logprobs.extend(out.logprobs)
        self.num_prompt_tokens = out.num_prompt_tokens or self.num_prompt_tokens
        self.num_output_tokens = max(self.num_output_tokens, out.num_output_tokens, len(self.token_ids))
        if out.finished:
            self.finish_reason = out.finish_reason or "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _lp(item: TokenLogprob | TopLogprob) -> dict[str, Any]:
    raw = item.bytes if item.bytes is not None else list(item.token.encode("utf-8"))
    return {"token": item.token, "logprob": max(float(item.logprob), _MIN_LOGPROB), "bytes": raw}


def chat_logprobs(items: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [{**_lp(t), "top_logprobs": [_lp(a) for a in t.top]} for t in items]}


def completion_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """OpenAI's legacy shape; ``offset`` is where the first token starts in the choice's text."""
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [max(float(t.logprob), _MIN_LOGPROB) for t in items],
        "top_logprobs": [{a.token: max(float(a.logprob), _MIN_LOGPROB) for a in t.top} for t in items],
        "text_offset": offsets,
    }


def _tool_call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": tool_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


def final_finish_reason(reason: str | None, made_tool_calls: bool) -> str:
    reason = reason or "stop"
    return "tool_calls" if made_tool_calls and reason == "stop" else reason


def _chat_message(plan: ChatPlan, text: str) -> tuple[dict[str, Any], bool]:
    from autoglm.api.tool_parser import parse_tool_calls

    if plan.forced_tool is not None:
        return {"role": "assistant", "content": None,
                "tool_calls": [_tool_call(plan.forced_tool, text)]}, True
    if plan.tool_names:
        content, calls = parse_tool_calls(text, plan.tool_names)
        if not plan.parallel_tool_calls:
            calls = calls[:1]
        if calls:
            return {"role": "assistant", "content": content,
                    "tool_calls": [_tool_call(c.name, c.arguments) for c in calls]}, True
    return {"role": "assistant", "content": text}, False


def total_usage(states: list[ChoiceState], prompt_tokens: int) -> dict[str, int]:
    return usage(prompt_tokens, sum(s.num_output_tokens for s in states))


def chat_response(plan: ChatPlan, states: list[ChoiceState]) -> dict[str, Any]:
    choices = []
    for st in states:
        message, called = _chat_message(plan, st.text)
        choices.append({
            "index": st.index,
            "message": message,
            "logprobs": chat_logprobs(st.logprobs) if plan.logprobs else None,
            "finish_reason": final_finish_reason(st.finish_reason, called),
        })
    return {
        "id": plan.request_id, "object": "chat.completion", "created": plan.created, "model": plan.model,
        "choices": choices,
        "usage": total_usage(states, len(plan.prompt_token_ids)),
    }


def chat_chunk(plan: ChatPlan, choices: list[dict[str, Any]], usage_: dict[str, int] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": plan.request_id, "object": "chat.completion.chunk", "created": plan.created,
                             "model": plan.model, "choices": choices}
    if plan.include_usage:
        chunk["usage"] = usage_
    return chunk


def completion_prompt_tokens(plan: CompletionPlan) -> int:
    return sum(len(p) for p in plan.prompts)


def completion_response(plan: CompletionPlan, states: list[ChoiceState]) -> dict[str, Any]:
    choices = []
    for st in states:
        echo = plan.echo_texts[st.index // plan.n]
        choices.append({
            "index": st.index,
            "text": echo + st.text,
            "logprobs": completion_logprobs(st.logprobs, len(echo)) if plan.params.logprobs is not None else None,
            "finish_reason": st.finish_reason or "stop",
        })
    return {
        "id": plan.request_id, "object": "text_completion", "created": plan.created, "model": plan.model,
        "choices": choices,
        "usage": total_usage(states, completion_prompt_tokens(plan)),
    }


def completion_chunk(plan: CompletionPlan, choices: list[dict[str, Any]],
                     usage_: dict[str, int] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": plan.request_id, "object": "text_completion", "created": plan.created,
                             "model": plan.model, "choices": choices}
    if plan.include_usage:
        chunk["usage"] = usage_
    return chunk
