"""POST /admin/hooks/{name} on the real app (build_app, served by uvicorn on a free port): signature,
timestamp tolerance, replays, idempotency per delivery id, the redeploy callback; MLflow's own webhook
sender and autoglm's outbound sender as clients; receipts in the gateway's real SQLite state store."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import httpx
import pytest
import uvicorn

from autoglm.api.app import build_app
from autoglm.config import ServerSettings
from autoglm.gateway.facade import Gateway, GatewaySettings
from autoglm.gateway.store import open_store
from autoglm.registry.hooks_in import HookReceiver
from autoglm.registry.signing import sign
from autoglm.registry.webhook_config import InboundHook, OutboundTarget
from tests.api.fake_engine import FakeEngine
from tests.conftest import free_port

SECRET = "hook-secret-for-tests"
HOOKS_FILE = f"""\
inbound:
  - name: mlflow
    secret: {SECRET}
    action: redeploy
  - name: champions
    secret: {SECRET}
    aliases: [champion]
"""


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Redeploys:
    """The on_alias_set callback the app is given: counts its calls; fails while ``fail`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = False

    async def __call__(self, model: str, alias: str, version: str) -> dict:
        if self.fail:
            raise RuntimeError("swap failed")
        self.calls.append((model, alias, version))
        return {"swapped_to": version}


@pytest.fixture()
def server(fresh_home, tmp_path, monkeypatch):
    """The app with a gateway (admin key set, so nothing is open), served on a real port."""
    (tmp_path / "hooks.yaml").write_text(HOOKS_FILE)
    monkeypatch.setenv("AUTOGLM_WEBHOOKS", str(tmp_path / "hooks.yaml"))
    gateway = Gateway.from_settings(GatewaySettings(store_url=str(tmp_path / "state.db"), admin_key="adm-123"))
    engine = FakeEngine()
    app = build_app({engine.model_name: engine}, ServerSettings(), gateway=gateway)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    app.url = f"http://127.0.0.1:{port}"
    app.gateway = gateway
    yield app
    srv.should_exit = True
    thread.join(timeout=10)
    gateway.store.close()


@pytest.fixture()
def wired(server):
    """The server with our callback and a movable clock (what the deploy code will pass at build time)."""
    clock, redeploys = Clock(), Redeploys()
    default = server.state.hook_receiver
    server.state.hook_receiver = HookReceiver(list(default.hooks.values()), server.gateway.store, redeploys,
                                              clock=clock)
    return server, clock, redeploys


def alias_body(model: str = "credit", alias: str = "champion", version: str = "3") -> bytes:
    return json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": model, "alias": alias, "version": version}}).encode()


def post(app, body: bytes, *, hook: str = "mlflow", delivery_id: str | None = None, ts: int | None = None,
         secret: str = SECRET, signature: str | None = None) -> httpx.Response:
    delivery_id = delivery_id or str(uuid.uuid4())
    stamp = str(int(time.time()) if ts is None else ts)
    headers = {"content-type": "application/json", "x-mlflow-delivery-id": delivery_id, "x-mlflow-timestamp": stamp,
               "x-mlflow-signature": signature if signature is not None else sign(secret, delivery_id, stamp, body)}
    return httpx.post(f"{app.url}/admin/hooks/{hook}", content=body, headers=headers, timeout=10)


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}  # an OpenAI error object
    return body["error"]["code"]


def test_good_signature_runs_the_callback_once_and_a_repeat_is_idempotent(wired):
    app, _, redeploys = wired
    r = post(app, alias_body(), delivery_id="d-1")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "done" and r.json()["result"]["outcome"] == {"swapped_to": "3"}
    assert redeploys.calls == [("credit", "champion", "3")]
    again = post(app, alias_body(), delivery_id="d-1")  # the sender retried (fresh timestamp, same id)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["result"]["outcome"] == {"swapped_to": "3"}
    assert redeploys.calls == [("credit", "champion", "3")]  # not run again
    rows = app.gateway.store.execute("SELECT hook, delivery_id, status FROM webhook_receipts")
    assert rows == [("mlflow", "d-1", "done")]


def test_bad_or_missing_signature_is_401_and_nothing_runs(wired):
    app, _, redeploys = wired
    r = post(app, alias_body(), secret="not-the-secret")
    assert r.status_code == 401 and error_code(r) == "invalid_signature"
    r = post(app, alias_body(), signature="")
    assert r.status_code == 401 and error_code(r) == "missing_signature"
    tampered = post(app, alias_body(), delivery_id="d-2")  # accepted, then its body altered
    assert tampered.status_code == 200
    sig_ok = sign(SECRET, "d-3", str(int(time.time())), alias_body())
    r = post(app, alias_body(version="9"), delivery_id="d-3", signature=sig_ok)
    assert r.status_code == 401
    assert redeploys.calls == [("credit", "champion", "3")]


def test_stale_timestamp_is_refused(wired):
    app, _, redeploys = wired
    r = post(app, alias_body(), ts=int(time.time()) - 600)  # signed correctly, ten minutes ago
    assert r.status_code == 400 and error_code(r) == "stale_timestamp"
    assert "300s tolerance" in r.json()["error"]["message"]
    r = post(app, alias_body(), ts=int(time.time()) + 600)
    assert r.status_code == 400
    assert redeploys.calls == []


def test_a_captured_delivery_replayed_later_is_rejected(wired):
    app, clock, redeploys = wired
    body, stamp = alias_body(), str(int(time.time()))
    signature = sign(SECRET, "d-orig", stamp, body)
    assert post(app, body, delivery_id="d-orig", ts=int(stamp), signature=signature).status_code == 200
    clock.offset = 400  # the attacker replays it 400 s later
    same = post(app, body, delivery_id="d-orig", ts=int(stamp), signature=signature)
    assert same.status_code == 400 and error_code(same) == "stale_timestamp"
    new_id = post(app, body, delivery_id="d-new", ts=int(stamp), signature=signature)  # new id, old signature
    assert new_id.status_code == 401 and error_code(new_id) == "invalid_signature"
    resigned = post(app, body, delivery_id="d-new2", ts=int(stamp))  # even re-signed, the old timestamp fails
    assert resigned.status_code == 400 and error_code(resigned) == "stale_timestamp"
    assert redeploys.calls == [("credit", "champion", "3")]


def test_a_delivery_id_reused_with_another_body_is_409(wired):
    app, _, redeploys = wired
    assert post(app, alias_body(version="3"), delivery_id="d-5").status_code == 200
    r = post(app, alias_body(version="4"), delivery_id="d-5")
    assert r.status_code == 409 and error_code(r) == "delivery_id_reused"
    assert redeploys.calls == [("credit", "champion", "3")]


def test_a_failed_callback_is_502_and_the_retry_runs_it(wired):
    app, _, redeploys = wired
    redeploys.fail = True
    r = post(app, alias_body(), delivery_id="d-6")
    assert r.status_code == 502 and error_code(r) == "action_failed"
    assert "Traceback" not in r.text and "swap failed" not in r.text
    redeploys.fail = False
    assert post(app, alias_body(), delivery_id="d-6").status_code == 200
    assert redeploys.calls == [("credit", "champion", "3")]


def test_other_events_filters_and_unknown_hooks(wired):
    app, _, redeploys = wired
    other = json.dumps({"entity": "model_version", "action": "created", "data": {"name": "credit"}}).encode()
    r = post(app, other)
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    r = post(app, alias_body(alias="challenger"), hook="champions")  # this hook redeploys @champion only
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert post(app, alias_body(alias="champion"), hook="champions").status_code == 200
    r = post(app, alias_body(), hook="nope")
    assert r.status_code == 404 and "mlflow" in r.json()["error"]["message"]
    r = post(app, b"not json")
    assert r.status_code == 400 and error_code(r) == "invalid_json"
    assert redeploys.calls == [("credit", "champion", "3")]


def test_mlflows_own_webhook_sender_triggers_the_redeploy(wired, monkeypatch):
    delivery = pytest.importorskip("mlflow.webhooks.delivery")
    from mlflow.entities.webhook import Webhook, WebhookEvent

    app, _, redeploys = wired
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http")
    monkeypatch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
    monkeypatch.setattr(delivery, "_webhook_session", None)  # a session made under these settings
    event = WebhookEvent("model_version_alias", "created")
    hook = Webhook(webhook_id="w1", name="autoglm", url=f"{app.url}/admin/hooks/mlflow", events=[event],
                   creation_timestamp=0, last_updated_timestamp=0, secret=SECRET)
    result = delivery.test_webhook(hook, event)  # MLflow's code signs and sends its example payload
    assert result.success, (result.response_status, result.response_body, result.error_message)
    assert redeploys.calls == [("example_model", "example_alias", "1")]


def test_autoglm_outbound_to_autoglm_inbound(wired, tmp_path):
    from autoglm.registry.webhooks import WebhookSender

    app, _, redeploys = wired
    with open_store(tmp_path / "sender.db") as store:
        target = OutboundTarget(name="peer", url=f"{app.url}/admin/hooks/mlflow", secret=SECRET)
        sender = WebhookSender([target], store)
        (delivery_id,) = sender.emit_alias_set("credit", "champion", 7)
        sender.deliver_due()
        sender.redeliver(delivery_id)  # sent again on purpose: the receiver answers from its receipt
        sender.deliver_due()
        sender.close()
    assert redeploys.calls == [("credit", "champion", "7")]


def test_default_receiver_from_the_webhooks_file_logs_and_records(server):
    r = post(server, alias_body(), delivery_id="d-def")
    assert r.status_code == 200
    assert r.json()["result"]["outcome"]["redeployed"] is False
    assert server.state.hook_receiver.on_alias_set.calls == [("credit", "champion", "3")]
    stored = server.gateway.store.execute("SELECT result FROM webhook_receipts WHERE delivery_id = 'd-def'")
    assert json.loads(stored[0][0])["model"] == "credit"
    dump = repr(server.gateway.store.execute("SELECT * FROM webhook_receipts"))
    assert SECRET not in dump


def test_unit_async_and_sync_callbacks_both_run(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        seen = []
        receiver = HookReceiver([InboundHook(name="h", secret=SECRET)], store, lambda m, a, v: seen.append(v))
        body, stamp = alias_body(), str(int(time.time()))
        headers = {"X-MLflow-Delivery-Id": "u1", "X-MLflow-Timestamp": stamp,
                   "X-MLflow-Signature": sign(SECRET, "u1", stamp, body)}
        reply = asyncio.run(receiver.handle("h", headers, body))
        assert reply.status == 200 and seen == ["3"]
