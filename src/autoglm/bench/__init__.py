"""Serving benchmarks: a streaming OpenAI-API load generator and vLLM-style metrics.

- :mod:`autoglm.bench.client` — ``BenchConfig``, ``run_benchmark`` (the ``autoglm bench`` command's engine)
- :mod:`autoglm.bench.metrics` — TTFT / TPOT / ITL / E2E and throughput from per-request timings
- :mod:`autoglm.bench.prompts` — seeded synthetic prompts from the shipped demo corpus
- :mod:`autoglm.bench.servers` — start a server process on a free port, wait for /health, stop it
- :mod:`autoglm.bench.random_model` — save a small random GLM-4 (+ tokenizer) for tests and benchmarks

Importing this package imports nothing heavy; the submodules load openai, torch or transformers lazily.
"""
