"""``autoglm deploy`` end to end: real processes, the official openai SDK, a remote upstream that dies.

One upstream (``python -m autoglm serve --model autoglm-demo --api-key ...``) and one gateway
(``python -m autoglm deploy FILE``) whose file declares two local models (same weights, other settings,
aliases), ``remote-demo`` (the upstream, falling back to ``local-a``) and ``remote-strict`` (the same
upstream, no fallback), and one API key, created and printed once by the gateway.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import _stop, free_port

openai = pytest.importorskip("openai")

START_TIMEOUT_S = 120.0
UPSTREAM_KEY = "upstream-secret-key"
HEALTH_INTERVAL_S = 0.5


class Proc:
    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str]):
        self.cmd, self.log_path, self.env = cmd, log_path, env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            if self.process.poll() is not None:
                pytest.fail(f"{self.cmd[3]} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"no {pattern!r} after {timeout:.0f}s:\n{self.log()[-4000:]}")


def wait_healthy(url: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy after {timeout:.0f}s")


@pytest.fixture(scope="module")
def stack(autoglm_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy-live")
    env = {**os.environ, "AUTOGLM_HOME": str(autoglm_home), "PYTHONUNBUFFERED": "1"}
    env.pop("AUTOGLM_ADMIN_KEY", None)
    up_port, gw_port = free_port(), free_port()
    upstream = Proc([sys.executable, "-m", "autoglm", "serve", "--model", "autoglm-demo", "--port", str(up_port),
                     "--max-num-seqs", "4", "--api-key", UPSTREAM_KEY, "--log-level", "warning"],
                    tmp / "upstream.log", env)
    deploy_file = tmp / "autoglm.yaml"
    deploy_file.write_text(f"""\
models:
  - name: local-a
    source: autoglm-demo
    aliases: [a, default]
    max_num_seqs: 4
  - name: local-b
    source: autoglm-demo
    aliases: [b]
    max_model_len: 256
    max_num_seqs: 2
    replicas: 2
  - name: remote-demo
    aliases: [remote]
    upstream:
      url: http://127.0.0.1:{up_port}
      api_key: ${{DEPLOY_TEST_UPSTREAM_KEY}}
      model: autoglm-demo
      connect_timeout: 2
    fallback: local-a
  - name: remote-strict
    upstream:
      url: http://127.0.0.1:{up_port}/v1
      api_key: ${{DEPLOY_TEST_UPSTREAM_KEY}}
      model: autoglm-demo
gateway:
  state_store: {tmp / "state.db"}
  cache: {{backend: none}}
  keys:
    - name: app
routing:
  retries: 1
  backoff: 0.05
  health_check_interval: {HEALTH_INTERVAL_S}
  ready_timeout: 60
server:
  port: {gw_port}
  log_level: warning
""")
    gateway = Proc([sys.executable, "-m", "autoglm", "deploy", str(deploy_file)], tmp / "gateway.log",
                   {**env, "DEPLOY_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    upstream.start()
    gateway.start()
    try:
        wait_healthy(f"http://127.0.0.1:{up_port}")
        gateway.wait_for(r"serving 4 model\(s\)")
        key = gateway.wait_for(r"created API key 'app': (agl-\S+)").group(1)
        yield {"gateway": gateway, "upstream": upstream, "url": f"http://127.0.0.1:{gw_port}", "key": key,
               "up_url": f"http://127.0.0.1:{up_port}"}
    finally:
        gateway.stop()
        upstream.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack["url"] + "/v1", api_key=stack["key"], max_retries=0, timeout=60)


def keyed(stack) -> dict[str, str]:
    """/health shows per-model details only to a caller with a key once keys exist."""
    return {"Authorization": f"Bearer {stack['key']}"}


def chat(client, model: str, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=kw.pop("max_tokens", 4), temperature=kw.pop("temperature", 0),
                                          **kw)


def test_key_printed_once_and_required(stack):
    log = stack["gateway"].log()
    assert log.count(stack["key"]) == 1
    assert UPSTREAM_KEY not in log  # the upstream's key is never printed or logged
    r = httpx.post(stack["url"] + "/v1/chat/completions", json={"model": "a", "messages": []}, timeout=10)
    assert r.status_code == 401 and "error" in r.json()


def test_models_lists_local_remote_and_aliases(client):
    cards = {m.id: m for m in client.models.list().data}
    assert {"local-a", "local-b", "remote-demo", "remote-strict", "a", "default", "b", "remote"} <= set(cards)
    assert cards["remote"].model_extra["root"] == "remote-demo"
    assert cards["a"].model_extra["root"] == "local-a"


def test_two_local_models_by_name_and_alias(client):
    for name, served in (("local-a", "local-a"), ("a", "local-a"), ("local-b", "local-b"), ("b", "local-b")):
        r = chat(client, name)
        assert r.model == served and r.usage.completion_tokens >= 1
    # local-b's own limit (256) applies, local-a's does not
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="b", prompt="x " * 300, max_tokens=2)
    assert client.completions.create(model="a", prompt="x " * 300, max_tokens=2).choices[0].text is not None


def test_unknown_model_is_404_listing_names(client):
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, "nope")
    assert "remote-demo" in str(info.value) and "local-b" in str(info.value)


def test_remote_upstream_non_stream_and_stream(client, stack):
    r = chat(client, "remote-demo", max_tokens=5)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens >= 1
    r2 = chat(client, "remote", max_tokens=5)  # alias; temperature 0 on the same upstream: same text
    assert r2.choices[0].message.content == r.choices[0].message.content
    chunks = list(chat(client, "remote-demo", max_tokens=5, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    # upstream 4xx comes back as an OpenAI error object
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "remote-demo", temperature=7)
    assert info.value.body is not None and "temperature" in str(info.value)


def test_upstream_down_fallback_503_then_back(client, stack):
    upstream = stack["upstream"]
    upstream.stop()
    t0 = time.monotonic()
    # remote-demo falls back to local-a; remote-strict has no fallback: a clean 503 error object
    r = chat(client, "remote-demo")
    assert r.model == "local-a"
    with pytest.raises(openai.APIStatusError) as info:
        chat(client, "remote-strict")
    assert info.value.status_code == 503
    assert info.value.body["code"] == "model_unavailable"
    assert time.monotonic() - t0 < 15  # no hang
    health = httpx.get(stack["url"] + "/health", timeout=5, headers=keyed(stack)).json()
    assert health["models"]["remote-strict"]["status"] == "down"
    assert health["models"]["local-a"]["status"] == "ok"
    # streams fall back too
    chunks = list(chat(client, "remote", stream=True))
    assert chunks and all(c.model == "local-a" for c in chunks)

    upstream.start()
    wait_healthy(stack["up_url"])
    deadline = time.monotonic() + HEALTH_INTERVAL_S + 10
    while time.monotonic() < deadline:
        if httpx.get(stack["url"] + "/health", timeout=5, headers=keyed(stack)).json()["models"]["remote-strict"]["status"] == "ok":
            break
        time.sleep(0.1)
    else:
        pytest.fail("upstream did not come back within the health-check interval")
    assert chat(client, "remote-strict").usage.completion_tokens >= 1
    assert chat(client, "remote-demo").model != "local-a"
