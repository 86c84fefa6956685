"""Outbound webhooks: registry, loop, alert and deploy events, signed the way MLflow signs its own.

:meth:`WebhookSender.emit` turns one event (``entity.action`` plus a small JSON object) into one
delivery per interested target, written to the delivery log first (so nothing is lost when the
process exits before sending; the next sender, or ``autoglm webhooks flush``, sends it). A
background thread (:meth:`~WebhookSender.start`) sends what is due: POST of MLflow's envelope
``{"entity", "action", "timestamp", "data"}`` with ``X-MLflow-Delivery-Id`` (the same for every
attempt of a delivery), ``X-MLflow-Timestamp`` (fresh per attempt) and ``X-MLflow-Signature``
(:mod:`autoglm.registry.signing`). A 2xx is delivered; anything else (or no answer within the
target's timeout) is retried after ``backoff_s * 2**(attempt-1)`` seconds, capped, times a random
factor in [0.5, 1) so a fleet of senders does not retry in step, and never sooner than a 429/503's
``Retry-After``. After ``max_attempts`` the delivery is a dead letter; :meth:`~WebhookSender.redeliver`
queues it again under the same id.

:meth:`~WebhookSender.subscriber` is an :class:`~autoglm.training.events.EventBus` subscriber:
``TrainingEvent(kind, source, action, ...)`` becomes event ``kind.action`` (registry actions get
MLflow's names: ``alias-set`` is ``model_version_alias.created``). Logs name targets and delivery
ids, never secrets or URLs' credentials. Knows nothing about what the receivers do.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from autoglm.errors import ConfigError
from autoglm.gateway.store import StateStore
from autoglm.registry import webhook_store as db
from autoglm.registry.signing import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from autoglm.registry.webhook_config import OutboundTarget

__all__ = ["WebhookSender", "envelope", "MLFLOW_EVENT_NAMES", "backoff_delay"]

log = logging.getLogger("autoglm.registry")

# TrainingEvent (kind, action) -> MLflow's (entity, action), so an MLflow-aware receiver understands them.
MLFLOW_EVENT_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("registry", "alias-set"): ("model_version_alias", "created"),
    ("registry", "alias-deleted"): ("model_version_alias", "deleted"),
    ("registry", "version-created"): ("model_version", "created"),
    ("registry", "model-created"): ("registered_model", "created"),
}
_ERROR_CHARS = 300


def envelope(event: str, data: dict[str, Any], when: float | None = None) -> str:
    """MLflow's webhook body for ``event`` (``entity.action``), as the exact JSON text that is sent."""
    entity, _, action = event.rpartition(".")
    if not entity or not action:
        raise ConfigError(f"a webhook event is 'entity.action' (e.g. model_version_alias.created); got {event!r}")
    stamp = datetime.fromtimestamp(time.time() if when is None else when, tz=timezone.utc).isoformat()
    return json.dumps({"entity": entity, "action": action, "timestamp": stamp, "data": data},
                      separators=(",", ":"), default=str)


