"""Inbound webhooks: verify a signed delivery, act on it once, answer a repeat from the record.

:meth:`HookReceiver.handle` checks, in order: the hook exists (404); the ``X-MLflow-Delivery-Id``,
``X-MLflow-Timestamp`` and ``X-MLflow-Signature`` headers are there (400/401); the signature is the
hook secret's HMAC of ``id.timestamp.body`` (401: so a replayed body under a new delivery id, or
with a new timestamp, fails here); the timestamp is within ``tolerance_s`` of now (400: an old
signed request replayed later fails here); the body is an MLflow envelope (400). Then the delivery
is recorded by (hook, delivery id) before anything runs: a delivery id seen before is answered 200
from its receipt without acting again (409 while the first is still running, or when the id comes
back with another body). Only then does the action run:

* ``model_version_alias.created`` (MLflow's registry webhook, or ours) with ``action: redeploy``
  calls ``on_alias_set(model, alias, version)`` (sync or async; its return value, a small dict, is
  the result). The default, :class:`LoggedRedeploy`, logs and records the request and changes
  nothing: the zero-downtime swap plugs in here. ``models:``/``aliases:`` filters skip the rest.
* Any other event, or ``action: record``, is acknowledged (200, ``ignored``/``recorded``) so the
  sender does not retry it.

An action that raises is a 502 and its receipt is dropped, so the sender's retry runs it again.
Receipts older than :data:`RECEIPT_RETENTION_S` are pruned. Knows nothing about FastAPI (the route
is :mod:`autoglm.api.routes_hooks`) or about how a redeploy is done.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from autoglm.gateway.store import StateStore
from autoglm.registry import webhook_store as db
from autoglm.registry.signing import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature_matches
from autoglm.registry.webhook_config import InboundHook

__all__ = ["HookReceiver", "HookRejected", "HookReply", "AliasSetCallback", "LoggedRedeploy", "RECEIPT_RETENTION_S"]

log = logging.getLogger("autoglm.registry")

AliasSetCallback = Callable[[str, str, str], Union[Any, Awaitable[Any]]]  # (model, alias, version) -> result
RECEIPT_RETENTION_S = 7 * 86400.0  # a sender's manual redelivery days later is still recognised
ALIAS_SET = "model_version_alias.created"


class HookRejected(Exception):
    """A refused delivery: HTTP status, an error code and one line saying what to fix."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class HookReply:
    status: int
    body: dict[str, Any]


