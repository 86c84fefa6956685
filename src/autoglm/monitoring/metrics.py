"""Prometheus metrics for one server: vLLM-compatible names under the ``autoglm:`` prefix.

:class:`ServerMetrics` owns one :class:`prometheus_client.CollectorRegistry` (never the global one, so
two apps in one process do not collide). It holds:

* engine gauges read from ``engine.stats()`` at scrape time (``autoglm:num_requests_running``,
  ``autoglm:num_requests_waiting``, ``autoglm:kv_cache_usage_perc``), labelled ``model_name``;
* request metrics fed by :meth:`ServerMetrics.observer` from the engine's
  :class:`~autoglm.engine.io_struct.RequestOutput` deltas: token counters, ``request_success_total``
  by ``finished_reason``, and histograms of time to first token, inter-token latency, end-to-end
  latency and queue time, with vLLM's bucket edges;
* the gateway's counters (cache hits/misses, auth failures, rate limiting, upstream errors), labelled
  ``model_name`` and ``key_name`` - a key's *name*, never the key;
* ``autoglm:http_requests_total`` by route template and status, for error-rate alerts.

Knows nothing about HTTP frameworks, keys or how engines work beyond ``stats()`` and output deltas.
``prometheus_client`` is imported when a :class:`ServerMetrics` is built, not when this module is.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["ServerMetrics", "PREFIX", "CONTENT_TYPE", "TTFT_BUCKETS", "ITL_BUCKETS", "LATENCY_BUCKETS"]

log = logging.getLogger(__name__)

PREFIX = "autoglm:"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Bucket edges as vLLM publishes them, so dashboards and SLOs carry over.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("metrics need prometheus_client; install it with: pip install 'autoglm[gateway]'") from exc
    return prometheus_client


class _EngineCollector:
    """Gauges read from each engine's ``stats()`` when Prometheus scrapes."""

    def __init__(self, engines: Callable[[], Mapping[str, Any]]):
        self._engines = engines

    def describe(self) -> Iterable[Any]:
        return []  # unchecked collector: families are only known at scrape time

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        running = GaugeMetricFamily(PREFIX + "num_requests_running", "Requests being decoded.", labels=["model_name"])
        waiting = GaugeMetricFamily(PREFIX + "num_requests_waiting", "Requests waiting to be scheduled.",
                                    labels=["model_name"])
        kv = GaugeMetricFamily(PREFIX + "kv_cache_usage_perc", "Fraction of the KV cache in use (0-1).",
                               labels=["model_name"])
        hits = CounterMetricFamily(PREFIX + "prefix_cache_hits", "Prompts that started from cached KV cells.",
                                   labels=["model_name"])
        reused = CounterMetricFamily(PREFIX + "prefix_cache_tokens", "Prompt tokens the prefix cache saved from running.",
                                     labels=["model_name"])
        for name, engine in self._engines().items():
            try:
                s = engine.stats()
            except Exception:  # noqa: BLE001 - a broken engine must not break the scrape
                log.debug("stats() of %s failed", name, exc_info=True)
                continue
            running.add_metric([name], float(s.num_running))
            waiting.add_metric([name], float(s.num_waiting))
            kv.add_metric([name], float(s.kv_cache_usage))
            hits.add_metric([name], float(getattr(s, "prefix_cache_hits", 0)))
            reused.add_metric([name], float(getattr(s, "prefix_cache_tokens", 0)))
        return [running, waiting, kv, hits, reused]


class ServerMetrics:
    """Every metric of one app, in its own registry. Render with :meth:`render`."""

    def __init__(self, engines: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None):
        pc = _prometheus()
        self.registry = pc.CollectorRegistry(auto_describe=False)
        get = engines if callable(engines) else (lambda: engines or {})
        self.registry.register(_EngineCollector(get))
        r, m, mk = self.registry, ["model_name"], ["model_name", "key_name"]

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return pc.Counter(PREFIX + name, doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple, labels: list[str] = m) -> Any:
            return pc.Histogram(PREFIX + name, doc, labels, registry=r, buckets=buckets)

        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed.", m)
        self.generation_tokens = counter("generation_tokens", "Tokens generated.", m)
        self.request_success = counter("request_success", "Finished engine requests by finish reason.",
                                       ["model_name", "finished_reason"])
        self.ttft = histogram("time_to_first_token_seconds", "Time to first token (s).", TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between output tokens (s).", ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to last token (s).", LATENCY_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Time waiting before first scheduled (s).",
                                    LATENCY_BUCKETS)
        self.request_prompt_tokens = histogram("request_prompt_tokens", "Prompt tokens per request.", TOKEN_BUCKETS)
        self.request_generation_tokens = histogram("request_generation_tokens", "Output tokens per request.",
                                                   TOKEN_BUCKETS)
        self.cache_hits = counter("cache_hits", "Responses served from the response cache.", mk)
        self.cache_misses = counter("cache_misses", "Cacheable requests not found in the response cache.", mk)
        self.auth_failures = counter("auth_failures", "Requests refused with 401 or 403.", mk + ["reason"])
        self.rate_limited = counter("rate_limited", "Requests refused with 429 by the gateway.", mk)
        self.upstream_errors = counter("upstream_errors", "Requests the engine failed (after admission).", mk)
        self.http_requests = counter("http_requests", "HTTP requests by route template and status.",
                                     ["route", "status"])
        self.engines_getter = get

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def observer(self, model: str) -> Callable[[Any], None]:
        """A callback for each engine output delta of one HTTP request (any number of engine requests)."""
        last: dict[str, float] = {}
        done: set[str] = set()

        def observe(out: Any) -> None:
            now = time.monotonic()
            rid = out.request_id
            if rid in done:
                return
            arrival = out.arrival_time or None
            if rid not in last:
                if arrival is not None and out.first_scheduled_time is not None:
                    self.queue_time.labels(model).observe(max(0.0, out.first_scheduled_time - arrival))
                if out.token_ids or out.finished:
                    first = out.first_token_time or now
                    if arrival is not None:
                        self.ttft.labels(model).observe(max(0.0, first - arrival))
            elif out.token_ids:
                gap = max(0.0, now - last[rid]) / len(out.token_ids)
                for _ in out.token_ids:
                    self.itl.labels(model).observe(gap)
            if out.token_ids or rid not in last:
                last[rid] = now
            if out.finished:
                done.add(rid)
                last.pop(rid, None)
                self.request_success.labels(model, out.finish_reason or "stop").inc()
                self.prompt_tokens.labels(model).inc(out.num_prompt_tokens)
                self.generation_tokens.labels(model).inc(out.num_output_tokens)
                self.request_prompt_tokens.labels(model).observe(out.num_prompt_tokens)
                self.request_generation_tokens.labels(model).observe(out.num_output_tokens)
                if arrival is not None:
                    self.e2e.labels(model).observe(max(0.0, now - arrival))

        return observe
