"""Outbound webhooks against a real local HTTP receiver: MLflow-compatible signatures, retries with
backoff, the delivery log in a real SQLite / PostgreSQL store, dead letters and redelivery."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoglm.errors import ConfigError
from autoglm.gateway.store import open_store
from autoglm.registry import webhook_store as db
from autoglm.registry.webhook_config import OutboundTarget, event_matches, load_webhooks_file
from autoglm.registry.webhooks import WebhookSender, backoff_delay
from autoglm.training.events import EventBus, TrainingEvent
from tests.services import fresh_pg_database

SECRET = "s3cret-for-tests-only"


class Receiver:
    """A tiny HTTP server: answers with ``statuses`` in turn (then 200), records every request."""

    def __init__(self, statuses: list[int] | None = None):
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                owner.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = owner.statuses.pop(0) if owner.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"receiver says no")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        with open_store(tmp_path / "state.db") as s:
            yield s
    else:
        with fresh_pg_database("autoglm_webhooks") as url, open_store(url) as s:
            yield s


def target(url: str, **kw) -> OutboundTarget:
    return OutboundTarget(name=kw.pop("name", "ops"), url=url, secret=kw.pop("secret", SECRET), **kw)


def independent_signature(secret: str, delivery_id: str, ts: str, body: bytes) -> str:
    """MLflow's documented scheme, written out here rather than taken from the code under test."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def test_signed_delivery_matches_mlflow_and_is_logged(store, receiver):
    r = receiver()
    sender = WebhookSender([target(r.url, events=["registry"])], store).start()
    try:
        (delivery_id,) = sender.emit_alias_set("credit", "champion", 3)
        assert sender.flush(10)
    finally:
        sender.close()
    (headers, body), = r.requests
    assert headers["x-mlflow-delivery-id"] == delivery_id
    ts = headers["x-mlflow-timestamp"]
    assert abs(int(ts) - time.time()) < 30
    assert headers["x-mlflow-signature"] == independent_signature(SECRET, delivery_id, ts, body)
    mlflow_delivery = pytest.importorskip("mlflow.webhooks.delivery")
    assert headers["x-mlflow-signature"] == mlflow_delivery._generate_hmac_signature(SECRET, delivery_id, ts,
                                                                                     body.decode())
    payload = json.loads(body)
    assert (payload["entity"], payload["action"]) == ("model_version_alias", "created")
    assert payload["data"] == {"name": "credit", "alias": "champion", "version": "3"}
    row = db.get_delivery(store, delivery_id)
    assert (row.status, row.attempts, row.last_status, row.last_error) == ("delivered", 1, 200, None)
    dump = "\n".join(repr(x) for x in store.execute("SELECT * FROM webhook_deliveries"))
    assert SECRET not in dump and "credit" in dump  # the payload is kept for retries; the secret never


def test_fails_twice_then_succeeds_three_attempts_one_delivery_id(store, receiver):
    r = receiver([500, 503])
    sender = WebhookSender([target(r.url, backoff_s=0.05, max_backoff_s=0.2)], store, poll_s=0.05).start()
    try:
        (delivery_id,) = sender.emit("deploy.swapped", {"model": "credit", "version": "3"})
        assert sender.flush(10)
    finally:
        sender.close()
    assert len(r.requests) == 3
    assert {h["x-mlflow-delivery-id"] for h, _ in r.requests} == {delivery_id}  # one id across retries
    for h, b in r.requests:  # each attempt signed afresh
        assert h["x-mlflow-signature"] == independent_signature(SECRET, delivery_id, h["x-mlflow-timestamp"], b)
    row = db.get_delivery(store, delivery_id)
    assert (row.status, row.attempts, row.last_status) == ("delivered", 3, 200)


def test_always_failing_target_is_a_dead_letter_then_redelivered(store, receiver):
    r = receiver([500] * 3)
    sender = WebhookSender([target(r.url, max_attempts=3, backoff_s=0.02, max_backoff_s=0.05)], store,
                           poll_s=0.02).start()
    try:
        (delivery_id,) = sender.emit("alert.fired", {"rule": "p95_latency"})
        deadline = time.monotonic() + 10
        while db.get_delivery(store, delivery_id).status != "dead" and time.monotonic() < deadline:
            time.sleep(0.02)
        row = db.get_delivery(store, delivery_id)
        assert (row.status, row.attempts, row.last_status) == ("dead", 3, 500)
        assert row.last_error == "HTTP 500: receiver says no"
        time.sleep(0.2)
        assert len(r.requests) == 3  # a dead letter is not retried by itself
        assert [d.id for d in db.list_deliveries(store, status="dead")] == [delivery_id]

        again = sender.redeliver(delivery_id)  # the receiver answers 200 now
        assert again.status in ("pending", "sending") and again.attempts == 0  # the sender may take it at once
        assert sender.flush(10)
    finally:
        sender.close()
    row = db.get_delivery(store, delivery_id)
    assert (row.status, row.attempts) == ("delivered", 1)
    assert r.requests[-1][0]["x-mlflow-delivery-id"] == delivery_id


