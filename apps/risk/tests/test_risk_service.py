"""The decision service on the demo's trained model (a copy of its working directory): the decision's
shape with reasons, 400s naming the field, keys, the review queue with its conflicts, labels posted to
autoglm's feedback store, a /metrics that has every metric the dashboard and the alerts name; and reviewer
summaries by a real `autoglm serve` process on the demo model (random weights: the text is noise), written in
the background for review cases only, with a dead model server costing the decisions nothing.

(One file with the service tests: they share the demo's working directory, built once per test worker.)"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
STATIC = "static-test-key-0123456789"


@pytest.fixture(scope="module")
def service(demo_run, tmp_path_factory):
    from autoglm.gateway import create_key, open_store

    from autoglm_risk.app import build_engine
    from autoglm_risk.service import KeyChecker, build_risk_app
    from autoglm_risk.workdir import Workdir

    src, _, _ = demo_run
    root = tmp_path_factory.mktemp("risk-service") / "work"
    shutil.copytree(src, root)
    meta = json.loads((root / "workdir.json").read_text())
    meta["store"] = str(root / "risk.duckdb")
    (root / "workdir.json").write_text(json.dumps(meta))
    wd = Workdir(root)
    gw = open_store(str(wd.home / "state.db"))
    gateway_key, _ = create_key(gw, "service-test")
    engine = build_engine(wd)
    app = build_risk_app(engine, KeyChecker([STATIC], gw))
    with TestClient(app) as client:
        yield client, engine, gateway_key, meta
    gw.close()


def _txn(meta, **over):
    body = {"user_id": 3, "card_id": 3, "device_id": 3, "merchant_id": 10, "amount": 25.5, "ip": "10.0.1.2",
            "ts": int(meta["stream_from"]) + 3 * 86_400_000}
    body.update(over)
    return body


def _auth(key: str = STATIC) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_decide_answers_with_score_reasons_and_a_stored_decision(service):
    client, engine, _, meta = service
    r = client.post("/v1/risk/decide", json=_txn(meta), headers=_auth())
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) >= {"decision", "score", "rule_hits", "reasons", "model_version", "decision_id"}
    assert d["decision"] in ("approve", "review", "strong_verify", "block")
    assert 0.0 <= d["score"] <= 1.0 and d["model_version"].startswith("risk/")
    assert 1 <= len(d["reasons"]) <= 3 and all(x["text"] for x in d["reasons"])
    stored = client.get(f"/v1/risk/decisions/{d['decision_id']}", headers=_auth()).json()
    assert stored["decision"] == d["decision"] and stored["txn_id"] == d["transaction_id"]
    # the transaction is history now: the same card again within the hour counts it
    again = engine.decide(_txn(meta, ts=_txn(meta)["ts"] + 60_000), store=False)
    assert again.features["card_cnt_1h"] >= 1


@pytest.mark.parametrize("change, param", [
    ({"amount": None}, "amount"),
    ({"amount": "lots"}, "amount"),
    ({"amount": -5}, "amount"),
    ({"ip": "999.1.1.1"}, "ip"),
    ({"card_number": "4111111111111111"}, "card_number"),
    ({"user_id": "u-1"}, "user_id"),
])
def test_malformed_transactions_are_400_naming_the_field(service, change, param):
    client, _, _, meta = service
    body = _txn(meta)
    for k, v in change.items():
        if v is None:
            body.pop(k)
        else:
            body[k] = v
    r = client.post("/v1/risk/decide", json=body, headers=_auth())
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_lookups_that_fail_are_400_too(service):
    client, _, _, meta = service
    r = client.post("/v1/risk/decide", json=_txn(meta, merchant_id=10**9), headers=_auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "merchant_id"
    r = client.post("/v1/risk/decide", json=_txn(meta, ip="192.0.2.1"), headers=_auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "ip"


def test_keys(service):
    client, _, gateway_key, meta = service
    assert client.post("/v1/risk/decide", json=_txn(meta)).status_code == 401
    r = client.post("/v1/risk/decide", json=_txn(meta), headers=_auth("agl-not-a-real-key"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.post("/v1/risk/decide", json=_txn(meta), headers=_auth(gateway_key)).status_code == 200
    assert client.get("/health").status_code == 200  # health and metrics need no key


def test_review_queue_claim_resolve_and_feedback(service):
    client, engine, gateway_key, meta = service
    big = client.post("/v1/risk/decide", json=_txn(meta, amount=75_000.0, ts=_txn(meta)["ts"] + 3_600_000),
                      headers=_auth()).json()
    assert big["decision"] in ("strong_verify", "block")
    assert any(h["rule"] == "large_amount" for h in big["rule_hits"])
    if big["decision"] == "block":
        pytest.skip("the model blocked it outright; nothing to review")
    did = big["decision_id"]
    queue = client.get("/v1/risk/reviews", headers=_auth()).json()["data"]
    assert did in [c["decision_id"] for c in queue]
    assert client.post(f"/v1/risk/reviews/{did}/claim", json={"reviewer": "ana"}, headers=_auth()).status_code == 200
    r = client.post(f"/v1/risk/reviews/{did}/claim", json={"reviewer": "bob"}, headers=_auth())
    assert r.status_code == 409 and "ana" in r.json()["error"]["message"]
    r = client.post(f"/v1/risk/reviews/{did}/resolve", json={"label": "fraud", "reviewer": "bob"}, headers=_auth())
    assert r.status_code == 409
    r = client.post(f"/v1/risk/reviews/{did}/resolve", json={"label": "maybe"}, headers=_auth())
    assert r.status_code == 400 and r.json()["error"]["param"] == "label"
    r = client.post(f"/v1/risk/reviews/{did}/resolve", json={"label": "fraud", "reviewer": "ana", "note": "called"},
                    headers=_auth(gateway_key))
    assert r.status_code == 200 and r.json()["status"] == "resolved" and r.json()["label"] == "fraud"
    assert client.post(f"/v1/risk/reviews/{did}/resolve", json={"label": "legit"}, headers=_auth()).status_code == 409
    # the label is in the store for the next training export, and in autoglm's feedback store for the loop
    assert engine.store.query("SELECT is_fraud FROM transactions WHERE txn_id = :t",
                              {"t": big["transaction_id"]}) == [(1,)]
    fs = engine.feedback_store()
    ex = fs.get_exchange(did)
    assert ex is not None and ex.kind == "risk" and ex.response["decision"] == big["decision"]
    fb = [f for f in fs.list_feedback() if f.response_id == did]
    assert len(fb) == 1 and "label:fraud" in fb[0].tags and fb[0].key_id == "service-test"
    assert client.get("/v1/risk/decisions/dec_nope", headers=_auth()).status_code == 404


def test_metrics_has_what_the_dashboard_and_alerts_name(service):
    client, engine, _, meta = service
    for i in range(engine.monitor.min_rows):  # enough recent decisions for the drift gauges
        engine.decide(_txn(meta, user_id=i, card_id=i, device_id=i, ts=_txn(meta)["ts"] + i * 1000), store=False)
    client.post("/v1/risk/labels", json={"labels": [{"transaction_id": 1, "label": "legit"}]}, headers=_auth())
    text = client.get("/metrics").text
    exported = set(re.findall(r"^(risk_[a-z_]+)", text, flags=re.M))
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    named = {n for p in dash["panels"] for t in p["targets"] for n in re.findall(r"\brisk_[a-z_]+", t["expr"])}
    named |= set(re.findall(r"\brisk_[a-z_]+", (DEPLOY / "alerts.yaml").read_text()))
    assert named <= exported, named - exported
    assert 'risk_decisions_total{decision=' in text and "risk_auc_reference" in text


# -- reviewer summaries ------------------------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    """`autoglm serve --model autoglm-demo` on a free port: its /v1 URL."""
    home = tmp_path_factory.mktemp("summary-home")
    port, log = _port(), tmp_path_factory.mktemp("summary-log") / "serve.log"
    env = {**os.environ, "AUTOGLM_HOME": str(home)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "autoglm", "serve", "--model", "autoglm-demo", "--port",
                                 str(port), "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail("autoglm serve exited:\n" + log.read_text(errors="replace")[-4000:])
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("autoglm serve not healthy:\n" + log.read_text(errors="replace")[-4000:])
        time.sleep(0.25)
    yield url + "/v1"
    proc.terminate()
    proc.wait(timeout=30)


def _engine(demo_run, tmp_path_factory, summary):
    from autoglm_risk.app import build_engine
    from autoglm_risk.workdir import Workdir

    src, _, _ = demo_run
    root = tmp_path_factory.mktemp("risk-summary") / "work"
    shutil.copytree(src, root)
    meta = json.loads((root / "workdir.json").read_text())
    meta["store"] = str(root / "risk.duckdb")
    (root / "workdir.json").write_text(json.dumps(meta))
    return build_engine(Workdir(root), summary=summary), meta


def _txn(meta, **over):
    body = {"user_id": 5, "card_id": 5, "device_id": 5, "merchant_id": 10, "amount": 25.5, "ip": "10.0.1.2",
            "ts": int(meta["stream_from"]) + 3 * 86_400_000}
    body.update(over)
    return body


def _wait(engine, decision_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = engine.get(decision_id).get("summary")
        if got:
            return got
        time.sleep(0.2)
    return None


def _count(engine, outcome):
    return engine.registry.get_sample_value("risk_summaries_total", {"outcome": outcome}) or 0.0


def test_review_cases_get_a_summary_and_approvals_do_not(demo_run, tmp_path_factory, glm):
    from autoglm_risk.summary import SummaryConfig

    engine, meta = _engine(demo_run, tmp_path_factory, SummaryConfig(base_url=glm, model="autoglm-demo", max_tokens=24))
    try:
        flagged = engine.decide(_txn(meta, amount=75_000.0))  # the seed's rule: amount > 50,000 -> strong verify
        assert flagged.decision in ("strong_verify", "block", "review"), flagged
        if flagged.decision == "block":
            pytest.skip("the model blocked the test transaction; no review case to summarise")
        text = _wait(engine, flagged.decision_id)
        assert text, "no summary was stored for the review case"
        assert _count(engine, "ok") >= 1
        plain = engine.decide(_txn(meta, ts=int(meta["stream_from"]) + 3 * 86_400_000 + 60_000, amount=12.0))
        if plain.decision == "approve":
            time.sleep(1.0)
            assert engine.get(plain.decision_id)["summary"] is None
    finally:
        engine.close()


def test_a_dead_summary_server_costs_the_decisions_nothing(demo_run, tmp_path_factory):
    from autoglm_risk.summary import SummaryConfig

    dead = f"http://127.0.0.1:{_port()}/v1"  # nothing listens there
    engine, meta = _engine(demo_run, tmp_path_factory, SummaryConfig(base_url=dead, model="m", timeout_s=2))
    try:
        rec = engine.decide(_txn(meta, amount=80_000.0))
        assert rec.decision in ("strong_verify", "block", "review")
        deadline = time.monotonic() + 30
        while _count(engine, "error") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _count(engine, "error") >= 1
        assert engine.get(rec.decision_id)["summary"] is None
        assert engine.get(rec.decision_id)["decision"] == rec.decision  # stored as decided
    finally:
        engine.close()
