"""The served-model monitor in real server processes: two ``autoglm serve`` processes share one SQLite state
store, the official openai client sends the traffic, and /metrics of both reports the same drift and AUC."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from autoglm.gateway.store import open_store
from autoglm.monitoring.window_store import WindowStore
from tests.conftest import _stop, start_live_server

MODEL = "autoglm-demo"
ADMIN = "monitor-admin-key"
ENGLISH = ["Hello there, how are you today?", "What is the weather like in Paris?"]
CHINESE = ["请详细解释一下机器学习中的梯度下降算法以及它的各种变体，并举例说明。" * 6,
           "请用中文写一篇关于城市交通拥堵问题的分析，包括原因、影响和可能的解决办法。" * 6]
DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def servers(autoglm_home, tmp_path_factory):
    """Two server processes with 2-second windows, one state store; yields (servers, store URL, an API key)."""
    d = tmp_path_factory.mktemp("monitor")
    store_url = f"sqlite:///{d / 'state.db'}"
    deploy = d / "deploy.yaml"
    deploy.write_text(f"""
models:
  - name: {MODEL}
    max_num_seqs: 8
gateway:
  state_store: {store_url}
  admin_key: {ADMIN}
  metrics_public: true
monitoring:
  window: 2
  flush_interval: 0.5
  reference_windows: 1
  min_requests: 4
  min_labels: 6
server:
  log_level: warning
  access_log: "off"
  shutdown_grace: 1
