"""Zero-downtime swap on a real server: ``autoglm serve`` under continuous streaming load from several
official openai clients, swapped twice (to a LoRA adapter over the loaded base, then to a full model
directory whose replies are empty), with no failed request and no cut stream; a swap to a missing or
broken source keeps the old version serving; launch and stop; admin key required.

The full variant has an all-zero ``lm_head``: every logit ties, greedy decoding picks token 0
(``<|endoftext|>``), so its every reply is empty with ``finish_reason: stop`` whatever the batch; the
demo model's reply to the same prompt is not. That is how a reply tells which version made it.
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import _stop, start_live_server

openai = pytest.importorskip("openai")
pytest.importorskip("peft")

ADMIN = "swap-test-admin-key"
NO_CACHE = {"Cache-Control": "no-cache, no-store"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


@pytest.fixture(scope="module")
def variants(autoglm_home, tmp_path_factory) -> dict[str, Path]:
    """An adapter over the demo model, the demo model with a zero lm_head, and a broken directory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from autoglm.hub.demo import ensure_demo_model

    tmp = tmp_path_factory.mktemp("swap-variants")
    base = Path(ensure_demo_model("autoglm-demo", autoglm_home))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                      "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a delta large enough to change the greedy reply
    adapter = tmp / "adapter"
    peft_model.save_pretrained(adapter)
    _copy_tokenizer(base, adapter)

    silent = tmp / "silent"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(silent)
    _copy_tokenizer(base, silent)

    broken = tmp / "broken"
    broken.mkdir()
    shutil.copy2(base / "config.json", broken / "config.json")
    _copy_tokenizer(base, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file" * 100)
    return {"base": base, "adapter": adapter, "silent": silent, "broken": broken}


@pytest.fixture(scope="module")
def server(autoglm_home, variants):
    srv = start_live_server(autoglm_home, "autoglm-demo", "--admin-key", ADMIN, "--quantize", "none",
                            "--max-num-seqs", "8", "--cache", "memory", "--log-level", "warning")
    yield srv
    _stop(srv.process)


def admin(server, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=300, **kw)


def ask(client, model: str = "autoglm-demo", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell me a story"}],
                                          max_tokens=12, temperature=0, extra_headers=NO_CACHE, **kw)


class Load:
    """Several threads, each its own openai client, streaming chat completions back to back."""

    def __init__(self, server, clients: int = 3, max_tokens: int = 16):
        self.server, self.max_tokens = server, max_tokens
        self.results: list[dict] = []  # {"started", "first", "ended", "text", "finish", "chunks"}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        self._lock = threading.Lock()

    def _run(self, i: int) -> None:
        client = openai.OpenAI(base_url=self.server.base_url, api_key=ADMIN, max_retries=0, timeout=120)
        n = 0
        while not self._stop.is_set():
            n += 1
            started = time.time()
            try:
                stream = client.chat.completions.create(
                    model="autoglm-demo", stream=True, max_tokens=self.max_tokens, temperature=0,
                    messages=[{"role": "user", "content": f"client {i} request {n}: tell me a story"}],
                    extra_headers=NO_CACHE)
                text, finish, chunks, first = "", None, 0, None
                for chunk in stream:
                    first = first or time.time()  # bytes came back: the request was dispatched by now
                    chunks += 1
                    for choice in chunk.choices:
                        text += choice.delta.content or ""
                        finish = choice.finish_reason or finish
                with self._lock:
                    self.results.append({"started": started, "first": first, "ended": time.time(), "text": text,
                                         "finish": finish, "chunks": chunks})
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                with self._lock:
                    self.errors.append(f"client {i} request {n}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) + len(self.errors) < count:
            assert time.monotonic() < deadline, f"only {len(self.results)} requests in {timeout}s"
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)


def test_admin_key_is_required(server):
    assert httpx.get(server.url + "/admin/deployments", timeout=10).status_code == 401
    r = admin(server, "GET", "/admin/deployments")
    assert r.status_code == 200, r.text
    (entry,) = r.json()["data"]
    assert entry["name"] == "autoglm-demo" and entry["source"] == "autoglm-demo"
    assert entry["status"] == "ok" and entry["replicas"] == 1 and entry["engine"] == "transformers"
    assert entry["version"] is None


def test_swap_under_streaming_load_fails_nothing(server, variants):
    client = openai.OpenAI(base_url=server.base_url, api_key=ADMIN, max_retries=0, timeout=120)
    before = ask(client).choices[0]
    assert before.message.content and before.finish_reason == "length"  # the demo model says something
    cached = client.chat.completions.create(model="autoglm-demo", messages=[{"role": "user", "content": "cache me"}],
                                            max_tokens=6, temperature=0)
    with Load(server) as load:
        load.wait_for(4)
        r = admin(server, "POST", "/admin/deployments/autoglm-demo/swap", json={"source": str(variants["adapter"])})
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["mode"] == "adapter" and first["to"] == str(variants["adapter"]) and first["drained"] is True
        after_adapter = ask(client).choices[0]
        assert after_adapter.message.content != before.message.content  # the adapter's deltas are served
        n = len(load.results)
        load.wait_for(n + 4)
        r = admin(server, "POST", "/admin/deployments/autoglm-demo/swap",
                  json={"source": str(variants["silent"]), "drain_s": 60})
        assert r.status_code == 200, r.text
        second = r.json()
        assert second["mode"] == "full" and second["from"] == str(variants["adapter"]) and second["drained"] is True
        switched = second["switched_at"]  # the server's wall clock: same host
        n = len(load.results)
        load.wait_for(n + 6)
    assert not load.errors, load.errors[:5]
    assert len(load.results) >= 14
    for res in load.results:  # every stream ran to its end: a finish reason, no cut
        assert res["finish"] in ("length", "stop"), res
    late = [res for res in load.results if res["started"] > switched]
    assert late and all(res["text"] == "" and res["finish"] == "stop" for res in late), late[:3]
    # streams in flight at the switch finished on the old version: whole, with its (non-empty) text
    in_flight = [[res for res in load.results if res["first"] < at < res["ended"]]
                 for at in (first["switched_at"], switched)]
    assert in_flight[0] or in_flight[1]  # the load did straddle a switch (3 clients streaming back to back)
    assert all(res["text"] for res in in_flight[1]), in_flight[1]  # finished by the old version, not the silent one
    # the response cache was cleared by the swap: the same deterministic request gets the new answer
    again = client.chat.completions.create(model="autoglm-demo", messages=[{"role": "user", "content": "cache me"}],
                                           max_tokens=6, temperature=0)
    assert cached.choices[0].message.content and again.choices[0].message.content == ""
    (entry,) = admin(server, "GET", "/admin/deployments").json()["data"]
    assert entry["source"] == str(variants["silent"]) and entry["status"] == "ok"


def test_a_broken_source_keeps_the_old_version_serving(server, variants):
    client = openai.OpenAI(base_url=server.base_url, api_key=ADMIN, max_retries=0, timeout=120)
    serving = admin(server, "GET", "/admin/deployments").json()["data"][0]["source"]
    reference = ask(client).choices[0].message.content
    r = admin(server, "POST", "/admin/deployments/autoglm-demo/swap", json={"source": "./no/such/model/dir"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "swap_refused" and "does not exist" in r.json()["error"]["message"]
    r = admin(server, "POST", "/admin/deployments/autoglm-demo/swap", json={"source": str(variants["broken"])})
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "swap_failed" and "did not load" in r.json()["error"]["message"]
    r = admin(server, "POST", "/admin/deployments/autoglm-demo/swap", json={"source": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "source"
    r = admin(server, "POST", "/admin/deployments/nope/swap", json={"source": str(variants["base"])})
    assert r.status_code == 404
    assert ask(client).choices[0].message.content == reference
    (entry,) = admin(server, "GET", "/admin/deployments").json()["data"]
    assert entry["source"] == serving and entry["status"] == "ok"


def test_launch_and_stop(server):
    client = openai.OpenAI(base_url=server.base_url, api_key=ADMIN, max_retries=0, timeout=120)
    r = admin(server, "POST", "/admin/deployments", json={"name": "second", "source": "autoglm-demo", "max_num_seqs": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_num_seqs", r.text
    r = admin(server, "POST", "/admin/deployments", json={"name": "autoglm-demo"})
    assert r.status_code == 400 and "already served" in r.json()["error"]["message"]
    r = admin(server, "POST", "/admin/deployments",
              json={"name": "second", "source": "autoglm-demo", "max_num_seqs": 2, "aliases": ["two"]})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "second" and r.json()["status"] == "ok"
    names = [e["name"] for e in admin(server, "GET", "/admin/deployments").json()["data"]]
    assert names == ["autoglm-demo", "second"]
    assert {m.id for m in client.models.list()} >= {"autoglm-demo", "second", "two"}
    reply = ask(client, "two")
    assert reply.model == "second" and reply.choices[0].message.content
    r = admin(server, "DELETE", "/admin/deployments/second")
    assert r.status_code == 200 and r.json()["drained"] is True, r.text
    with pytest.raises(openai.NotFoundError):
        ask(client, "second")
    r = admin(server, "DELETE", "/admin/deployments/autoglm-demo")
    assert r.status_code == 409 and "only model" in r.json()["error"]["message"]
    assert ask(client).choices[0].finish_reason in ("stop", "length")
