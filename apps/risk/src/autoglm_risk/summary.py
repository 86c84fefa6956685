"""A one-paragraph summary of a review case for the reviewer, written by a GLM served by ``autoglm serve``
(any OpenAI-compatible server) through the official ``openai`` client — never on the decision's path.

:class:`ReviewSummarizer` takes the cases the engine sends to the review queue (``review``,
``strong_verify``) on a queue of its own and works them on one background thread: it builds a prompt
from the decision's facts only (decision, score, rule hits, the reasons in words, amount, category,
country — no free text from anyone), asks the model, and stores the answer in the decision's ``summary``
column, where the review queue and ``GET /v1/risk/decisions/{id}`` show it. A slow or dead model server
costs the decisions nothing: the queue is bounded (the oldest case waiting is dropped and counted) and
every failure is counted in ``risk_summaries_total{outcome}`` and logged without the case's content.

With the demo model (``autoglm-demo``, random weights) the summary is noise: it shows the plumbing, not
a reviewer's aid. Knows nothing about HTTP routes; the engine calls :meth:`submit`.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["SummaryConfig", "ReviewSummarizer", "summary_prompt"]

log = logging.getLogger("autoglm_risk.summary")

SYSTEM = ("You help a fraud analyst review a card transaction. In one short paragraph, say why it was flagged "
          "and what to check first. Use only the facts given.")


@dataclass
class SummaryConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str = "glm-4-9b-chat"
    api_key: str = "none"
    max_tokens: int = 120
    timeout_s: float = 20.0
    max_waiting: int = 1000  # cases waiting for the model; beyond it the oldest is dropped


def summary_prompt(case: dict[str, Any]) -> str:
    """The facts of one decision as the user message (what the analyst would see anyway)."""
    lines = [f"Decision: {case['decision']} (model score {case.get('score')})",
             f"Amount: {case.get('amount')} in category {case.get('category', '?')}, country {case.get('country', '?')}"]
    hits = [h.get("rule") + (" (shadow)" if h.get("shadow") else "") for h in case.get("rule_hits") or []]
    if hits:
        lines.append("Rules hit: " + ", ".join(hits))
    reasons = [r.get("text") for r in case.get("reasons") or [] if r.get("text")]
    if reasons:
        lines.append("Strongest reasons: " + "; ".join(reasons))
    return "\n".join(lines)


class ReviewSummarizer:
    """Background summaries of review cases; ``store_summary(decision_id, text)`` writes one."""

    def __init__(self, config: SummaryConfig, store_summary: Callable[[str, str], None], *, registry: Any = None):
        from prometheus_client import Counter

        self.config = config
        self._store_summary = store_summary
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, config.max_waiting))
        self._client: Any = None
        self.m_summaries = Counter("risk_summaries_total", "Reviewer summaries by outcome (ok, error, dropped)",
                                   ["outcome"], registry=registry)
        self._thread = threading.Thread(target=self._loop, name="risk-summary", daemon=True)
        self._thread.start()

    def submit(self, decision_id: str, case: dict[str, Any]) -> None:
        """Queue a case; returns at once (drops the oldest waiting case when the queue is full)."""
        item = (decision_id, summary_prompt(case))
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.m_summaries.labels(outcome="dropped").inc()
                except queue.Empty:
                    pass

    def _openai(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.config.base_url, api_key=self.config.api_key,
                                  timeout=self.config.timeout_s, max_retries=0)
        return self._client

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            decision_id, prompt = item
            try:
                r = self._openai().chat.completions.create(
                    model=self.config.model, max_tokens=self.config.max_tokens, temperature=0.3,
                    messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}])
                text = (r.choices[0].message.content or "").strip()
                self._store_summary(decision_id, text)
                self.m_summaries.labels(outcome="ok").inc()
            except Exception as e:  # the model server is optional: count, log the kind, keep going
                self.m_summaries.labels(outcome="error").inc()
                log.warning("reviewer summary for %s failed: %s", decision_id, type(e).__name__)

    def close(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=self.config.timeout_s + 1)
