"""``POST /admin/hooks/{name}``: signed webhooks in (MLflow's registry webhooks, or another autoglm).

:func:`install_hook_routes` mounts the route. The request is authenticated by its signature, not by
the admin key (MLflow cannot send one): the gateway middleware leaves ``/admin/*`` to its routes.
The work is :meth:`autoglm.registry.hooks_in.HookReceiver.handle`; a refusal is an OpenAI-style error
object with its status (400, 401, 404, 409, 502). The receiver is ``app.state.hook_receiver``: by
default built from the ``inbound:`` hooks of the ``AUTOGLM_WEBHOOKS`` file, its receipts in the
gateway's state store (else the default one, opened on the first delivery), and ``on_alias_set``
(the redeploy callback, ``(model, alias, version)``) as given here, else one that logs and records.
Knows HTTP, not signatures or redeploys.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from autoglm.registry.hooks_in import AliasSetCallback, HookReceiver, HookRejected

__all__ = ["install_hook_routes", "default_receiver"]

log = logging.getLogger("autoglm.api")

MAX_BODY_BYTES = 1 << 20  # registry events are small; a larger body is not one


def default_receiver(owner: Any = None, on_alias_set: AliasSetCallback | None = None) -> HookReceiver:
    """Hooks from the ``AUTOGLM_WEBHOOKS`` file, receipts in ``owner``'s gateway store (else the default store)."""
    from autoglm.registry.webhook_config import WebhookSettings

    settings = WebhookSettings.from_env()
    gateway = getattr(owner, "gateway", None)

    def store() -> Any:
        if gateway is not None:
            return gateway.store
        from autoglm.gateway.store import open_store

        return open_store(settings.store_url)

    return HookReceiver(settings.config.inbound, store, on_alias_set)


def _error(status: int, code: str, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                      "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers={"www-authenticate": "Signature"} if status == 401 else None)


def install_hook_routes(app: FastAPI, owner: Any = None, receiver: HookReceiver | None = None, *,
                        on_alias_set: AliasSetCallback | None = None) -> None:
    """Mount ``POST /admin/hooks/{name}``; ``owner`` is the app's GatewayHTTP (for its state store)."""
    app.state.hook_receiver = receiver if receiver is not None else default_receiver(owner, on_alias_set)

    @app.post("/admin/hooks/{name}")
    async def receive_hook(name: str, request: Request) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(413, "body_too_large", f"a webhook body is at most {MAX_BODY_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, "body_too_large", f"a webhook body is at most {MAX_BODY_BYTES} bytes")
        hooks: HookReceiver = request.app.state.hook_receiver
        try:
            reply = await hooks.handle(name, request.headers, body)
        except HookRejected as exc:
            if exc.status in (400, 401):
                log.warning("webhook %s refused: %s", name, exc.code)
            return _error(exc.status, exc.code, exc.message)
        return JSONResponse(reply.body, status_code=reply.status)
