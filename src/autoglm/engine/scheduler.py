"""Continuous-batching scheduler: which sequences run in the next step.

Pure bookkeeping over token ids — no torch, no model, no tokenizer — so it is tested with synthetic
requests. Each :meth:`Scheduler.schedule` call admits waiting sequences into free slots (bounded by
``max_num_seqs`` and a prefill token budget) and lists the running ones to decode; the engine core
runs the model and reports back through :meth:`Scheduler.finish`. Requests join and leave the batch
at every step.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from autoglm.engine.io_struct import EngineRequest, FinishReason

__all__ = ["Sequence", "SchedulerOutput", "Scheduler", "common_prefix_len"]


@dataclass(eq=False)
class Sequence:
    """A request's mutable state while it is in the engine."""

    request: EngineRequest
    output_token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: FinishReason | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    # Per-sequence helpers the engine core attaches (sampler state, detokenizer, constraint).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + len(self.output_token_ids)

    @property
    def remaining_tokens(self) -> int:
        return self.request.params.max_tokens - len(self.output_token_ids)


@dataclass
class SchedulerOutput:
    prefill: list[Sequence]  # newly admitted: run their prompts this step
    decode: list[Sequence]  # already running: one token each this step
    expired: list[Sequence]  # dropped for their deadline (finish_reason "timeout")


class Scheduler:
    """FCFS admission into at most ``max_num_seqs`` running slots.

    ``max_prefill_tokens`` bounds the prompt tokens admitted in one step so that a burst of long
    prompts does not stall the running sequences for too long (at least one prompt is always
    admitted when a slot is free, whatever its length).
    """

    def __init__(self, max_num_seqs: int, max_queue: int, max_prefill_tokens: int = 4096):
        self.max_num_seqs = max_num_seqs
        self.max_queue = max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}

    # -- admission -------------------------------------------------------------------------
    def queue_full(self) -> bool:
        return len(self.waiting) >= self.max_queue

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self._by_id[seq.request_id] = seq

    def get(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- the step ------------------------------------------------------------------------------
    def schedule(self, now: float | None = None) -> SchedulerOutput:
        now = time.monotonic() if now is None else now
        expired = [s for s in (*self.waiting, *self.running) if _expired(s, now)]
        for seq in expired:
            self.finish(seq, "timeout")

        decode = list(self.running)
        prefill: list[Sequence] = []
        budget = self.max_prefill_tokens
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if prefill and seq.num_prompt_tokens > budget:
                break
            self.waiting.popleft()
            budget -= seq.num_prompt_tokens
            seq.first_scheduled_time = now
            self.running.append(seq)
            prefill.append(seq)
        return SchedulerOutput(prefill=prefill, decode=decode, expired=expired)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Mark ``seq`` finished and take it out of the queue or the batch. Idempotent."""
        if seq.finished:
            return
        seq.finished = True
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self._by_id.pop(seq.request_id, None)


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """How many leading token ids ``a`` and ``b`` share (what a prefix cache can reuse)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _expired(seq: Sequence, now: float) -> bool:
    deadline = seq.request.deadline
    return deadline is not None and now >= deadline