class LoggedRedeploy:
    """The default ``on_alias_set``: logs the request and records it (``calls``); redeploys nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, model: str, alias: str, version: str) -> dict[str, Any]:
        self.calls.append((model, alias, version))
        log.info("webhook: models:/%s@%s now points at version %s; no redeploy is wired to this server, "
                 "recorded only", model, alias, version)
        return {"redeployed": False, "reason": "no redeploy callback is configured on this server"}


class HookReceiver:
    """The inbound hooks of one server, their receipts in ``store`` (opened lazily when a callable)."""

    def __init__(self, hooks: list[InboundHook], store: StateStore | Callable[[], StateStore],
                 on_alias_set: AliasSetCallback | None = None, *, clock: Callable[[], float] = time.time):
        self.hooks = {h.name: h for h in hooks}
        self._store = store
        self.on_alias_set = on_alias_set if on_alias_set is not None else LoggedRedeploy()
        self.clock = clock
        self._migrated = False
        self._pruned_at = 0.0

    def store(self) -> StateStore:
        if callable(self._store) and not isinstance(self._store, StateStore):
            self._store = self._store()
        if not self._migrated:
            db.migrate_webhooks(self._store)
            self._migrated = True
        return self._store

    # -- checks ----------------------------------------------------------------------------------
    def verify(self, name: str, headers: Mapping[str, str], body: bytes) -> tuple[InboundHook, str, dict[str, Any]]:
        """The hook, the delivery id and the parsed envelope; :class:`HookRejected` otherwise."""
        hook = self.hooks.get(name)
        if hook is None:
            known = ", ".join(sorted(self.hooks)) or "none are configured (inbound: in the AUTOGLM_WEBHOOKS file)"
            raise HookRejected(404, "hook_not_found", f"no inbound hook named {name!r}; hooks: {known}")
        lower = {k.lower(): v for k, v in headers.items()}
        delivery_id = lower.get(DELIVERY_ID_HEADER.lower(), "").strip()
        stamp = lower.get(TIMESTAMP_HEADER.lower(), "").strip()
        signature = lower.get(SIGNATURE_HEADER.lower(), "").strip()
        if not signature:
            raise HookRejected(401, "missing_signature", f"the request has no {SIGNATURE_HEADER} header; sign it "
                               "with the hook's secret (v1,base64(HMAC-SHA256(secret, id.timestamp.body)))")
        if not delivery_id or not stamp:
            raise HookRejected(400, "missing_header", f"the request needs {DELIVERY_ID_HEADER} and {TIMESTAMP_HEADER} "
                               "headers (as MLflow's webhooks send them)")
        if len(delivery_id) > 128:
            raise HookRejected(400, "invalid_header", f"{DELIVERY_ID_HEADER} is longer than 128 characters")
        if not signature_matches(hook.secret.get_secret_value(), delivery_id, stamp, body, signature):
            raise HookRejected(401, "invalid_signature", f"the {SIGNATURE_HEADER} does not match this body, delivery "
                               f"id and timestamp for hook {name!r}; check the secret both sides use")
        try:
            sent = float(stamp)
        except ValueError:
            raise HookRejected(400, "invalid_timestamp",
                               f"{TIMESTAMP_HEADER} must be Unix seconds; got {stamp[:40]!r}") from None
        skew = self.clock() - sent
        if abs(skew) > hook.tolerance_s:
            raise HookRejected(400, "stale_timestamp", f"the delivery was signed {abs(skew):.0f}s "
                               f"{'ago' if skew > 0 else 'in the future'}, beyond the {hook.tolerance_s:.0f}s "
                               "tolerance: a replay, or a clock to fix")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HookRejected(400, "invalid_json", "the body is not JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("entity"), str) \
                or not isinstance(payload.get("action"), str) or not isinstance(payload.get("data", {}), dict):
            raise HookRejected(400, "invalid_request", 'the body must be {"entity": ..., "action": ..., "data": {...}}')
        return hook, delivery_id, payload

    # -- handling --------------------------------------------------------------------------------
    async def handle(self, name: str, headers: Mapping[str, str], body: bytes) -> HookReply:
        """Verify, record, act once; see the module docstring. Raises :class:`HookRejected`."""
        hook, delivery_id, payload = self.verify(name, headers, body)
        event = f"{payload['entity']}.{payload['action']}"
        sha = hashlib.sha256(body).hexdigest()
        store = await asyncio.to_thread(self.store)
        now = self.clock()
        if now - self._pruned_at > 3600:
            self._pruned_at = now
            await asyncio.to_thread(db.prune_receipts, store, now - RECEIPT_RETENTION_S)
        if not await asyncio.to_thread(db.open_receipt, store, hook.name, delivery_id, sha, event, now):
            seen = await asyncio.to_thread(db.get_receipt, store, hook.name, delivery_id)
            if seen is None:  # pruned or dropped between the two statements: the sender retries
                raise HookRejected(409, "delivery_in_progress", "this delivery is being handled; retry later")
            if seen["body_sha256"] != sha:
                raise HookRejected(409, "delivery_id_reused", f"delivery {delivery_id} was received before with "
                                   "another body; a new event needs a new delivery id")
            if seen["status"] != "done":
                raise HookRejected(409, "delivery_in_progress", f"delivery {delivery_id} is being handled; retry later")
            log.info("webhook %s: delivery %s was already handled; answered from its receipt", hook.name, delivery_id)
            return HookReply(200, {"status": "duplicate", "delivery_id": delivery_id, "event": event,
                                   "result": seen["result"]})
        try:
            result = await self._act(hook, event, payload.get("data") or {})
        except HookRejected:
            await asyncio.to_thread(db.drop_receipt, store, hook.name, delivery_id)
            raise
        except Exception as exc:  # noqa: BLE001 - the sender gets a clean 502 and will retry
            await asyncio.to_thread(db.drop_receipt, store, hook.name, delivery_id)
            log.exception("webhook %s: the action for %s (delivery %s) failed", hook.name, event, delivery_id)
            raise HookRejected(502, "action_failed", f"the {hook.action} action failed ({type(exc).__name__}); "
                               "the delivery can be retried") from None
        await asyncio.to_thread(db.close_receipt, store, hook.name, delivery_id, result)
        return HookReply(200, {"status": result.get("status", "done"), "delivery_id": delivery_id, "event": event,
                               "result": result})

    async def _act(self, hook: InboundHook, event: str, data: dict[str, Any]) -> dict[str, Any]:
        if hook.action == "record":
            log.info("webhook %s: %s recorded", hook.name, event)
            return {"status": "recorded"}
        if event != ALIAS_SET:
            return {"status": "ignored", "reason": f"the {hook.action} action acts on {ALIAS_SET} only"}
        model, alias, version = data.get("name"), data.get("alias"), data.get("version")
        if not all(isinstance(v, (str, int)) and str(v) for v in (model, alias, version)):
            raise HookRejected(400, "invalid_request", f"{ALIAS_SET} needs data.name, data.alias and data.version")
        model, alias, version = str(model), str(alias), str(version)
        if (hook.models is not None and model not in hook.models) or \
                (hook.aliases is not None and alias not in hook.aliases):
            return {"status": "ignored", "reason": f"models:/{model}@{alias} is not one this hook redeploys"}
        if inspect.iscoroutinefunction(self.on_alias_set) or inspect.iscoroutinefunction(
                getattr(self.on_alias_set, "__call__", None)):
            outcome = await self.on_alias_set(model, alias, version)
        else:
            outcome = await asyncio.to_thread(self.on_alias_set, model, alias, version)
        return {"status": "done", "action": "redeploy", "model": model, "alias": alias, "version": version,
                **({"outcome": outcome} if outcome is not None else {})}
