"""OpenAI-compatible request and response models (pydantic).

Requests validate ranges and types only (FastAPI turns a failure into a 400 OpenAI error object, see
:mod:`autoglm.api.errors`); checks that need the model (context length, tool names, token ids) happen
in :mod:`autoglm.api.convert`. Unknown request fields are ignored, like OpenAI's own server does for
fields it does not know. Responses are plain pydantic models dumped to JSON; this module knows
nothing about engines, tokenizers or HTTP.
"""
from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "MAX_N",
    "ChatMessage",
    "ChatCompletionRequest",
    "CompletionRequest",
    "ResponseFormat",
    "StreamOptions",
    "Usage",
    "ModelCard",
    "ModelList",
    "ResponsesRequest",
    "TokenizeRequest",
    "DetokenizeRequest",
    "EmbeddingRequest",
]

MAX_N = 16  # choices per request; each one is a separate sequence in the engine
MAX_TOP_LOGPROBS = 20


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


_SURROGATES = re.compile("[\ud800-\udfff]")


def find_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string, key or value, holding a lone UTF-16
    surrogate (JSON ``"\\ud800"``), which no UTF-8 text and no tokenizer can take; None if there is none."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _SURROGATES.search(item):
                return where or "(body)"
        elif isinstance(item, dict):
            for k, v in item.items():
                sub = f"{where}.{k}" if where else str(k)
                if isinstance(k, str) and _SURROGATES.search(k):
                    return sub
                stack.append((v, sub))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


class _TopRequest(_Request):
    """A whole request body: refuses text no tokenizer can take before any field is looked at."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        where = find_lone_surrogate(data)
        if where is not None:
            raise PydanticCustomError(
                "lone_surrogate", "contains a lone UTF-16 surrogate (such as \\ud800), which is not text; "
                "send valid Unicode", {"param": where})
        return data


class FunctionCall(_Request):
    name: str
    arguments: Union[str, dict[str, Any]] = "{}"


class ToolCall(_Request):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # A string or a list of content parts; part types are checked in convert (a 400 names them).
    content: Union[str, list[dict[str, Any]], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None


class FunctionDef(_Request):
    name: str = Field(min_length=1, max_length=64)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Request):
    name: str = "response"
    description: Optional[str] = None
    # OpenAI calls the field "schema"; pydantic reserves that name on BaseModel, hence the alias.
    json_schema: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingFields(_TopRequest):
    """Fields both endpoints share (OpenAI's plus vLLM-style extras)."""

    model: Optional[str] = None  # None: the first served model
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: Union[str, Annotated[list[str], Field(max_length=4)], None] = None
    seed: Optional[int] = Field(default=None, ge=-(2**63), le=2**63 - 1 - MAX_N)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: Optional[str] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # vLLM-style extras
    top_k: int = Field(default=0, ge=-1)  # 0 or -1: disabled
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    stop_token_ids: Optional[list[StrictInt]] = None
    include_stop_str_in_output: bool = False
    # token id (a JSON object's keys are strings) -> bias added to its logit, as OpenAI: -100..100
    logit_bias: Optional[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]]] = Field(default=None,
                                                                                          max_length=1024)
    # vLLM's guided decoding, as its OpenAI server takes them (extra_body): at most one of these
    guided_json: Union[dict[str, Any], str, None] = None
    guided_regex: Optional[str] = Field(default=None, max_length=16384)
    guided_choice: Optional[Annotated[list[str], Field(min_length=1, max_length=1024)]] = None
    guided_grammar: Optional[str] = Field(default=None, max_length=65536)
    # newer vLLM: structured_outputs={"json"|"regex"|"choice"|"grammar": ...}
    structured_outputs: Optional[dict[str, Any]] = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Tool]] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None


class CompletionRequest(_SamplingFields):
    # StrictInt: JSON true/false are not token ids
    prompt: Union[str, list[str], list[StrictInt], list[list[StrictInt]]]
    max_tokens: Optional[int] = Field(default=16, ge=1)  # OpenAI's legacy default
    logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = Field(default=None, ge=1, le=MAX_N)
    response_format: Optional[ResponseFormat] = None


class ResponsesTextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str = "response"
    description: Optional[str] = None
    json_schema: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ResponsesText(_Request):
    format: Optional[ResponsesTextFormat] = None


class ResponsesRequest(_TopRequest):
    """``POST /v1/responses``. ``input`` items and ``tools`` are checked item by item in
    :mod:`autoglm.api.responses_convert`, so that a 400 can name the item and its type."""

    model: Optional[str] = None
    input: Union[str, list[dict[str, Any]]] = Field(default_factory=list)
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    tools: Optional[list[dict[str, Any]]] = Field(default=None, max_length=128)
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    text: Optional[ResponsesText] = None
    previous_response_id: Optional[str] = Field(default=None, max_length=128)
    store: bool = True
    metadata: Optional[dict[str, str]] = Field(default=None, max_length=16)
    user: Optional[str] = None
    # extras (not in OpenAI's Responses API, as vLLM accepts them)
    seed: Optional[int] = Field(default=None, ge=-(2**63), le=2**63 - 1 - MAX_N)
    top_k: int = Field(default=0, ge=-1)


class TokenizeRequest(_TopRequest):
    """vLLM's ``POST /tokenize``: either ``prompt`` (text) or ``messages`` (rendered with the chat template)."""

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = Field(default=None, min_length=1)
    add_special_tokens: Optional[bool] = None  # None: True for a prompt, False for messages (vLLM's defaults)
    add_generation_prompt: bool = True
    return_token_strs: bool = False
    tools: Optional[list[Tool]] = None


class DetokenizeRequest(_TopRequest):
    model: Optional[str] = None
    tokens: list[StrictInt] = Field(max_length=1_000_000)


class EmbeddingRequest(_TopRequest):
    model: Optional[str] = None
    input: Union[str, Annotated[list[str], Field(min_length=1, max_length=2048)]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(default=None, ge=1)
    user: Optional[str] = None


# ---- responses -------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "autoglm"
    # Our extras: what the model is (the demo model says its replies are noise) and its limits.
    description: str = ""
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)
