"""Drive a running OpenAI-compatible server and time every streamed response.

:func:`run_benchmark` sends ``num_prompts`` requests, at most ``concurrency`` in flight, with the
official ``openai`` ``AsyncOpenAI`` client in streaming mode, and returns
:class:`~autoglm.bench.metrics.BenchmarkMetrics`. Before the timed run it sends one untimed warm-up
request, which also tells whether the server accepts ``stream_options={"include_usage": true}``;
token counts come from the server's ``usage`` when it sends one, otherwise from counting text chunks.

It knows nothing about which server it talks to (ours, ``transformers serve``, vLLM...): only the
OpenAI API. Errors a person can cause (bad numbers, unreachable URL, a model the server does not
serve) raise :class:`BenchError` before the timed run; errors of single requests during the run are
counted as failed requests.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from autoglm.bench.metrics import BenchmarkMetrics, RequestResult, calculate_metrics
from autoglm.bench.prompts import make_prompts
from autoglm.errors import AutoGLMError

__all__ = ["BenchConfig", "BenchError", "run_benchmark", "arun_benchmark"]


class BenchError(AutoGLMError):
    """A benchmark cannot start: bad settings, or the server cannot be used."""


@dataclass
class BenchConfig:
    base_url: str
    model: str
    num_prompts: int = 32
    concurrency: int = 4
    max_tokens: int = 64
    input_len: int = 128  # words per prompt
    api_key: str | None = None
    seed: int = 0
    endpoint: Literal["chat", "completions"] = "chat"
    ignore_eos: bool = False
    temperature: float = 0.0
    request_timeout: float = 600.0
    warmup: bool = True
    progress: bool = True
    prompts: list[str] | None = None  # overrides the synthetic prompts
    extra_body: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`BenchError` naming the first bad value and what to use instead."""
        url = urlparse(self.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise BenchError(f"--base-url {self.base_url!r} is not an http(s) URL; "
                             "use e.g. http://127.0.0.1:8000/v1")
        if not self.model:
            raise BenchError("--model is empty; pass the model name the server serves (see GET /v1/models)")
        for name, value in (("--num-prompts", self.num_prompts), ("--concurrency", self.concurrency),
                            ("--max-tokens", self.max_tokens), ("--input-len", self.input_len)):
            if not isinstance(value, int) or value < 1:
                raise BenchError(f"{name} must be a positive integer, got {value!r}")
        if self.endpoint not in ("chat", "completions"):
            raise BenchError(f"--endpoint must be 'chat' or 'completions', got {self.endpoint!r}")
        if self.temperature < 0:
            raise BenchError(f"temperature must be >= 0, got {self.temperature}")
        if self.prompts is not None and not self.prompts:
            raise BenchError("the prompt list is empty; pass at least one prompt")


def normalize_base_url(url: str) -> str:
    """Accept ``http://host:port`` as well as ``http://host:port/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _short(exc: BaseException) -> str:
    """One line: the exception type, its message and, for HTTP errors, the server's explanation."""
    text = str(exc)
    body = getattr(exc, "body", None)
    if body and str(body) not in text:
        text = f"{text} {body}"
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text[:300]}"