def test_unreachable_target_records_the_error_and_retries_later(tmp_path, free_port_no):
    with open_store(tmp_path / "state.db") as store:
        t = target(f"http://127.0.0.1:{free_port_no}/hook", backoff_s=60.0, timeout_s=2)
        sender = WebhookSender([t], store, rng=lambda: 0.0)
        (delivery_id,) = sender.emit("loop.triggered", {"reason": "drift"})
        t0 = time.time()
        assert sender.deliver_due() == 1
        row = db.get_delivery(store, delivery_id)
        assert row.status == "retrying" and row.last_status is None and row.last_error.startswith("ConnectError")
        assert 29 <= row.next_attempt_at - t0 <= 31  # 60s * jitter 0.5
        assert sender.deliver_due() == 0  # not due yet
        sender.close()


@pytest.fixture()
def free_port_no():
    from tests.conftest import free_port

    return free_port()


def test_targets_get_only_the_events_they_want(tmp_path, receiver):
    r = receiver()
    with open_store(tmp_path / "state.db") as store:
        sender = WebhookSender([target(r.url, events=["deploy", "model_version_alias.*"])], store)
        assert sender.emit("alert.fired", {}) == []
        assert sender.emit("model_version.created", {}) == []
        assert len(sender.emit("deploy.swapped", {})) == 1
        sender.close()
    assert event_matches("model_version_tag.set", ["registry"]) and not event_matches("loop.x", ["registry"])


def test_event_bus_subscriber_maps_registry_events_to_mlflow_names(tmp_path, receiver):
    r = receiver()
    with open_store(tmp_path / "state.db") as store:
        sender = WebhookSender([target(r.url)], store)
        bus = EventBus()
        bus.subscribe(sender.subscriber)
        bus.emit(TrainingEvent("registry", "register", "alias-set", "credit@challenger -> v2",
                               data={"name": "credit", "alias": "challenger", "version": "2"}))
        bus.emit(TrainingEvent("guard", "explosion", "reset-layer", "layer 3 reset", step=40, data={"layer": 3}))
        sender.deliver_due()
        sender.close()
    bodies = [json.loads(b) for _, b in r.requests]
    assert [(b["entity"], b["action"]) for b in bodies] == [("model_version_alias", "created"), ("guard", "reset-layer")]
    assert bodies[0]["data"] == {"name": "credit", "alias": "challenger", "version": "2"}
    assert bodies[1]["data"] == {"source": "explosion", "message": "layer 3 reset", "step": 40, "layer": 3}


def test_backoff_is_exponential_capped_and_jittered():
    t = OutboundTarget(name="x", url="http://h/", backoff_s=1.0, max_backoff_s=10.0)
    assert [backoff_delay(t, n, rng=lambda: 0.999999) for n in (1, 2, 3, 4, 5)] == pytest.approx([1, 2, 4, 8, 10], rel=1e-5)
    assert backoff_delay(t, 3, rng=lambda: 0.0) == 2.0  # jitter: half to all of the step


def test_webhooks_file_errors_are_file_line_key_and_secrets_stay_hidden(tmp_path, monkeypatch):
    path = tmp_path / "hooks.yaml"
    path.write_text("outbound:\n  - name: ops\n    url: http://h/x\n    secret: ${HOOK_SECRET}\n    max_atempts: 3\n")
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    with pytest.raises(ConfigError, match=r"hooks\.yaml:5 outbound\[0\]\.max_atempts: .*did you mean 'max_attempts'"):
        load_webhooks_file(path)
    path.write_text("outbound:\n  - name: ops\n    url: http://h/x\n    secret: ${HOOK_SECRET}\n")
    config = load_webhooks_file(path)
    assert config.outbound[0].secret.get_secret_value() == SECRET and SECRET not in repr(config)


def test_deploy_and_alert_events_reach_the_targets_that_want_them(tmp_path, receiver):
    """``notify`` (what a swap, a launch, a stop and a fired drift window call) sends the event to the
    targets of ``AUTOGLM_WEBHOOKS`` that want its category, signed; the others get nothing."""
    from autoglm.registry.records import notify

    ops, registry_only = receiver(), receiver()
    hooks = tmp_path / "hooks.yaml"
    hooks.write_text(f"outbound:\n  - {{name: ops, url: '{ops.url}', secret: {SECRET}, events: [deploy, alert]}}\n"
                     f"  - {{name: reg, url: '{registry_only.url}', secret: {SECRET}, events: [registry]}}\n")
    env = {"AUTOGLM_WEBHOOKS": str(hooks), "AUTOGLM_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    assert notify("deploy.swapped", {"name": "demo", "from": "a", "to": "b"}, environ=env)
    assert notify("alert.drift", {"model": "demo", "max_psi": 3.2}, environ=env)
    assert [json.loads(body)["entity"] + "." + json.loads(body)["action"] for _, body in ops.requests] == [
        "deploy.swapped", "alert.drift"]
    headers, body = ops.requests[0]
    assert headers["x-mlflow-signature"] == independent_signature(SECRET, headers["x-mlflow-delivery-id"],
                                                                  headers["x-mlflow-timestamp"], body)
    assert json.loads(body)["data"]["to"] == "b"
    assert registry_only.requests == []
    assert notify("deploy.swapped", {}, environ={}) == []  # no webhooks file: nothing to do
