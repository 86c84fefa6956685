"""SIGTERM during streaming load: a real ``autoglm serve --model autoglm-demo`` process, the openai SDK.

With a long enough grace period every stream finishes (finish_reason, ``[DONE]``), new requests meanwhile
get 503 with an OpenAI error object, and the process exits 0 well before the grace period is over. With a
grace period too short for the streams, each ends with an error event and ``[DONE]`` -- never a cut
connection -- and the process still exits 0.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import _stop, free_port

openai = pytest.importorskip("openai")

START_TIMEOUT_S = 120.0
MESSAGES = [{"role": "user", "content": "tell me a long story"}]


class Server:
    def __init__(self, home: Path, grace: float, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "AUTOGLM_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "autoglm", "serve", "--model", "autoglm-demo", "--port", str(self.port),
               "--max-num-seqs", "8", "--shutdown-grace", str(grace), "--no-gateway", "--access-log", "off",
               "--log-level", "warning"]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.process.poll() is None, f"serve exited early:\n{self.log()}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve not healthy:\n{self.log()}"
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture()
def start_server(autoglm_home, tmp_path):
    started: list[Server] = []

    def start(grace: float) -> Server:
        started.append(Server(autoglm_home, grace, tmp_path / f"serve-{len(started)}.log"))
        return started[-1]

    yield start
    for s in started:
        _stop(s.process)


class SdkStream(threading.Thread):
    """One ``stream=True`` chat completion; records its chunks and how it ended."""

    def __init__(self, client, max_tokens: int):
        super().__init__(daemon=True)
        self.client, self.max_tokens = client, max_tokens
        self.started = threading.Event()
        self.tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stream = self.client.chat.completions.create(
                model="autoglm-demo", messages=MESSAGES, max_tokens=self.max_tokens, stream=True,
                extra_body={"ignore_eos": True})
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        self.tokens += 1
                        self.started.set()
                    if choice.finish_reason:
                        self.finish_reason = choice.finish_reason
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc
        finally:
            self.started.set()


class RawStream(threading.Thread):
    """The same request over plain httpx, keeping every SSE ``data:`` line as it came."""

    def __init__(self, url: str, max_tokens: int):
        super().__init__(daemon=True)
        self.url, self.max_tokens = url, max_tokens
        self.started = threading.Event()
        self.data: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"model": "autoglm-demo", "messages": MESSAGES, "max_tokens": self.max_tokens, "stream": True,
                "ignore_eos": True}
        try:
            with httpx.stream("POST", self.url + "/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.data.append(line[len("data: "):])
                        self.started.set()
        except BaseException as exc:  # noqa: BLE001 - a cut connection lands here
            self.error = exc
        finally:
            self.started.set()


def sigterm_when_streaming(server: Server, streams: list[threading.Thread]) -> float:
    for s in streams:
        s.start()
    for s in streams:
        assert s.started.wait(60), f"no stream output:\n{server.log()}"
    server.process.send_signal(signal.SIGTERM)
    return time.monotonic()


def test_sigterm_lets_running_streams_finish_and_exits_0(start_server):
    grace = 30.0
    server = start_server(grace)
    sdk = [SdkStream(server.client(), max_tokens=160) for _ in range(4)]
    raw = RawStream(server.url, max_tokens=160)
    sent = sigterm_when_streaming(server, [*sdk, raw])
    time.sleep(0.4)  # the drain has begun (the signal is acted on within 0.1 s)
    health = httpx.get(server.url + "/health", timeout=5)
    with pytest.raises(openai.APIStatusError) as refused:
        server.client().chat.completions.create(model="autoglm-demo", messages=MESSAGES, max_tokens=2)
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "server_shutting_down" and refused.value.body["type"] == "service_unavailable"
    assert health.status_code == 503 and health.json() == {"status": "draining"}
    for s in [*sdk, raw]:
        s.join(60)
    code = server.process.wait(timeout=grace)
    took = time.monotonic() - sent
    for s in sdk:
        assert s.error is None, f"{s.error!r}\n{server.log()}"
        assert s.finish_reason == "length" and s.tokens > 0
    assert raw.error is None and raw.data[-1] == "[DONE]"
    assert json.loads(raw.data[-2])["choices"][0]["finish_reason"] == "length"
    assert code == 0, server.log()
    assert took < grace
    assert "autoglm: stopped" in server.log() and "Traceback" not in server.log()


def test_too_short_a_grace_period_ends_streams_with_an_error_event(start_server):
    grace = 1.0
    server = start_server(grace)
    raw = [RawStream(server.url, max_tokens=1500) for _ in range(3)]
    sdk = SdkStream(server.client(), max_tokens=1500)
    sent = sigterm_when_streaming(server, [*raw, sdk])
    for s in [*raw, sdk]:
        s.join(60)
    code = server.process.wait(timeout=30)
    took = time.monotonic() - sent
    for s in raw:
        assert s.error is None, f"connection broken: {s.error!r}\n{server.log()}"
        assert s.data[-1] == "[DONE]"
        err = json.loads(s.data[-2])["error"]
        assert err["code"] == "server_shutting_down" and "grace period" in err["message"]
        assert all(json.loads(d).get("object") == "chat.completion.chunk" for d in s.data[:-2])  # whole events
    # the SDK reads the error event as an APIError, not as a dropped connection
    assert isinstance(sdk.error, openai.APIError) and not isinstance(sdk.error, openai.APIConnectionError)
    assert "shutting down" in str(sdk.error)
    assert code == 0, server.log()
    assert took < grace + 15, f"took {took:.1f}s"
    assert "still running after the grace period" in server.log()
