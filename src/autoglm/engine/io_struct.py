"""Every message that crosses the engine boundary, in one file.

Data flows one way: the HTTP layer turns an OpenAI request into an :class:`EngineRequest` (token ids +
:class:`SamplingParams`); the engine streams back :class:`RequestOutput` deltas (new token ids, the new
text, logprobs, and a finish reason on the last one). Nothing here imports torch or knows about HTTP.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "GuidedSpec",
    "SamplingParams",
    "EngineRequest",
    "TopLogprob",
    "TokenLogprob",
    "RequestOutput",
    "EngineStats",
    "FinishReason",
]

FinishReason = Literal["stop", "length", "abort", "timeout", "tool_calls"]


@dataclass(frozen=True)
class GuidedSpec:
    """A constraint on the output's shape, enforced token by token.

    kind:
      - ``"json_object"``: any JSON object (OpenAI's JSON mode).
      - ``"json_schema"``: a JSON value matching ``schema`` (a JSON Schema dict).
    Forced tool calls put the function name and a newline at the end of the prompt (GLM-4's tool-call format) and
    constrain only the arguments object.
    """

    kind: Literal["json_object", "json_schema", "regex", "choice", "grammar"]
    schema: dict[str, Any] | None = None
    # vLLM's extensions (the llguidance backend): the text matches ``regex`` / is one of ``choices``
    # / is a sentence of ``grammar`` (Lark or GBNF)
    regex: str | None = None
    choices: tuple[str, ...] | None = None
    grammar: str | None = None


@dataclass
class SamplingParams:
    """How to pick tokens. Defaults follow the OpenAI API (temperature 1, top_p 1).

    ``top_k`` 0 means disabled. ``logprobs`` None: no logprobs; 0: the chosen token's only;
    k > 0: also the k most likely alternatives. ``seed`` makes sampling reproducible for one request
    regardless of what else is in the batch.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    guided: GuidedSpec | None = None
    # token id -> value added to its logit before sampling (OpenAI's logit_bias; -100 bans, +100 forces)
    logit_bias: dict[int, float] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1


@dataclass
class EngineRequest:
    """One sequence to generate. ``n > 1`` is fanned out by the caller into several requests."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    # Wall-clock deadline (time.monotonic()); None means no per-request timeout.
    deadline: float | None = None
    # The prompt's images (autoglm.engine.vision.ImageInputs: pixels and grids); None for a text prompt.
    mm_inputs: Any = None


@dataclass
class TopLogprob:
    token_id: int
    token: str
    logprob: float
    bytes: list[int] | None = None  # the token's exact bytes (None: the UTF-8 of ``token``)


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)
    bytes: list[int] | None = None  # the token's exact bytes (None: the UTF-8 of ``token``)


@dataclass
class RequestOutput:
    """A delta for one request: what was produced since the previous output.

    The last output of a request has ``finished=True`` and a ``finish_reason``. ``text`` is already
    cut at a stop string (which is not included unless asked for). Timing fields are
    ``time.monotonic()`` values, for metrics.
    """

    request_id: str
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # cumulative
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended it


@dataclass
class EngineStats:
    """A snapshot for /metrics and /health."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    max_num_seqs: int = 0
    max_model_len: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefix_cache_hits: int = 0  # prompts that started from cached cells
    prefix_cache_tokens: int = 0  # prompt tokens those hits did not have to run
