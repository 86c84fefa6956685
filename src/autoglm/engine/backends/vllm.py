"""The vLLM backend (optional extra ``vllm``, CUDA): our OpenAI layer over vLLM's async engine.

``--engine vllm`` resolves the model like every backend (store, hub, local directory), lets the
precision planner (:mod:`autoglm.quantization.planner`) choose the precision for the GPU's free
memory, and then hands vLLM three numbers it would otherwise guess:

- ``quantization``: the first in-flight method the installed vLLM knows — int8: FP8 weights (1 byte
  per weight), else int8 weight-only, else bitsandbytes; int4: bitsandbytes 4-bit (vLLM releases that
  dropped it refuse int4 with a clear error: serve a GPTQ/AWQ checkpoint instead); 16-bit: none. A
  checkpoint that ships GPTQ/AWQ/FP8 weights keeps them (vLLM reads its ``quantization_config``);
- ``gpu_memory_utilization``: the planner's total (weights + KV cache for max-model-len x
  max-num-seqs + overhead) as a fraction of the GPU, plus a margin, so a model planned at INT4
  really leaves the rest of the GPU free instead of vLLM filling 90% of it with KV cache;
- ``max_model_len`` / ``max_num_seqs``: the planner's (lowered when it had to).

Requests cross as token ids (the API layer already applied the chat template) with vLLM
``SamplingParams`` built from ours, and come back as deltas converted to our
:class:`~autoglm.engine.io_struct.RequestOutput`. vLLM does its own batching, stop strings and
structured output (JSON mode / schema); this module only translates. The translation functions are
pure and unit-tested on CPU; the engine itself needs CUDA and ``pip install 'autoglm[vllm]'``
(tests marked ``gpu``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from autoglm.config import EngineSettings
from autoglm.engine.base import Engine, register_engine
from autoglm.engine.core import validate_request
from autoglm.engine.io_struct import (
    EngineRequest,
    EngineStats,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
)
from autoglm.engine.token_bytes import TokenBytes
from autoglm.errors import AutoGLMError, OverloadedError, UnsupportedError

__all__ = ["VllmEngine", "engine_args", "quantization_for", "sampling_kwargs", "DeltaConverter", "require_vllm"]

log = logging.getLogger("autoglm.engine")

# planner precision -> vLLM in-flight quantization methods, most preferred first (names change across releases)
_QUANTIZATION = {"int4": ("bitsandbytes",), "int8": ("fp8", "int8_per_channel_weight_only", "bitsandbytes")}
_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
_MEMORY_MARGIN = 1.15  # vLLM's activations and CUDA graphs on top of the planner's overhead
_MIN_UTILIZATION, _MAX_UTILIZATION = 0.05, 0.95


def require_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise UnsupportedError(
            "the vllm engine needs vLLM and a CUDA GPU: pip install 'autoglm[vllm]' (see the README's CUDA "
            f"install); or use --engine transformers ({exc})"
        ) from exc
    return vllm


def quantization_for(precision: str, methods: list[str] | None = None) -> str | None:
    """vLLM's ``quantization`` value for a planner precision; ``methods``: what the installed vLLM
    knows (``QUANTIZATION_METHODS``; None: assume the first choice exists)."""
    prefs = _QUANTIZATION.get(precision)
    if prefs is None:
        return None
    for method in prefs:
        if methods is None or method in methods:
            return method
    raise UnsupportedError(
        f"this vLLM cannot quantize to {precision} while loading (none of {', '.join(prefs)} among its methods): "
        "serve a pre-quantized GPTQ/AWQ checkpoint, pass --quantize bf16 on a larger GPU, or use --engine transformers"
    )


def engine_args(model_path: str, plan: Any, settings: EngineSettings, *, prequantized: bool = False,
                methods: list[str] | None = None) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` keyword arguments for ``plan`` (a :class:`~autoglm.quantization.planner.Plan`
    on a CUDA device); ``methods``: the installed vLLM's quantization methods (see :func:`quantization_for`)."""
    row = plan.chosen
    device = plan.device
    if device.kind != "cuda":
        raise UnsupportedError(f"the vllm engine runs on CUDA GPUs; this plan is for {device.kind}: "
                               "use --engine transformers or llamacpp")
    need = row.total_bytes * _MEMORY_MARGIN
    # vLLM measures utilization against the whole GPU; what others already hold is not ours to take
    already_used = max(0, device.total_bytes - device.free_bytes)
    fraction = (need + already_used) / device.total_bytes if device.total_bytes else _MAX_UTILIZATION
    fraction = round(min(_MAX_UTILIZATION, max(_MIN_UTILIZATION, fraction)), 3)
    args: dict[str, Any] = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "served_model_name": settings.name,
        "max_model_len": plan.max_model_len,
        "max_num_seqs": plan.max_num_seqs,
        "gpu_memory_utilization": fraction,
        "trust_remote_code": False,
        "enable_prefix_caching": True,
    }
    if not prequantized:
        quant = quantization_for(row.precision, methods)
        if quant is not None:
            args["quantization"] = quant
    dtype = _DTYPE.get(row.precision)
    if dtype is None:  # quantized or "none": activations in bf16 where the GPU has it
        dtype = "bfloat16" if getattr(device, "supports_bf16", True) else "float16"
    args["dtype"] = dtype
    if device.index:
        log.info("vllm: CUDA_VISIBLE_DEVICES selects the GPU for vLLM; --device cuda:%s is ignored", device.index)
    return args


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Our :class:`SamplingParams` as vLLM ``SamplingParams`` keyword arguments (structured output
    excluded: :func:`_structured` adds it in the form the installed vLLM knows)."""
    kw: dict[str, Any] = {
        "n": 1,  # the API layer fans n out into separate requests
        "max_tokens": params.max_tokens,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,  # -1: off in every vLLM (0 is refused by old ones)
        "min_p": params.min_p,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "repetition_penalty": params.repetition_penalty,
        "stop": list(params.stop) or None,
        "stop_token_ids": list(params.stop_token_ids) or None,
        "ignore_eos": params.ignore_eos,
        "include_stop_str_in_output": params.include_stop_str_in_output,
        "skip_special_tokens": True,
    }
    if params.seed is not None:
        kw["seed"] = params.seed
    if params.logprobs is not None:
        kw["logprobs"] = params.logprobs
    if params.logit_bias:
        kw["logit_bias"] = dict(params.logit_bias)
    return kw


def _structured(vllm: Any, params: SamplingParams) -> dict[str, Any]:
    guided = params.guided
    if guided is None:
        return {}
    spec: dict[str, Any] = {"json_object": True} if guided.kind == "json_object" else {"json": guided.schema or {}}
    if guided.kind in ("regex", "choice", "grammar"):  # vLLM's own extensions, passed through
        spec = {guided.kind: {"regex": guided.regex, "choice": list(guided.choices or ()),
                              "grammar": guided.grammar}[guided.kind]}
    sp_mod = vllm.sampling_params
    if hasattr(sp_mod, "StructuredOutputsParams"):  # vLLM >= 0.11
        return {"structured_outputs": sp_mod.StructuredOutputsParams(**spec)}
    if hasattr(sp_mod, "GuidedDecodingParams"):
        return {"guided_decoding": sp_mod.GuidedDecodingParams(**spec)}
    raise UnsupportedError("this vLLM has no structured output: upgrade vLLM for JSON mode")


class DeltaConverter:
    """Turns one request's vLLM outputs (``output_kind=DELTA``) into our :class:`RequestOutput` s."""

    def __init__(self, request: EngineRequest, token_text: Any, token_bytes: Any = None):
        self.request = request
        self.token_text = token_text  # token id -> its text (for logprobs)
        self.token_bytes = token_bytes  # token id -> its exact bytes (None: the UTF-8 of its text)
        self.num_output_tokens = 0
        self.first_token_time: float | None = None

    def convert(self, out: Any) -> RequestOutput:
        comp = out.outputs[0]
        ids = list(comp.token_ids or [])
        self.num_output_tokens += len(ids)
        if ids and self.first_token_time is None:
            self.first_token_time = time.monotonic()
        finished = bool(out.finished)
        reason = comp.finish_reason if finished else None
        if reason not in (None, "stop", "length"):
            reason = "abort" if reason == "abort" else "stop"
        return RequestOutput(
            request_id=self.request.request_id,
            token_ids=ids,
            text=comp.text or "",
            finished=finished,
            finish_reason=reason,
            logprobs=self._logprobs(ids, comp.logprobs),
            num_prompt_tokens=len(self.request.prompt_token_ids),
            num_output_tokens=self.num_output_tokens,
            arrival_time=self.request.arrival_time,
            first_scheduled_time=self.first_token_time,
            first_token_time=self.first_token_time,
            stop_reason=comp.stop_reason if finished else None,
        )

    def _logprobs(self, ids: list[int], entries: Any) -> list[TokenLogprob] | None:
        k = self.request.params.logprobs
        if k is None or entries is None:
            return None
        result = []
        for tid, entry in zip(ids, list(entries)[-len(ids):] if ids else []):
            chosen = entry.get(tid)
            ranked = sorted(entry.items(), key=lambda kv: getattr(kv[1], "rank", 0) or 0)
            top = [TopLogprob(t, self._text(t, lp), float(lp.logprob), self._bytes(t))
                   for t, lp in ranked if (lp.rank or 0) >= 1][:k]
            logprob = float(chosen.logprob) if chosen is not None else float("-inf")
            result.append(TokenLogprob(tid, self._text(tid, chosen), logprob, top, self._bytes(tid)))
        return result

    def _text(self, token_id: int, lp: Any) -> str:
        decoded = getattr(lp, "decoded_token", None) if lp is not None else None
        return decoded if decoded is not None else self.token_text(token_id)

    def _bytes(self, token_id: int) -> list[int] | None:
        return self.token_bytes(token_id) if self.token_bytes is not None else None