""")
    started = []
    try:  # one after the other: on a loaded machine two loading at once can each miss the start timeout
        for _ in range(2):
            started.append(start_live_server(Path(autoglm_home), MODEL, "--config", str(deploy)))
        reply = httpx.post(started[0].url + "/admin/keys", json={"name": "monitor-test"},
                           headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        assert reply.status_code == 201, reply.text
        yield started, store_url, reply.json()["key"]  # the key works on both: they share the store
    finally:
        for s in started:
            _stop(s.process)


def metric(server, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def send(clients: list[OpenAI], texts: list[str], n: int) -> None:
    for i in range(n):
        kwargs = dict(model=MODEL, messages=[{"role": "user", "content": texts[i % len(texts)]}], max_tokens=4,
                      temperature=0)
        client = clients[i % len(clients)]
        if i % 4 == 3:  # streamed responses are monitored too
            for _ in client.chat.completions.create(stream=True, **kwargs):
                pass
        else:
            client.chat.completions.create(**kwargs)


def wait_for(what: str, check, step=None, deadline_s: float = DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        if step is not None:
            step()
        else:
            time.sleep(0.25)


def test_injected_drift_raises_the_drift_rate_on_both_servers_and_an_unchanged_mix_does_not(servers):
    started, store_url, key = servers
    clients = [OpenAI(base_url=s.base_url, api_key=key, max_retries=0) for s in started]
    with open_store(store_url) as store:
        ws = WindowStore(store)
        # 1. short English prompts until the first windows have become the reference
        wait_for("the reference", lambda: (ref := ws.reference(MODEL)) is not None and ref.complete,
                 step=lambda: send(clients, ENGLISH, 8))
        # 2. control: the same mix, until two windows were tested - none fires, the rate stays 0
        wait_for("two tested windows", lambda: ws.drift_rate(model=MODEL).tested >= 2,
                 step=lambda: send(clients, ENGLISH, 8))
        rate = ws.drift_rate(model=MODEL)
        assert rate.fired == 0, [w.to_dict() for w in ws.windows(model=MODEL)]
        for s in started:
            wait_for("the quiet windows on /metrics",
                     lambda s=s: (metric(s, "autoglm:drift_windows", model_name=MODEL, state="quiet") or 0) >= 2)
            assert metric(s, "autoglm:prediction_drift_rate", model_name=MODEL) == 0.0
            assert metric(s, "autoglm:drift_reference_ready", model_name=MODEL) == 1.0
        # 3. long Chinese prompts: the windows drift, and the rate rises above 0 on both servers
        def language_drifted() -> list:  # (the window of the switch, mostly English, may fire on tokens only)
            return [w for w in ws.windows(model=MODEL) if w.state == "fired" and w.drift["language"]["fired"]]

        drifted = wait_for("a window that drifted in language", language_drifted,
                           step=lambda: send(clients, CHINESE, 8))[-1]
        assert drifted.drift["prompt_tokens"]["psi"] > 0.25, drifted.drift  # large (significant with more requests)
        for s in started:
            wait_for("the drift rate on /metrics",
                     lambda s=s: (metric(s, "autoglm:prediction_drift_rate", model_name=MODEL) or 0) > 0)
        wait_for("the language PSI on /metrics",
                 lambda: (metric(started[0], "autoglm:drift_psi", model_name=MODEL, signal="language") or 0) > 0.25)

        # 4. traffic stops: once every window is evaluated, both processes report the store's value
        def settled() -> bool:
            if ws.pending():
                return False
            expected = ws.drift_rate(model=MODEL, since=time.time() - 3600).rate
            return all(metric(s, "autoglm:prediction_drift_rate", model_name=MODEL) == expected for s in started)

        wait_for("both servers to report the same drift rate", settled)
        assert all(w.instances <= 2 for w in ws.windows(model=MODEL))
        assert any(w.instances == 2 for w in ws.windows(model=MODEL))  # both processes' counts in one window
        assert "Hello" not in store.dump() and "梯度" not in "\n".join(  # the monitor keeps no text
            str(r) for t in ("mon_windows", "mon_partials", "mon_reference")
            for r in store.execute(f"SELECT * FROM {t}"))


SCORE_FORMAT = {"type": "json_schema", "json_schema": {"name": "score", "schema": {
    "type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"],
    "additionalProperties": False}}}


def test_labels_that_agree_with_the_scores_give_a_high_auc_and_flipped_ones_a_low_one(servers):
    import json

    started, _, key = servers
    client = OpenAI(base_url=started[0].base_url, api_key=key, max_retries=0)
    auth = {"Authorization": f"Bearer {key}"}
    scored = []
    for i in range(8):  # a classifier-like answer: JSON with a score (guided decoding)
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Is #{i} spam?"}],
                                           max_tokens=24, temperature=1.0, seed=i, response_format=SCORE_FORMAT)
        scored.append((json.loads(r.choices[0].message.content)["score"], r.id))
    scored.sort()
    agree = [{"id": rid, "label": int(k >= len(scored) // 2)} for k, (_, rid) in enumerate(scored)]
    labels_url = started[0].base_url + "/monitor/labels"
    reply = httpx.post(labels_url, json={"labels": agree}, headers=auth, timeout=30)
    assert reply.status_code == 200, reply.text
    assert [d["id"] for d in reply.json()["data"]] == [a["id"] for a in agree]
    for s in started:  # the other process reads the same labels from the store
        wait_for("AUC 1.0", lambda s=s: metric(s, "autoglm:model_auc", model_name=MODEL) == 1.0)
    assert metric(started[1], "autoglm:model_auc_labels", model_name=MODEL) == 8.0

    flipped = [{"id": a["id"], "label": 1 - a["label"]} for a in agree]  # the labels are corrected the other way
    assert httpx.post(labels_url, json={"labels": flipped}, headers=auth, timeout=30).status_code == 200
    for s in started:
        wait_for("AUC 0.0", lambda s=s: metric(s, "autoglm:model_auc", model_name=MODEL) == 0.0)


def test_the_labels_api_rejects_bad_input_with_openai_errors(servers):
    started, _, key = servers
    auth = {"Authorization": f"Bearer {key}"}
    url = started[0].base_url + "/monitor/labels"
    cases = [
        ({"id": "chatcmpl-unknown", "label": 1}, 404, "id"),
        ({"id": "x", "label": 2}, 400, "label"),
        ({"model": MODEL, "score": "high", "label": 1}, 400, "score"),
        ({"model": "no-such-model", "score": 0.5, "label": 1}, 404, None),
        ({"labels": [{"model": MODEL, "score": 0.5, "label": 1}, {"id": "x", "score": 1, "label": 0}]}, 400,
         "labels[1].id"),
        ({"id": "x", "label": 1, "extra": True}, 400, "extra"),
        ([1, 2], 400, "body"),
    ]
    for body, status, param in cases:
        r = httpx.post(url, json=body, headers=auth, timeout=10)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["message"]
        if param is not None:
            assert err["param"] == param, (body, err)
    assert httpx.post(url, content=b"{not json", headers=auth, timeout=10).status_code == 400
    assert httpx.post(url, json={"model": MODEL, "score": 0.5, "label": 1}, timeout=10).status_code == 401
    ok = httpx.post(url, json={"model": MODEL, "score": 0.5, "label": 1}, headers=auth, timeout=10)
    assert ok.status_code == 200 and ok.json()["data"][0]["id"].startswith("lbl-")


def test_admin_monitor_needs_the_admin_key(servers):
    started, _, key = servers
    url = started[0].url + "/admin/monitor"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 401  # not admin
    r = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert r.status_code == 200 and MODEL in r.json()["models"]
    assert r.json()["models"][MODEL]["reference"] in ("none", "learning", "ready")
