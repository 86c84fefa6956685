"""The benchmark against real server processes on a tiny random GLM-4, through the official openai SDK."""
from __future__ import annotations

import importlib.util
import json

import httpx
import pytest

from autoglm.bench.client import BenchConfig, BenchError, run_benchmark
from autoglm.bench.servers import ServerProcess, autoglm_serve_command, free_port, transformers_serve_command
from autoglm.cli.main import main

N, C, MAX_TOKENS = 6, 3, 12


@pytest.fixture(scope="module")
def transformers_server(tiny_glm4_dir):
    pytest.importorskip("accelerate", reason="`transformers serve` loads models with a device map: needs accelerate")
    port = free_port()
    # an explicit small KV cache: sizing it from free memory takes ~30 s on CPU at the first request
    cmd = transformers_serve_command(tiny_glm4_dir, port, extra=["--cb-num-blocks", "32"])
    with ServerProcess(cmd, port, startup_timeout=120, name="transformers serve") as srv:
        yield srv


def test_cli_against_transformers_serve(transformers_server, tiny_glm4_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--base-url", transformers_server.base_url, "--model", str(tiny_glm4_dir),
               "--num-prompts", str(N), "--concurrency", str(C), "--max-tokens", str(MAX_TOKENS),
               "--input-len", "16", "--json", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "Serving Benchmark Result" in printed and "Mean TPOT (ms):" in printed
    m = json.loads(out.read_text())["metrics"]
    assert (m["completed"], m["failed"]) == (N, 0)
    # transformers serve reports usage: token counts are the server's, bounded by max_tokens
    assert 0 < m["total_output_tokens"] <= N * MAX_TOKENS
    assert m["total_input_tokens"] > N * 16  # chat template + BPE pieces: more tokens than words
    assert 0 < m["ttft_ms"]["median"] <= m["e2e_ms"]["median"]
    assert m["tpot_ms"]["count"] > 0 and m["tpot_ms"]["mean"] > 0
    assert m["itl_ms"]["count"] > 0
    assert m["request_throughput"] == pytest.approx(N / m["duration_s"])


def test_completions_endpoint_and_same_prompts(transformers_server, tiny_glm4_dir):
    cfg = dict(base_url=transformers_server.base_url, model=str(tiny_glm4_dir), num_prompts=4, concurrency=4,
               max_tokens=6, input_len=8, endpoint="completions", progress=False, seed=3)
    first = run_benchmark(BenchConfig(**cfg))
    second = run_benchmark(BenchConfig(**cfg))
    assert first.completed == 4 and first.failed == 0
    # the same seed sends the same prompts: the server counts the same input tokens
    assert first.total_input_tokens == second.total_input_tokens > 0


def test_wrong_model_name_is_one_clear_error(transformers_server):
    with pytest.raises(BenchError, match="rejected the warm-up request.*pinned"):
        run_benchmark(BenchConfig(base_url=transformers_server.base_url, model="not-this-one", num_prompts=1,
                                  concurrency=1, max_tokens=4, progress=False))


@pytest.mark.skipif(importlib.util.find_spec("autoglm.cli.serve") is None, reason="autoglm serve not written yet")
def test_against_autoglm_serve(tiny_glm4_dir):
    port = free_port()
    cmd = autoglm_serve_command(str(tiny_glm4_dir), port, extra=["--quantize", "none", "--device", "cpu",
                                                                 "--served-model-name", "tiny"])
    with ServerProcess(cmd, port, startup_timeout=120, name="autoglm serve") as srv:
        models = httpx.get(f"{srv.base_url}/models", timeout=10).json()
        assert "tiny" in [m["id"] for m in models["data"]]
        m = run_benchmark(BenchConfig(base_url=srv.base_url, model="tiny", num_prompts=N, concurrency=C,
                                      max_tokens=MAX_TOKENS, input_len=16, ignore_eos=True, progress=False))
    assert (m.completed, m.failed) == (N, 0)
    assert m.total_output_tokens == N * MAX_TOKENS  # our server honours ignore_eos
    assert m.tpot_ms.count == N and m.ttft_ms.median <= m.e2e_ms.median
