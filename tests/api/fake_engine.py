"""A scripted engine for unit tests of the HTTP layer (a fake at the engine boundary only).

It has a real transformers fast tokenizer (byte-level, GLM-4 special tokens, the demo's GLM-4 chat
template) and "generates" a scripted reply token by token, honouring max_tokens, stop strings and
logprobs the way the engine contract says. It records the requests it got and which were aborted.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable

from autoglm.engine.base import Engine
from autoglm.engine.io_struct import (
    EngineRequest,
    EngineStats,
    RequestOutput,
    TokenLogprob,
    TopLogprob,
)
from autoglm.errors import OverloadedError

SPECIALS = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]


def make_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from autoglm.hub.demo import chat_template

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", chat_template=chat_template())


_TOKENIZER: Any = None


def shared_tokenizer() -> Any:
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = make_tokenizer()
    return _TOKENIZER


class FakeEngine(Engine):
    def __init__(self, name: str = "fake", reply: str | Callable[[EngineRequest], str] = "Hello there, friend.",
                 max_model_len: int = 1024, max_running: int = 100, delay: float = 0.0):
        self.model_name = name
        self.tokenizer = shared_tokenizer()
        self.max_model_len = max_model_len
        self.eos_token_ids = [0]
        self.description = "a scripted test engine"
        self.reply = reply
        self.max_running = max_running
        self.delay = delay
        self.requests: list[EngineRequest] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self.started = False
        self.fail_with: BaseException | None = None

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.started = False

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(num_running=len(self.running), max_num_seqs=self.max_running,
                           max_model_len=self.max_model_len)

    async def generate(self, request: EngineRequest) -> AsyncIterator[RequestOutput]:
        if len(self.running) >= self.max_running:
            raise OverloadedError("queue full", retry_after=2.5)
        if self.fail_with is not None:
            raise self.fail_with
        self.requests.append(request)
        self.running.add(request.request_id)
        finished = False
        try:
            reply = self.reply(request) if callable(self.reply) else self.reply
            p = request.params
            cuts = [reply.index(s) for s in p.stop if s in reply]
            if cuts:  # a real engine holds text back until it knows it is not a stop string
                reply = reply[:min(cuts)]
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            n_out = 0
            for i, tid in enumerate(ids):
                await asyncio.sleep(self.delay)
                piece = self.tokenizer.decode([tid])
                n_out += 1
                reason = None
                if i == len(ids) - 1:
                    reason = "stop"
                elif n_out >= p.max_tokens:
                    reason = "length"
                lps = None
                if p.logprobs is not None:
                    top = [TopLogprob(tid, piece, -0.25)] + [
                        TopLogprob(7 + k, self.tokenizer.decode([7 + k]), -2.0 - k) for k in range(p.logprobs - 1)]
                    lps = [TokenLogprob(tid, piece, -0.25, top[:p.logprobs])]
                finished = reason is not None
                yield RequestOutput(request.request_id, [tid], piece, finished=finished, finish_reason=reason,
                                    logprobs=lps, num_prompt_tokens=len(request.prompt_token_ids),
                                    num_output_tokens=n_out)
                if finished:
                    return
        finally:
            self.running.discard(request.request_id)
            if not finished:
                self.aborted.append(request.request_id)