def backoff_delay(target: OutboundTarget, attempts: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before attempt ``attempts + 1``: exponential, capped, with jitter in [0.5, 1)."""
    base = min(target.max_backoff_s, target.backoff_s * 2 ** max(0, attempts - 1))
    return base * (0.5 + 0.5 * rng())


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class WebhookSender:
    """Deliveries to ``targets``, logged in ``store``; thread-safe. ``client`` is an ``httpx.Client``
    (one is made when None); ``clock`` and ``rng`` are injectable for tests of the schedule."""

    def __init__(self, targets: list[OutboundTarget], store: StateStore, *, client: Any = None,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 poll_s: float = 5.0):
        self.targets = {t.name: t for t in targets}
        self.store, self.clock, self.rng, self.poll_s = store, clock, rng, poll_s
        if client is None:
            import httpx

            client = httpx.Client(follow_redirects=False)
        self._client = client
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        db.migrate_webhooks(store)

    # -- producing -----------------------------------------------------------------------------
    def emit(self, event: str, data: dict[str, Any]) -> list[str]:
        """Queue ``event`` for every target that wants it; returns the delivery ids (one per target)."""
        body = envelope(event, data, self.clock())
        wanted = [t.name for t in self.targets.values() if t.wants(event)]
        ids = [str(uuid.uuid4()) for _ in wanted]
        for name, delivery_id in zip(wanted, ids):
            db.add_delivery(self.store, delivery_id, name, event, body, self.clock())
        if ids:
            log.info("webhook %s queued for %s", event, ", ".join(wanted))
            self._wake.set()
        return ids

    def emit_alias_set(self, model: str, alias: str, version: str | int) -> list[str]:
        """MLflow's ``model_version_alias.created`` event: ``{"name", "alias", "version"}``."""
        return self.emit("model_version_alias.created", {"name": model, "alias": alias, "version": str(version)})

    def subscriber(self, event: Any) -> None:
        """For :meth:`EventBus.subscribe`: a ``TrainingEvent`` becomes a webhook event."""
        mapped = MLFLOW_EVENT_NAMES.get((event.kind, event.action))
        if mapped is not None:
            self.emit(f"{mapped[0]}.{mapped[1]}", dict(event.data))
            return
        self.emit(f"{event.kind}.{event.action}", {"source": event.source, "message": event.message,
                                                    "step": event.step, **dict(event.data)})

    # -- sending -------------------------------------------------------------------------------
    def _stuck_before(self, now: float) -> float:
        longest = max((t.timeout_s for t in self.targets.values()), default=10.0)
        return now - 3 * longest  # a `sending` row older than this lost its sender

    def deliver_due(self) -> int:
        """One pass: attempt every delivery that is due now; returns how many were attempted."""
        now = self.clock()
        done = 0
        for delivery in db.due_deliveries(self.store, list(self.targets), now, self._stuck_before(now)):
            if self._stop.is_set() and self._thread is not None:
                break
            if db.claim_delivery(self.store, delivery, self.clock(), self._stuck_before(self.clock())):
                self._attempt(delivery)
                done += 1
        return done

    def _attempt(self, delivery: db.Delivery) -> None:
        target = self.targets[delivery.target]
        body = delivery.payload.encode("utf-8")
        stamp = str(int(self.clock()))
        headers = {"Content-Type": "application/json", DELIVERY_ID_HEADER: delivery.id, TIMESTAMP_HEADER: stamp,
                   "User-Agent": "autoglm-webhooks"}
        if target.secret is not None:
            headers[SIGNATURE_HEADER] = sign(target.secret.get_secret_value(), delivery.id, stamp, body)
        status, error, retry_after = None, None, None
        try:
            response = self._client.post(str(target.url), content=body, headers=headers, timeout=target.timeout_s)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}: {response.text[:_ERROR_CHARS]}"
                retry_after = _retry_after(response.headers) if status in (429, 503) else None
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is a failed attempt
            error = f"{type(exc).__name__}: {str(exc)[:_ERROR_CHARS]}"
        attempts = delivery.attempts + 1
        now = self.clock()
        if error is None:
            outcome, due = "delivered", now
        elif attempts >= target.max_attempts:
            outcome, due = "dead", now
        else:
            outcome = "retrying"
            due = now + max(backoff_delay(target, attempts, self.rng), min(retry_after or 0.0, target.max_backoff_s))
        db.finish_attempt(self.store, delivery.id, status=outcome, http_status=status, error=error,
                          next_attempt_at=due, now=now)
        if outcome == "delivered":
            log.info("webhook %s to %s delivered (attempt %d)", delivery.event, target.name, attempts)
        elif outcome == "dead":
            log.warning("webhook %s to %s is a dead letter after %d attempts (delivery %s): %s", delivery.event,
                        target.name, attempts, delivery.id, error)
        else:
            log.info("webhook %s to %s failed (attempt %d of %d, next in %.1fs): %s", delivery.event, target.name,
                     attempts, target.max_attempts, due - now, error)

    def redeliver(self, delivery_id: str) -> db.Delivery:
        """Queue a delivery again now (same id, fresh attempts); ConfigError when unknown or in flight."""
        found = db.get_delivery(self.store, delivery_id)
        if found is None:
            raise ConfigError(f"no webhook delivery {delivery_id!r}; `autoglm webhooks deliveries` lists them")
        if found.target not in self.targets:
            raise ConfigError(f"delivery {delivery_id} is for target {found.target!r}, which the webhooks file no "
                              f"longer has (targets: {', '.join(self.targets) or 'none'})")
        if not db.requeue_delivery(self.store, delivery_id, self.clock()):
            raise ConfigError(f"delivery {delivery_id} is being sent right now; try again in a moment")
        self._wake.set()
        return db.get_delivery(self.store, delivery_id)  # type: ignore[return-value]

    # -- the background thread -------------------------------------------------------------------
    def start(self) -> WebhookSender:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="autoglm-webhooks", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
                due = db.next_due_at(self.store, list(self.targets))
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the sender
                log.warning("webhook sender pass failed; retrying", exc_info=True)
                due = None
            wait = self.poll_s if due is None else min(self.poll_s, max(0.0, due - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nothing of ours is pending or retrying; True when drained."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._thread is None:
                self.deliver_due()
            if not any(db.list_deliveries(self.store, status=s, target=t, limit=1)
                       for s in (*db.WAITING, "sending") for t in self.targets):
                return True
            time.sleep(0.05)
        return False

    def close(self, drain_s: float = 0.0) -> None:
        """Stop the thread (after up to ``drain_s`` seconds of delivering); what is left stays in the log."""
        if drain_s > 0:
            self.flush(drain_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(t.timeout_s for t in self.targets.values()) + 1 if self.targets else 1)
            self._thread = None
        self._client.close()