class _Runner:
    """One benchmark's client and request settings."""

    def __init__(self, cfg: BenchConfig):
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:  # pragma: no cover - openai is a declared extra
            raise BenchError("the benchmark needs the openai SDK: pip install 'autoglm[bench]'") from exc
        self.cfg = cfg
        self.client = AsyncOpenAI(base_url=normalize_base_url(cfg.base_url), api_key=cfg.api_key or "EMPTY",
                                  max_retries=0, timeout=cfg.request_timeout)
        self.include_usage = True

    def _kwargs(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        extra = dict(self.cfg.extra_body)
        if self.cfg.ignore_eos:
            extra["ignore_eos"] = True
        kw: dict[str, Any] = dict(model=self.cfg.model, max_tokens=max_tokens, temperature=self.cfg.temperature,
                                  stream=True)
        if extra:
            kw["extra_body"] = extra
        if self.include_usage:
            kw["stream_options"] = {"include_usage": True}
        if self.cfg.endpoint == "chat":
            kw["messages"] = [{"role": "user", "content": prompt}]
        else:
            kw["prompt"] = prompt
        return kw

    async def one(self, prompt: str, max_tokens: int, raise_errors: bool = False) -> RequestResult:
        """Send one streamed request and time it. Errors become a failed result unless ``raise_errors``."""
        result = RequestResult(success=False, prompt_tokens=len(prompt.split()))
        chat = self.cfg.endpoint == "chat"
        start = time.perf_counter()
        last = start
        chunks = 0
        try:
            create = self.client.chat.completions.create if chat else self.client.completions.create
            stream = await create(**self._kwargs(prompt, max_tokens))
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.choices:
                    choice = chunk.choices[0]
                    if chat:
                        delta = choice.delta
                        text = (delta.content or "") if delta is not None else ""
                        text = text or (getattr(delta, "reasoning_content", None) or "")
                    else:
                        text = choice.text or ""
                    if text:
                        if chunks == 0:
                            result.ttft = now - start
                        else:
                            result.itl.append(now - last)
                        last = now
                        chunks += 1
                usage = getattr(chunk, "usage", None)
                if usage is not None and usage.completion_tokens is not None:
                    result.output_tokens = int(usage.completion_tokens)
                    if usage.prompt_tokens:
                        result.prompt_tokens = int(usage.prompt_tokens)
                    result.usage_reported = True
            result.e2e = time.perf_counter() - start
            if not result.usage_reported:
                result.output_tokens = chunks
            if chunks == 0 and result.output_tokens == 0:
                raise RuntimeError("the stream ended without any generated text")
            if chunks == 0:  # tokens were generated but decoded to no visible text
                result.ttft = result.e2e
            result.success = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if raise_errors:
                raise
            result.error = _short(exc)
        return result

    async def probe(self, prompt: str) -> None:
        """Untimed warm-up request; learns whether ``stream_options`` is accepted; fails loudly."""
        import openai

        try:
            await self.client.models.list()
        except openai.APIConnectionError as exc:
            raise BenchError(f"cannot reach the server at {normalize_base_url(self.cfg.base_url)} ({_short(exc)}); "
                             "start it first or fix --base-url") from exc
        except openai.AuthenticationError as exc:
            raise BenchError("the server rejected the API key (401); pass a valid one with --api-key") from exc
        except openai.APIError:
            pass  # /models is optional for a benchmark; the completion request below decides
        if not self.cfg.warmup:
            return
        for attempt in range(2):
            try:
                await self.one(prompt, min(self.cfg.max_tokens, 16), raise_errors=True)
                return
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if attempt == 0 and "stream_options" in str(exc):
                    self.include_usage = False
                    continue
                hint = (" (the server may not accept ignore_eos; run without --ignore-eos)"
                        if self.cfg.ignore_eos and "ignore_eos" in _short(exc) else "")
                raise BenchError(f"the server rejected the warm-up request: {_short(exc)}{hint}") from exc
            except openai.APIConnectionError as exc:
                raise BenchError(f"cannot reach the server at {normalize_base_url(self.cfg.base_url)} "
                                 f"({_short(exc)}); start it first or fix --base-url") from exc
            except openai.AuthenticationError as exc:
                raise BenchError("the server rejected the API key (401); pass a valid one with --api-key") from exc
            except openai.NotFoundError as exc:
                raise BenchError(f"the server does not serve model {self.cfg.model!r} or this endpoint "
                                 f"({_short(exc)}); check --model against GET /v1/models") from exc
            except Exception as exc:
                raise BenchError(f"the warm-up request failed: {_short(exc)}") from exc


async def arun_benchmark(cfg: BenchConfig) -> BenchmarkMetrics:
    """Async form of :func:`run_benchmark`."""
    cfg.validate()
    prompts = cfg.prompts or make_prompts(cfg.num_prompts, cfg.input_len, seed=cfg.seed)
    prompts = [prompts[i % len(prompts)] for i in range(cfg.num_prompts)]
    runner = _Runner(cfg)
    try:
        await runner.probe(prompts[0])
        sem = asyncio.Semaphore(cfg.concurrency)
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="requests", unit="req", leave=False)

        async def limited(p: str) -> RequestResult:
            async with sem:
                r = await runner.one(p, cfg.max_tokens)
            if bar is not None:
                bar.update(1)
            return r

        start = time.perf_counter()
        try:
            results = await asyncio.gather(*(limited(p) for p in prompts))
        finally:
            if bar is not None:
                bar.close()
        duration = time.perf_counter() - start
    finally:
        await runner.client.close()
    return calculate_metrics(list(results), duration)


def run_benchmark(cfg: BenchConfig) -> BenchmarkMetrics:
    """Run one benchmark to completion and return its metrics (blocking)."""
    return asyncio.run(arun_benchmark(cfg))
