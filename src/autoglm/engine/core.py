"""The engine core: one :meth:`EngineCore.step` is schedule → run the model → sample → update.

Owns the scheduler, the batch runner and the per-sequence sampler/detokenizer/constraint state.
Single-threaded by design: the async layer (:mod:`autoglm.engine.loop`) calls :meth:`step` from one
background thread and passes requests in through its own inbox. Knows token ids and tensors; knows
nothing about HTTP or OpenAI schemas.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from autoglm.engine.detokenizer import IncrementalDetokenizer
from autoglm.engine.io_struct import EngineRequest, EngineStats, RequestOutput, TokenLogprob, TopLogprob
from autoglm.engine.sampling import RowState, sample
from autoglm.engine.scheduler import Scheduler, Sequence
from autoglm.engine.token_bytes import TokenBytes
from autoglm.errors import InvalidRequestError

__all__ = ["EngineCore", "validate_request"]


def validate_request(request: EngineRequest, max_model_len: int, vocab_size: int) -> None:
    """Reject what cannot run, with the numbers (raised before anything is queued)."""
    n_prompt = len(request.prompt_token_ids)
    p = request.params
    if n_prompt == 0:
        raise InvalidRequestError("the prompt is empty; send at least one token", param="messages")
    if p.max_tokens < 1:
        raise InvalidRequestError(f"max_tokens must be at least 1, got {p.max_tokens}", param="max_tokens")
    if n_prompt + p.max_tokens > max_model_len:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{n_prompt + p.max_tokens} tokens ({n_prompt} in the prompt, {p.max_tokens} in the completion). "
            "Please reduce the length of the prompt or max_tokens.",
            param="max_tokens",
        )
    bad = [t for t in request.prompt_token_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", param="prompt")
    if p.logprobs is not None and not 0 <= p.logprobs <= 20:
        raise InvalidRequestError(f"top_logprobs must be between 0 and 20, got {p.logprobs}", param="top_logprobs")


def _advance(seq: Sequence, constraint: Any, token: int) -> Any:
    """Advance ``seq``'s constraint; on failure the error for that request alone (its ``request_id``
    set: the engine loop hands an emitted exception to that request's stream), else None."""
    from autoglm.engine.guided import GuidedDecodingError

    try:
        constraint.advance(token)
    except (GuidedDecodingError, ValueError) as exc:
        error = exc if isinstance(exc, GuidedDecodingError) else GuidedDecodingError(
            f"guided decoding could not go on: {exc}", param="response_format")
        error.request_id = seq.request_id
        return error
    return None