@register_engine("vllm")
class VllmEngine(Engine):
    """Serve through vLLM's ``AsyncLLMEngine`` (CUDA)."""

    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self.model_name = settings.name
        self.description = ""
        self.info: dict[str, Any] = {}
        self._engine: Any = None
        self._vllm: Any = None
        self._running: set[str] = set()
        self._token_text: dict[int, str] = {}
        self._token_bytes: Any = None
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    async def start(self) -> None:
        if self._engine is not None:
            return
        self._vllm = require_vllm()
        kwargs, tokenizer, plan, description = await asyncio.to_thread(self._prepare)
        for reason in plan.reasons:
            log.info("plan: %s", reason)
        log.info("vllm: %s", ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("model", "tokenizer")))
        args = self._vllm.AsyncEngineArgs(**kwargs)
        self._engine = self._vllm.AsyncLLMEngine.from_engine_args(args)
        self.tokenizer = tokenizer
        self._token_bytes = TokenBytes(tokenizer)
        self.max_model_len = plan.max_model_len
        self.max_num_seqs = plan.max_num_seqs
        from autoglm.engine.backends.transformers import eos_token_ids
        from transformers import AutoConfig

        self.eos_token_ids = eos_token_ids(kwargs["model"], AutoConfig.from_pretrained(kwargs["model"]), tokenizer)
        self.description = description
        self.info = {"path": kwargs["model"], "precision": plan.precision, "device": "cuda", "engine": "vllm",
                     "gpu_memory_utilization": kwargs["gpu_memory_utilization"], "reasons": list(plan.reasons)}

    def _prepare(self) -> tuple[dict[str, Any], Any, Any, str]:
        from transformers import AutoConfig, AutoTokenizer

        from autoglm.hub.resolve import resolve_model
        from autoglm.quantization import ModelArch, detect_device, plan_precision

        resolved = resolve_model(self.settings.model, self.settings)
        config = AutoConfig.from_pretrained(resolved.path)
        prequantized = getattr(config, "quantization_config", None) is not None
        device = detect_device("cuda" if self.settings.device in ("auto", "cpu") else self.settings.device)
        plan = plan_precision(ModelArch.from_config(config.get_text_config()), device,
                              requested="none" if prequantized else self.settings.quantize,
                              max_model_len=self.settings.max_model_len, max_num_seqs=self.settings.max_num_seqs)
        try:
            from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS as methods
        except ImportError:  # an older layout: trust the first choice
            methods = None
        kwargs = engine_args(str(resolved.path), plan, self.settings, prequantized=prequantized,
                             methods=list(methods) if methods is not None else None)
        description = getattr(resolved.spec, "description", "") or "" if resolved.spec is not None else ""
        return kwargs, AutoTokenizer.from_pretrained(resolved.path), plan, description

    @property
    def ready(self) -> bool:
        return self._engine is not None and not getattr(self._engine, "errored", False)

    def _text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        if self._engine is None:
            raise AutoGLMError("the engine is not started")
        validate_request(request, self.max_model_len, len(self.tokenizer))
        if len(self._running) >= self.settings.max_queue + self.max_num_seqs:
            raise OverloadedError(f"the server is busy: {len(self._running)} requests in flight; retry shortly",
                                  retry_after=1.0)
        return self._stream(request)

    async def _stream(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        vllm = self._vllm
        params = vllm.SamplingParams(
            **sampling_kwargs(request.params),
            **_structured(vllm, request.params),
            output_kind=vllm.sampling_params.RequestOutputKind.DELTA,
        )
        conv = DeltaConverter(request, self._text, self._token_bytes)
        rid = request.request_id
        self._running.add(rid)
        self.prompt_tokens_total += len(request.prompt_token_ids)
        finished = False
        try:
            stream = self._engine.generate({"prompt_token_ids": list(request.prompt_token_ids)}, params, rid)
            async for out in stream:
                result = conv.convert(out)
                self.generation_tokens_total += len(result.token_ids)
                finished = result.finished
                yield result
                if request.deadline is not None and time.monotonic() > request.deadline and not finished:
                    await self._engine.abort(rid)
                    yield RequestOutput(rid, [], "", finished=True, finish_reason="timeout",
                                        num_prompt_tokens=len(request.prompt_token_ids),
                                        num_output_tokens=conv.num_output_tokens)
                    finished = True
                    return
        finally:
            self._running.discard(rid)
            if not finished:  # the client went away (or we failed): free vLLM's KV blocks
                await self._engine.abort(rid)

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(num_running=len(self._running), max_num_seqs=getattr(self, "max_num_seqs", 0),
                           max_model_len=getattr(self, "max_model_len", 0),
                           prompt_tokens_total=self.prompt_tokens_total,
                           generation_tokens_total=self.generation_tokens_total)

    async def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()
