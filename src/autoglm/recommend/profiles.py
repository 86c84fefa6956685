"""Model profiles: what each model is good at, how much context it takes, what it costs, how fast it is.

A :class:`ModelProfile` comes from a deploy file's ``models[].profile`` (tasks with a quality score in
0..1, ``context_length``, ``modality``, ``cost``). Two things change while a deployment runs:

* quality - :class:`~autoglm.recommend.quality.QualityBook` blends the profile's score (the prior)
  with evaluation results and feedback ratings recorded per (model, task) in the state store;
* latency - measured by the server itself: :func:`metrics_latency` reads the p95 of time to first token
  and of inter-token latency (TPOT) per model from the app's Prometheus histograms.

Knows nothing about requests, tasks' meaning or HTTP.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelProfile", "Latency", "metrics_latency", "histogram_quantile"]


@dataclass(frozen=True)
class ModelProfile:
    name: str
    tasks: Mapping[str, float] = field(default_factory=dict)  # task -> quality in 0..1
    context_length: int | None = None  # tokens (None: unknown, never excludes the model)
    modality: tuple[str, ...] = ("text",)
    cost: float = 1.0  # relative cost per token (any unit, the same for every model)
    default_quality: float = 0.3  # for a task the profile does not list

    def quality(self, task: str) -> float:
        return float(self.tasks.get(task, self.default_quality))


@dataclass(frozen=True)
class Latency:
    ttft_p95: float | None  # seconds
    tpot_p95: float | None


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over ``[(upper bound, cumulative count)]`` sorted by bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _buckets_by_model(histogram: Any) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for metric in histogram.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                le = s.labels.get("le", "+Inf")
                bound = float("inf") if le in ("+Inf", "inf") else float(le)
                out.setdefault(s.labels.get("model_name", ""), []).append((bound, s.value))
    return {m: sorted(b) for m, b in out.items()}


def metrics_latency(metrics: Any, min_interval: float = 2.0) -> Callable[[str], Latency]:
    """``model -> Latency`` from a :class:`~autoglm.monitoring.ServerMetrics` (re-read every ``min_interval`` s)."""
    cache: dict[str, Any] = {"at": -1e9, "ttft": {}, "itl": {}}

    def latency(model: str) -> Latency:
        if metrics is None:
            return Latency(None, None)
        now = time.monotonic()
        if now - cache["at"] > min_interval:
            cache.update(at=now, ttft=_buckets_by_model(metrics.ttft), itl=_buckets_by_model(metrics.itl))
        return Latency(histogram_quantile(0.95, cache["ttft"].get(model, [])),
                       histogram_quantile(0.95, cache["itl"].get(model, [])))

    return latency
