"""gRPC beside HTTP, against a real ``autoglm serve --grpc-port`` process with an API key.

The gRPC services are the HTTP API's behaviour reached in process, so the checks compare the two: the
same text for the same greedy request, the same refusals (bad parameter, unknown model, missing key)
as gRPC status codes, one engine slot freed when a reader stops early, and the HTTP metrics counting
gRPC calls.
"""
from __future__ import annotations

import time

import httpx
import pytest

grpc = pytest.importorskip("grpc")

from autoglm.rpc.client import GrpcClient, GrpcError  # noqa: E402
from tests.conftest import _stop, free_port, start_live_server  # noqa: E402

KEY = "sk-grpc-test-key"
MODEL = "autoglm-demo"


@pytest.fixture(scope="module")
def server(autoglm_home):
    port = free_port()
    live = start_live_server(autoglm_home, MODEL, "--grpc-port", str(port), "--api-key", KEY,
                             "--max-num-seqs", "4", "--log-level", "warning")
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    finally:
        channel.close()
    yield live, target
    _stop(live.process)


@pytest.fixture()
def client(server):
    with GrpcClient(server[1], api_key=KEY) as c:
        yield c


def _http(server, path, body):
    return httpx.post(server[0].url + path, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)


def test_generate_streams_the_same_text_as_http(server, client):
    deltas = list(client.generate("The quick brown fox", model=MODEL, max_tokens=12, temperature=0.0,
                                  ignore_eos=True, include_usage=True))
    text_deltas = [d for d in deltas if d.text]
    assert len(text_deltas) > 1  # streamed, not one blob
    finals = [d for d in deltas if d.finish_reason]
    assert [d.finish_reason for d in finals] == ["length"]
    usage = [d.usage for d in deltas if d.usage]
    assert usage and usage[-1]["completion_tokens"] == 12
    http = _http(server, "/v1/completions", {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 12,
                                              "temperature": 0.0, "ignore_eos": True}).json()
    assert "".join(d.text for d in deltas) == http["choices"][0]["text"]
    assert deltas[0].id.startswith("cmpl")


def test_chat_streams_with_messages(client):
    deltas = list(client.chat([{"role": "user", "content": "hello"}], model=MODEL, max_tokens=6, seed=7,
                              ignore_eos=True))
    assert sum(1 for d in deltas if d.text) >= 1
    assert deltas[-1].finish_reason == "length"
    assert deltas[0].id.startswith("chatcmpl")


def test_refusals_are_grpc_status_codes(server, client):
    with pytest.raises(GrpcError) as bad:
        list(client.generate("x", model=MODEL, temperature=5.0))
    assert bad.value.code == "INVALID_ARGUMENT" and "temperature" in bad.value.message
    with pytest.raises(GrpcError) as unknown:
        list(client.generate("x", model="no-such-model", max_tokens=2))
    assert unknown.value.code == "NOT_FOUND" and "no-such-model" in unknown.value.message
    with GrpcClient(server[1]) as anonymous:
        with pytest.raises(GrpcError) as missing:
            list(anonymous.generate("x", model=MODEL, max_tokens=2))
        assert missing.value.code == "UNAUTHENTICATED"
        with GrpcClient(server[1], api_key="sk-wrong") as wrong:
            with pytest.raises(GrpcError) as refused:
                wrong.models()
            assert refused.value.code == "UNAUTHENTICATED"
        assert anonymous.server_ready() is True  # probes need no key, as /health needs none


def test_models_and_kserve_v2(client):
    assert [m["id"] for m in client.models()] == [MODEL]
    assert client.model_ready(MODEL) is True
    assert client.model_ready("no-such-model") is False
    texts = client.infer(["one", "two"], model=MODEL, max_tokens=4, temperature=0.0, ignore_eos=True)
    assert len(texts) == 2 and all(texts)
    again = client.infer(["one", "two"], model=MODEL, max_tokens=4, temperature=0.0, ignore_eos=True)
    assert again == texts  # greedy: the same request gives the same texts
    with pytest.raises(GrpcError) as unknown_param:
        client.infer("one", model=MODEL, beam_width=3)
    assert unknown_param.value.code == "INVALID_ARGUMENT" and "beam_width" in unknown_param.value.message


def _running(server) -> int:
    body = httpx.get(server[0].url + "/health", headers={"authorization": f"Bearer {KEY}"}, timeout=10).json()
    return body["num_running"]


def _generated(server) -> float:
    text = httpx.get(server[0].url + "/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("autoglm:generation_tokens_total{"))


def test_a_reader_that_stops_early_frees_the_engine(server, client):
    before = _generated(server)
    stream = client.generate("stop reading soon", model=MODEL, max_tokens=1500, ignore_eos=True)
    next(stream)
    stream.close()  # cancels the call: the app sees the client go and aborts the request
    deadline = time.monotonic() + 60
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(server) == 0
    assert _generated(server) - before < 1500  # stopped, not run to its end


def test_grpc_calls_count_in_the_http_metrics(server, client):
    before = _generated(server)
    list(client.generate("count me", model=MODEL, max_tokens=5, ignore_eos=True))
    assert _generated(server) - before == 5
