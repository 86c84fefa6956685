"""Scaling replicas on a real server: ``autoglm serve`` on the demo model, scaled 1 -> 2 -> 1 through
``POST /admin/deployments/{name}/scale`` while official openai clients keep streaming; no request fails,
the route's replicas change, the new replica takes requests (the router spreads equal loads), the
planner's choice and reasons come back, and bad bodies are 400s. :func:`scale_plan` refuses replicas
that would not fit a small device and accepts them on a large one.
"""
from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import _stop, start_live_server

openai = pytest.importorskip("openai")

ADMIN = "scale-test-admin-key"
AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def server(autoglm_home):
    srv = start_live_server(autoglm_home, "autoglm-demo", "--admin-key", ADMIN, "--max-num-seqs", "4",
                            "--log-level", "warning")
    yield srv
    _stop(srv.process)


def _entry(server) -> dict:
    return httpx.get(f"{server.url}/admin/deployments/autoglm-demo", headers=AUTH, timeout=30).json()


def _scale(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/admin/deployments/autoglm-demo/scale", json=body, headers=AUTH, timeout=300)


def test_scale_up_and_down_under_load_fails_nothing(server):
    client = openai.OpenAI(base_url=server.base_url, api_key=ADMIN, max_retries=0, timeout=120)
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def load() -> None:
        while not stop.is_set():
            try:
                stream = client.chat.completions.create(model="autoglm-demo", stream=True, max_tokens=12,
                                                        messages=[{"role": "user", "content": "count to ten"}])
                finish = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
                if finish not in (["length"], ["stop"]):
                    failures.append(f"stream ended with {finish}")
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        assert [b["label"] for b in _entry(server)["backends"]] == ["autoglm-demo"]
        up = _scale(server, {"replicas": 2})
        assert up.status_code == 200, up.text
        body = up.json()
        assert body["from"] == 1 and body["to"] == 2 and body["added"] == ["autoglm-demo#0"]
        plan = body["plan"]
        assert plan["fits"] and plan["precision"] and plan["needed_bytes"] > 0
        assert any("1 more replica(s)" in r and "fits" in r for r in plan["reasons"]), plan["reasons"]
        entry = _entry(server)
        assert entry["replicas"] == 2 and [b["label"] for b in entry["backends"]] == ["autoglm-demo", "autoglm-demo#0"]
        metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
        assert 'model_name="autoglm-demo#0"' in metrics  # the engine map sees the new replica
        # sequential requests: the router spreads equal loads, so the new replica serves too
        for _ in range(4):
            client.chat.completions.create(model="autoglm-demo", max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
        served = {b["label"]: b["served"] for b in _entry(server)["backends"]}
        assert served["autoglm-demo#0"] >= 1, served
        same = _scale(server, {"replicas": 2})
        assert same.status_code == 200 and same.json()["added"] == [] and same.json()["removed"] == []
        down = _scale(server, {"replicas": 1, "drain_s": 60})
        assert down.status_code == 200, down.text
        assert down.json()["removed"] == ["autoglm-demo#0"] and down.json()["drained"] is True
        entry = _entry(server)
        assert entry["replicas"] == 1 and [b["label"] for b in entry["backends"]] == ["autoglm-demo"]
        assert 'model_name="autoglm-demo#0"' not in httpx.get(f"{server.url}/metrics", headers=AUTH).text
        before = done[0]
        client.chat.completions.create(model="autoglm-demo", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert failures == [] and done[0] >= before >= 1


@pytest.mark.parametrize("body,param", [({"replicas": 0}, "replicas"), ({"replicas": "2"}, "replicas"),
                                        ({"replicas": True}, "replicas"), ({}, "replicas"),
                                        ({"replicas": 2, "drain_s": -1}, "drain_s"),
                                        ({"replicas": 2, "bogus": 1}, "bogus")])
def test_bad_bodies_are_400_naming_the_field(server, body, param):
    r = _scale(server, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_unknown_model_and_missing_key(server):
    r = httpx.post(f"{server.url}/admin/deployments/nope/scale", json={"replicas": 2}, headers=AUTH)
    assert r.status_code == 404 and "autoglm-demo" in r.json()["error"]["message"]
    assert httpx.post(f"{server.url}/admin/deployments/autoglm-demo/scale", json={"replicas": 2}).status_code == 401


def test_scale_plan_refuses_what_does_not_fit(autoglm_home):
    from autoglm.config import EngineSettings
    from autoglm.deploy.live import scale_plan
    from autoglm.hub.demo import ensure_demo_model
    from autoglm.quantization.device import DeviceInfo

    class Engine:  # what scale_plan reads of a serving engine: where its model is and the precision chosen
        info = {"path": str(ensure_demo_model("autoglm-demo", autoglm_home)), "precision": "fp32"}

    settings = EngineSettings(model="autoglm-demo", quantize="fp32", max_num_seqs=4, max_model_len=256)
    gib = 1024**3
    big = DeviceInfo(kind="cpu", name="test cpu", total_bytes=64 * gib, free_bytes=64 * gib)
    ok = scale_plan(Engine(), settings, 3, device=big)
    assert ok["fits"] and ok["precision"] == "fp32" and ok["needed_bytes"] >= 3 * ok["per_replica_bytes"] * 0.99
    need = ok["needed_bytes"]
    tight = DeviceInfo(kind="cpu", name="test cpu", total_bytes=64 * gib, free_bytes=int(need * 0.8))
    refused = scale_plan(Engine(), settings, 3, device=tight)
    assert not refused["fits"] and "does not fit" in refused["reasons"][-1]
    unknown = scale_plan(type("Scripted", (), {"info": {}})(), settings, 2, device=tight)
    assert unknown["fits"] and "no memory plan" in unknown["reasons"][0]