class EngineCore:
    """``runner`` is anything with :class:`~autoglm.engine.runner.BatchRunner`'s duties:
    ``prefill(keys, prompts)`` and ``decode(tokens)`` returning next-token logits ``[b, V]`` in row
    order, ``remove(keys)``, ``rows``, ``__len__`` and ``cached_tokens()`` (KV cells in use).

    Chunked prefill: when ``prefill_chunk`` > 0 and the runner has ``prefill_chunk(key, prompt,
    start, end)``, a prompt longer than the chunk is prefilled one chunk per step (oldest first)
    beside the running batch, which keeps decoding; the sequence joins the batch with its last chunk.
    A long prompt then delays the running streams by one chunk per step instead of its whole prefill.
    """

    def __init__(
        self,
        runner: Any,
        tokenizer: Any,
        *,
        max_model_len: int,
        max_num_seqs: int = 16,
        max_queue: int = 256,
        eos_token_ids: list[int] | None = None,
        max_prefill_tokens: int = 4096,
        prefill_chunk: int = 0,
        guided_backend: str = "auto",
        guided_pick_first: bool = True,
    ):
        self.tokenizer = tokenizer
        self.guided_backend = guided_backend  # auto | builtin | llguidance (autoglm.engine.guided.backends)
        self.guided_pick_first = guided_pick_first  # see autoglm.engine.guided.overlap
        self.max_model_len = max_model_len
        self.vocab_size = len(tokenizer)
        self.eos_token_ids = set(eos_token_ids or [])
        self.scheduler = Scheduler(max_num_seqs, max_queue, max_prefill_tokens)
        self.runner = runner
        self._kv_capacity = max_model_len * max_num_seqs  # token cells
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._token_text: dict[int, str] = {}
        self._token_bytes: TokenBytes | None = None  # built on the first logprobs request
        self.prefill_chunk = prefill_chunk if hasattr(runner, "prefill_chunk") else 0
        self._chunking: list[Sequence] = []  # admitted, prompt longer than a chunk, not prefilled yet
        self._guided_masks: Any = None  # guided.overlap.GuidedMasks, made with the first guided request

    # -- requests ----------------------------------------------------------------------------
    def add_request(self, request: EngineRequest) -> None:
        validate_request(request, self.max_model_len, self.vocab_size)
        seq = Sequence(request)
        p = request.params
        seq.extra["row"] = RowState(p, self.vocab_size, request.prompt_token_ids)
        seq.extra["detok"] = IncrementalDetokenizer(self.tokenizer, p.stop, p.include_stop_str_in_output)
        if p.guided is not None:
            from autoglm.engine.guided import get_backend

            try:
                backend = get_backend(self.guided_backend)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), param="response_format") from None
            seq.extra["constraint"] = backend.build(p.guided, self.tokenizer)
            if self._guided_masks is None:
                from autoglm.engine.guided.overlap import GuidedMasks

                self._guided_masks = GuidedMasks(pick_first=self.guided_pick_first)
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        seq = self.scheduler.get(request_id)
        if seq is None:
            return None
        self.scheduler.finish(seq, "abort")
        self.runner.remove([seq])
        if seq in self._chunking:
            self._chunking.remove(seq)
        return self._output(seq, [], "", None)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # -- the step ----------------------------------------------------------------------------
    def step(self, emit: Callable[[list[RequestOutput]], None]) -> None:
        """Advance every running sequence by one token (and admit waiting ones); ``emit`` is
        called with the outputs as soon as each phase has them (first tokens before the decode); a
        request whose guided decoding cannot go on is emitted as its GuidedDecodingError (which has
        its ``request_id``) instead of an output."""
        sched = self.scheduler.schedule()
        outputs: list[RequestOutput] = []
        if sched.expired:
            self.runner.remove(sched.expired)
            self._chunking = [s for s in self._chunking if s not in sched.expired]
            outputs += [self._output(s, [], s.extra["detok"].flush(), None) for s in sched.expired]
        whole = sched.prefill
        if self.prefill_chunk:
            # a prompt with images runs whole: its vision tower and 3-D positions need every placeholder
            fits = [s.num_prompt_tokens <= self.prefill_chunk or s.request.mm_inputs is not None for s in sched.prefill]
            whole = [s for s, ok in zip(sched.prefill, fits) if ok]
            self._chunking += [s for s, ok in zip(sched.prefill, fits) if not ok]
        if whole:
            prompts = [s.request.prompt_token_ids for s in whole]
            self.prompt_tokens_total += sum(len(p) for p in prompts)
            mm = [s.request.mm_inputs for s in whole]
            logits = self.runner.prefill(whole, prompts, mm) if any(m is not None for m in mm) else \
                self.runner.prefill(whole, prompts)
            outputs += self._sample_and_update(list(whole), logits)
            emit(outputs)
            outputs = []
        if self._chunking:
            outputs += self._prefill_next_chunk()
        if len(self.runner):
            seqs: list[Sequence] = list(self.runner.rows)
            logits = self.runner.decode([s.output_token_ids[-1] for s in seqs])
            outputs += self._sample_and_update(seqs, logits)
        self._start_guided_masks()
        if outputs:
            emit(outputs)

    def _start_guided_masks(self) -> None:
        """The next decode step's guided masks depend only on the tokens sampled so far: a worker
        computes them while that step's forward runs (see :mod:`autoglm.engine.guided.overlap`)."""
        if self._guided_masks is None or not len(self.runner):
            return
        seqs = [s for s in self.runner.rows if s.extra.get("constraint") is not None]
        self._guided_masks.start([s.extra["constraint"] for s in seqs], [s.remaining_tokens for s in seqs],
                                 [s.request.params for s in seqs])

    def _prefill_next_chunk(self) -> list[RequestOutput]:
        """One chunk of the oldest long prompt; its first token when that was the last chunk."""
        seq = self._chunking[0]
        prompt = seq.request.prompt_token_ids
        start = seq.extra.get("prefilled", 0)
        end = min(start + self.prefill_chunk, len(prompt))
        logits = self.runner.prefill_chunk(seq, prompt, start, end)
        seq.extra["prefilled"] = end
        self.prompt_tokens_total += end - start
        if end < len(prompt):
            return []
        self._chunking.pop(0)
        return self._sample_and_update([seq], logits)

    def _sample_and_update(self, seqs: list[Sequence], logits: torch.Tensor) -> list[RequestOutput]:
        rows: list[RowState] = [seq.extra["row"] for seq in seqs]
        guided = [i for i, seq in enumerate(seqs) if seq.extra.get("constraint") is not None]
        if guided:  # picked first and checked after, or masked in place (computed ahead, or now)
            cons = [seqs[i].extra["constraint"] for i in guided]
            left = [seqs[i].remaining_tokens for i in guided]
            first = self._guided_masks.apply(logits, guided, cons, left, rows)
        result = sample(logits, rows)
        if guided:  # a refused pick (made first, or from a mask that knows no budget) is drawn again
            self._guided_masks.settle(logits, guided, cons, left, rows, result, first)
        now = time.monotonic()
        outputs, finished = [], []
        for seq, row, token, lp in zip(seqs, rows, result.token_ids, result.logprobs):
            p = seq.request.params
            seq.output_token_ids.append(token)
            row.record(token)
            self.generation_tokens_total += 1
            if seq.first_token_time is None:
                seq.first_token_time = now
            constraint = seq.extra.get("constraint")
            if constraint is not None:
                error = _advance(seq, constraint, token)
                if error is not None:  # this request fails (its stream raises a 400); the batch goes on
                    self.scheduler.finish(seq, "abort")
                    finished.append(seq)
                    outputs.append(error)
                    continue
            reason = None
            stop_reason: str | int | None = None
            special_stop = (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids
            text, stopped = seq.extra["detok"].add(token, skip=special_stop)
            if special_stop:
                reason, stop_reason = "stop", token
            elif stopped:
                reason, stop_reason = "stop", seq.extra["detok"].stopped_by
            elif constraint is not None and constraint.done:
                reason = "stop"
            elif seq.remaining_tokens <= 0 or seq.num_tokens >= self.max_model_len:
                reason = "length"
            if reason is not None:
                if not stopped:
                    text += seq.extra["detok"].flush()
                self.scheduler.finish(seq, reason)
                finished.append(seq)
            logprobs = None
            if lp is not None:
                chosen, top = lp
                alternatives = [TopLogprob(t, self._text_of(t), v, self._bytes_of(t)) for t, v in top]
                logprobs = [TokenLogprob(token, self._text_of(token), chosen, alternatives, self._bytes_of(token))]
            outputs.append(self._output(seq, [token], text, logprobs, stop_reason))
        if finished:
            self.runner.remove(finished)
        return outputs

    def _output(self, seq: Sequence, token_ids: list[int], text: str, logprobs, stop_reason=None) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            token_ids=token_ids,
            text=text,
            finished=seq.finished,
            finish_reason=seq.finish_reason,
            logprobs=logprobs,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=len(seq.output_token_ids),
            arrival_time=seq.request.arrival_time,
            first_scheduled_time=seq.first_scheduled_time,
            first_token_time=seq.first_token_time,
            stop_reason=stop_reason,
        )

    def _bytes_of(self, token_id: int) -> list[int]:
        if self._token_bytes is None:
            self._token_bytes = TokenBytes(self.tokenizer)
        return self._token_bytes(token_id)

    def _text_of(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._token_text[token_id] = text
        return text

    def stats(self) -> EngineStats:
        used = self.runner.cached_tokens() if len(self.runner) else 0
        hits, reused = self.runner.prefix_stats() if hasattr(self.runner, "prefix_stats") else (0, 0)
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=min(1.0, used / self._kv_capacity) if self._kv_capacity else 0.0,
            max_num_seqs=self.scheduler.max_num_seqs,
            max_model_len=self.max_model_len,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            prefix_cache_hits=hits,
            prefix_cache_tokens=reused,
        )
