"""Client behaviour against a minimal OpenAI-shaped stub (a fake at the unit test's boundary): a server that
rejects ``stream_options`` and reports no usage must still be measured, counting text chunks as tokens."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from autoglm.bench.client import BenchConfig, run_benchmark
from autoglm.bench.servers import free_port

CHUNKS = ["a", "b", "", "c", "d", "e"]  # the empty one is not a token and not an ITL gap


def _app(seen: list[dict]):
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "t"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        if "stream_options" in body:
            return JSONResponse({"error": {"message": "unknown field stream_options", "type": "invalid"}},
                                status_code=400)

        async def gen():
            for text in CHUNKS:
                await asyncio.sleep(0.01)
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "stub",
                         "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def stub():
    import uvicorn

    seen: list[dict] = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_app(seen), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    thread.join(timeout=5)


def test_no_usage_and_rejected_stream_options(stub):
    url, seen = stub
    m = run_benchmark(BenchConfig(base_url=url, model="stub", num_prompts=3, concurrency=2, max_tokens=8,
                                  input_len=4, progress=False, extra_body={"top_k": 1}))
    assert (m.completed, m.failed) == (3, 0)
    assert m.total_output_tokens == 3 * 5  # five non-empty chunks per request
    assert m.total_input_tokens == 3 * 4  # no usage: prompt length in words
    assert m.itl_ms.count == 3 * 4  # gaps between the five text chunks
    assert m.tpot_ms.count == 3 and m.tpot_ms.mean > 0
    # first try carried stream_options and was refused; every later request was sent without it
    assert "stream_options" in seen[0] and all("stream_options" not in b for b in seen[1:])
    assert all(b["stream"] is True and b["top_k"] == 1 and "ignore_eos" not in b for b in seen)


def test_ignore_eos_only_when_asked(stub):
    url, seen = stub
    seen.clear()
    run_benchmark(BenchConfig(base_url=url, model="stub", num_prompts=1, concurrency=1, max_tokens=4, input_len=2,
                              progress=False, ignore_eos=True, warmup=False))
    assert seen and all(b.get("ignore_eos") is True for b in seen)
