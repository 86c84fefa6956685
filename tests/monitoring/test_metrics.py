"""ServerMetrics with synthetic engine outputs: names, labels, histogram math, scrape-time gauges."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from autoglm.engine.io_struct import EngineStats, RequestOutput
from autoglm.monitoring.metrics import ServerMetrics, TTFT_BUCKETS


class StatsEngine:
    def __init__(self, stats: EngineStats | Exception):
        self._stats = stats

    def stats(self) -> EngineStats:
        if isinstance(self._stats, Exception):
            raise self._stats
        return self._stats


def samples(m: ServerMetrics) -> dict[tuple[str, frozenset], float]:
    text = m.render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_gauges_are_read_at_scrape_time_and_a_broken_engine_is_skipped():
    engine = StatsEngine(EngineStats(num_running=2, num_waiting=5, kv_cache_usage=0.25, prefix_cache_hits=3,
                                     prefix_cache_tokens=420))
    m = ServerMetrics({"good": engine, "broken": StatsEngine(RuntimeError("down"))})
    s = samples(m)
    assert s[("autoglm:prefix_cache_hits_total", frozenset({("model_name", "good")}))] == 3
    assert s[("autoglm:prefix_cache_tokens_total", frozenset({("model_name", "good")}))] == 420
    assert s[("autoglm:num_requests_running", frozenset({("model_name", "good")}))] == 2
    assert s[("autoglm:num_requests_waiting", frozenset({("model_name", "good")}))] == 5
    assert s[("autoglm:kv_cache_usage_perc", frozenset({("model_name", "good")}))] == 0.25
    assert not any(dict(ls).get("model_name") == "broken" for _, ls in s)
    engine._stats = EngineStats(num_running=0, num_waiting=1, kv_cache_usage=0.95)
    assert samples(m)[("autoglm:kv_cache_usage_perc", frozenset({("model_name", "good")}))] == 0.95


def test_each_app_has_its_own_registry():
    a, b = ServerMetrics({}), ServerMetrics({})
    a.cache_hits.labels("m", "k").inc(3)
    assert samples(a)[("autoglm:cache_hits_total", frozenset({("model_name", "m"), ("key_name", "k")}))] == 3
    assert not any(n == "autoglm:cache_hits_total" for n, _ in samples(b))


def test_observer_times_and_counts_one_request():
    m = ServerMetrics({})
    observe = m.observer("demo")
    t0 = 100.0
    common = {"request_id": "r-0", "arrival_time": t0, "first_scheduled_time": t0 + 0.5,
              "first_token_time": t0 + 0.75, "num_prompt_tokens": 9}
    observe(RequestOutput(token_ids=[1], text="a", num_output_tokens=1, **common))
    observe(RequestOutput(token_ids=[2, 3], text="bc", num_output_tokens=3, **common))
    observe(RequestOutput(token_ids=[], text="", finished=True, finish_reason="length", num_output_tokens=3,
                          **common))
    observe(RequestOutput(token_ids=[], text="", finished=True, finish_reason="length", num_output_tokens=3,
                          **common))  # a repeat after the end is ignored
    s = samples(m)
    d = frozenset({("model_name", "demo")})
    assert s[("autoglm:prompt_tokens_total", d)] == 9 and s[("autoglm:generation_tokens_total", d)] == 3
    assert s[("autoglm:request_success_total", d | {("finished_reason", "length")})] == 1
    assert s[("autoglm:time_to_first_token_seconds_count", d)] == 1
    assert abs(s[("autoglm:time_to_first_token_seconds_sum", d)] - 0.75) < 1e-9
    assert abs(s[("autoglm:request_queue_time_seconds_sum", d)] - 0.5) < 1e-9
    assert s[("autoglm:inter_token_latency_seconds_count", d)] == 2  # one gap per token after the first
    assert s[("autoglm:e2e_request_latency_seconds_count", d)] == 1
    # 0.75 s lands in the 0.75 bucket and not in the 0.5 one (vLLM's edges)
    assert 0.75 in TTFT_BUCKETS
    assert s[("autoglm:time_to_first_token_seconds_bucket", d | {("le", "0.75")})] == 1
    assert s[("autoglm:time_to_first_token_seconds_bucket", d | {("le", "0.5")})] == 0
