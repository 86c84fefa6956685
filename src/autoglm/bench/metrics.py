"""Serving benchmark metrics, with the definitions of vLLM's ``bench serve``.

Input: one :class:`RequestResult` per request (client-side timings of a streamed response) and the
benchmark's wall-clock duration. Output: :class:`BenchmarkMetrics`.

Definitions (all per *successful* request unless noted):

- TTFT: time from sending the request to the first chunk carrying generated text.
- E2E latency: time from sending the request to the end of the stream.
- ITL: every gap between two consecutive text chunks of a request; the gaps of all requests are
  pooled before taking mean/median/p99 (a chunk that bundles several tokens is one gap).
- TPOT: per request ``(e2e - ttft) / (output_tokens - 1)``, i.e. excluding the first token; only
  requests with more than one output token contribute.
- Throughputs: completed requests, output tokens, and input + output tokens, each divided by the
  benchmark duration (first request sent to last response finished).
- Percentiles are numpy's default (linear interpolation); median is p50.

Times are seconds in :class:`RequestResult` and milliseconds in :class:`BenchmarkMetrics`. Nothing
here knows about HTTP or the OpenAI client.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RequestResult", "Distribution", "BenchmarkMetrics", "calculate_metrics", "distribution", "format_table"]


@dataclass
class RequestResult:
    """What the client observed for one request. ``itl`` holds the gaps after the first chunk."""

    success: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    error: str = ""
    usage_reported: bool = False  # token counts came from the server's usage, not from counting chunks


@dataclass
class Distribution:
    """mean / median / p99 of a sample, in milliseconds (0.0 for an empty sample)."""

    mean: float = 0.0
    median: float = 0.0
    p99: float = 0.0
    count: int = 0


def distribution(values_s: list[float]) -> Distribution:
    """Summarise seconds as milliseconds."""
    import numpy as np

    if not values_s:
        return Distribution()
    arr = np.asarray(values_s, dtype=float) * 1000.0
    return Distribution(mean=float(arr.mean()), median=float(np.median(arr)),
                        p99=float(np.percentile(arr, 99)), count=int(arr.size))


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # req/s
    output_throughput: float  # tok/s
    total_token_throughput: float  # tok/s
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2e_ms: Distribution
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calculate_metrics(results: list[RequestResult], duration_s: float) -> BenchmarkMetrics:
    """Aggregate per-request results over a benchmark that took ``duration_s`` seconds."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ok = [r for r in results if r.success]
    ttfts, tpots, itls, e2es = [], [], [], []
    for r in ok:
        ttfts.append(r.ttft)
        e2es.append(r.e2e)
        itls.extend(r.itl)
        if r.output_tokens > 1:
            tpots.append((r.e2e - r.ttft) / (r.output_tokens - 1))
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    return BenchmarkMetrics(
        completed=len(ok),
        failed=len(results) - len(ok),
        duration_s=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) / duration_s,
        output_throughput=total_out / duration_s,
        total_token_throughput=(total_in + total_out) / duration_s,
        ttft_ms=distribution(ttfts),
        tpot_ms=distribution(tpots),
        itl_ms=distribution(itls),
        e2e_ms=distribution(e2es),
        errors=sorted({r.error for r in results if not r.success and r.error}),
    )


def format_table(m: BenchmarkMetrics, title: str = "Serving Benchmark Result") -> str:
    """A plain-text report in the layout of vLLM's ``bench serve``."""
    width = 50
    lines = [f" {title} ".center(width, "=")]

    def row(label: str, value: object) -> None:
        text = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{label:<38}{text:>12}")

    row("Successful requests:", m.completed)
    row("Failed requests:", m.failed)
    row("Benchmark duration (s):", m.duration_s)
    row("Total input tokens:", m.total_input_tokens)
    row("Total generated tokens:", m.total_output_tokens)
    row("Request throughput (req/s):", m.request_throughput)
    row("Output token throughput (tok/s):", m.output_throughput)
    row("Total token throughput (tok/s):", m.total_token_throughput)
    for name, heading, dist in (
        ("TTFT", "Time to First Token", m.ttft_ms),
        ("TPOT", "Time per Output Token (excl. 1st token)", m.tpot_ms),
        ("ITL", "Inter-token Latency", m.itl_ms),
        ("E2EL", "End-to-end Latency", m.e2e_ms),
    ):
        lines.append(f"{heading}".center(width, "-"))
        row(f"Mean {name} (ms):", dist.mean)
        row(f"Median {name} (ms):", dist.median)
        row(f"P99 {name} (ms):", dist.p99)
    lines.append("=" * width)
    for err in m.errors[:5]:
        lines.append(f"error: {err}")
    return "\n".join(lines)
