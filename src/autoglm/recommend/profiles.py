"""Model profiles: what each model is good at, how much context it takes, what it costs, how fast it is.

A :class:`ModelProfile` comes from a deploy file's ``models[].profile`` (tasks with a quality score in
0..1, ``context_length``, ``modality``, ``cost``). Two things change while a deployment runs:

* quality - :class:`QualityBook` keeps evaluation results and feedback ratings per (model, task) in
  ``$AUTOGLM_HOME/recommend/quality.json``; :meth:`QualityBook.quality` blends the profile's score (worth
  ``prior_weight`` observations) with the mean of what was recorded, so ten ratings move a score
  noticeably and one does not. The file is re-read when it changes (another process may write it).
* latency - measured by the server itself: :func:`metrics_latency` reads the p95 of time to first token
  and of inter-token latency (TPOT) per model from the app's Prometheus histograms.

Knows nothing about requests, tasks' meaning or HTTP.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelProfile", "QualityBook", "Latency", "metrics_latency", "histogram_quantile"]

log = logging.getLogger(__name__)


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


class QualityBook:
    """Recorded quality per (model, task): ``{model: {task: {"mean": m, "n": n}}}`` in one JSON file."""

    def __init__(self, path: Path | None = None, prior_weight: float = 5.0):
        if path is None:
            from autoglm.config import default_store_dir

            path = default_store_dir() / "recommend" / "quality.json"
        self.path, self.prior_weight = Path(path), float(prior_weight)
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, dict[str, float]]] = {}
        self._mtime: float | None = None
        self._checked = 0.0

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._data, self._mtime = {}, None
            return
        if mtime != self._mtime:
            try:
                self._data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("quality file %s is unreadable (%s); using the profiles' scores", self.path, exc)
                self._data = {}
            self._mtime = mtime

    def quality(self, profile: ModelProfile, task: str) -> float:
        with self._lock:
            self._refresh()
            rec = self._data.get(profile.name, {}).get(task)
        prior = profile.quality(task)
        if not rec or not rec.get("n"):
            return prior
        n, mean = float(rec["n"]), float(rec["mean"])
        return (self.prior_weight * prior + n * mean) / (self.prior_weight + n)

    def record(self, model: str, task: str, score: float, weight: float = 1.0) -> dict[str, float]:
        """Add an evaluation result or a rating (0..1) with ``weight`` observations; returns the entry."""
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"a quality score is between 0 and 1; got {score}")
        with self._lock:
            self._checked = 0.0
            self._refresh()
            entry = self._data.setdefault(model, {}).setdefault(task, {"mean": 0.0, "n": 0.0})
            n = entry["n"] + weight
            entry["mean"] = (entry["mean"] * entry["n"] + score * weight) / n
            entry["n"] = n
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._data, f, indent=1)
            os.replace(tmp, self.path)
            self._mtime = self.path.stat().st_mtime
            return dict(entry)


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
