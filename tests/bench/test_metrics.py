"""Metric math on hand-made timings; every expected value is worked out in the comments."""
from __future__ import annotations

import pytest

from autoglm.bench.metrics import RequestResult, calculate_metrics, distribution, format_table


def _two_requests() -> list[RequestResult]:
    # A: 5 tokens, first at 0.1 s, ends at 0.5 s -> TPOT (0.5-0.1)/4 = 0.1 s; gaps 0.1,0.1,0.1,0.1
    a = RequestResult(success=True, prompt_tokens=10, output_tokens=5, ttft=0.1, e2e=0.5, itl=[0.1, 0.1, 0.1, 0.1])
    # B: 3 tokens, first at 0.3 s, ends at 0.7 s -> TPOT (0.7-0.3)/2 = 0.2 s; gaps 0.1, 0.3
    b = RequestResult(success=True, prompt_tokens=20, output_tokens=3, ttft=0.3, e2e=0.7, itl=[0.1, 0.3])
    # C: one token only: counted in TTFT/E2E, never in TPOT
    c = RequestResult(success=True, prompt_tokens=6, output_tokens=1, ttft=0.2, e2e=0.2, itl=[])
    # D failed: contributes to nothing but the failed count and the error list
    d = RequestResult(success=False, prompt_tokens=99, output_tokens=0, error="APIConnectionError: boom")
    return [a, b, c, d]


def test_counts_and_throughputs():
    m = calculate_metrics(_two_requests(), duration_s=2.0)
    assert (m.completed, m.failed) == (3, 1)
    assert m.total_input_tokens == 36  # 10 + 20 + 6, failed request excluded
    assert m.total_output_tokens == 9  # 5 + 3 + 1
    assert m.request_throughput == pytest.approx(1.5)  # 3 / 2
    assert m.output_throughput == pytest.approx(4.5)  # 9 / 2
    assert m.total_token_throughput == pytest.approx(22.5)  # 45 / 2
    assert m.errors == ["APIConnectionError: boom"]


def test_ttft_tpot_e2e():
    m = calculate_metrics(_two_requests(), duration_s=2.0)
    # TTFT sample 100, 300, 200 ms: mean 200, median 200, p99 = 200 + 0.98*(300-200) = 298
    assert m.ttft_ms.mean == pytest.approx(200.0)
    assert m.ttft_ms.median == pytest.approx(200.0)
    assert m.ttft_ms.p99 == pytest.approx(298.0)
    # TPOT sample (only requests with >1 token) 100, 200 ms: mean 150, median 150, p99 = 100 + 0.99*100 = 199
    assert m.tpot_ms.count == 2
    assert m.tpot_ms.mean == pytest.approx(150.0)
    assert m.tpot_ms.median == pytest.approx(150.0)
    assert m.tpot_ms.p99 == pytest.approx(199.0)
    # E2E sample 500, 700, 200 ms: mean 466.67, median 500, p99 = 500 + 0.98*200 = 696
    assert m.e2e_ms.mean == pytest.approx(1400.0 / 3)
    assert m.e2e_ms.median == pytest.approx(500.0)
    assert m.e2e_ms.p99 == pytest.approx(696.0)


def test_itl_pools_every_gap():
    m = calculate_metrics(_two_requests(), duration_s=2.0)
    # gaps 100,100,100,100,100,300 ms: mean 800/6, median 100, p99 at rank 0.99*5 = 4.95 -> 100 + 0.95*200 = 290
    assert m.itl_ms.count == 6
    assert m.itl_ms.mean == pytest.approx(800.0 / 6)
    assert m.itl_ms.median == pytest.approx(100.0)
    assert m.itl_ms.p99 == pytest.approx(290.0)


def test_tpot_differs_from_itl_when_a_chunk_bundles_tokens():
    # 4 tokens but only 2 chunks (the last chunk carried 3 tokens): TPOT spreads the 0.3 s over 3 tokens,
    # ITL sees one 0.3 s gap.
    r = RequestResult(success=True, prompt_tokens=1, output_tokens=4, ttft=0.1, e2e=0.4, itl=[0.3])
    m = calculate_metrics([r], duration_s=1.0)
    assert m.tpot_ms.mean == pytest.approx(100.0)
    assert m.itl_ms.mean == pytest.approx(300.0)


def test_all_failed_gives_zeros_not_nan():
    m = calculate_metrics([RequestResult(success=False, error="x")], duration_s=1.0)
    assert m.completed == 0 and m.failed == 1
    assert m.ttft_ms.mean == 0.0 and m.itl_ms.p99 == 0.0 and m.output_throughput == 0.0


def test_bad_duration_rejected():
    with pytest.raises(ValueError, match="duration_s"):
        calculate_metrics([], duration_s=0.0)


def test_distribution_and_table():
    d = distribution([0.001, 0.003])
    assert (d.mean, d.median, d.count) == (pytest.approx(2.0), pytest.approx(2.0), 2)
    text = format_table(calculate_metrics(_two_requests(), duration_s=2.0))
    assert "Request throughput (req/s):" in text and "1.50" in text
    assert "P99 ITL (ms):" in text and "290.00" in text
