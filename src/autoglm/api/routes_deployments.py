"""``/admin/deployments``: what is served, launch, stop and zero-downtime swap, over HTTP.

- ``GET /admin/deployments`` - ``{"object": "list", "data": [...]}``, one entry per served model
  (:meth:`autoglm.deploy.live.Deployments.list`).
- ``POST /admin/deployments`` - body: one ``models:`` entry of a deploy file; 201 with its entry.
- ``DELETE /admin/deployments/{name}`` - stop routing it, drain, shut it down.
- ``POST /admin/deployments/{name}/swap`` - body ``{"source": "models:/NAME@champion", "drain_s": 30}``;
  200 with ``{"name", "from", "to", "switched_at", "drained", ...}``.
- ``POST /admin/deployments/{name}/scale`` - body ``{"replicas": 2, "drain_s": 30}``; 200 with ``{"name",
  "from", "to", "added", "removed", "backends", "drained", "plan"}`` (``plan``: the precision planner's
  choice and reasons for the new replicas); 409 ``does_not_fit`` when they would not fit in memory.

Who may call them: the operators of :meth:`autoglm.gateway.http.GatewayHTTP.require_operator` (the
admin key or a static ``--api-key``; on an open server, callers on the loopback interface). Errors
are OpenAI error objects: 400 for a bad body (``param`` names the key), 401/403, 404 for an unknown
model, 409 when the change conflicts (``swap_refused``: the source does not resolve;
``deployment_busy``), 502 when the new version does not load or answer (``swap_failed``).

:func:`install_deployment_routes` also puts the :class:`~autoglm.deploy.live.Deployments` on
``app.state.deployments`` and, when the inbound webhook receiver (``app.state.hook_receiver``) has
no redeploy of its own, makes its ``on_alias_set`` swap the routes served from ``models:/NAME@ALIAS``.
Knows HTTP and auth; the changes themselves are :mod:`autoglm.deploy.live`'s.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from autoglm.api.errors import APIError

__all__ = ["install_deployment_routes"]

log = logging.getLogger("autoglm.api")


class _SwapOnAliasSet:
    """The inbound webhook's redeploy: records each call (as the default did) and swaps."""

    def __init__(self, deployments: Any):
        self.deployments = deployments
        self.calls: list[tuple[str, str, str]] = []

    async def __call__(self, model: str, alias: str, version: str) -> dict[str, Any]:
        self.calls.append((model, alias, version))
        return await self.deployments.on_alias_set(model, alias, version)


def install_deployment_routes(app: FastAPI, owner: Any, router: Any, server: Any, *,
                              deployments: Any = None) -> None:
    """Mount the deployment routes on ``app`` (see the module docstring)."""
    from autoglm.deploy.live import MAX_REPLICAS, DeploymentError, Deployments
    from autoglm.errors import AutoGLMError, ConfigError, ModelNotFoundError

    gateway = getattr(owner, "gateway", None)

    async def clear_cache(_: str) -> None:
        cache = getattr(gateway, "cache", None)
        if cache is not None:  # an answer of the old version must not be replayed as the new one's
            await cache.clear()

    async def send_event(event: str, details: dict[str, Any]) -> None:  # the outbound webhooks (AUTOGLM_WEBHOOKS)
        from autoglm.registry.records import notify

        await asyncio.to_thread(notify, event, details)

    if deployments is None:
        deployments = Deployments(router, getattr(app.state, "engines", None), on_switch=clear_cache,
                                  on_event=send_event)
    app.state.deployments = deployments
    receiver = getattr(app.state, "hook_receiver", None)
    if receiver is not None:
        from autoglm.registry.hooks_in import LoggedRedeploy

        if isinstance(receiver.on_alias_set, LoggedRedeploy):
            receiver.on_alias_set = _SwapOnAliasSet(deployments)

    async def admin(request: Request) -> None:  # the admin key, a static key, or loopback on an open server
        await owner.require_operator(request)

    def api_error(exc: Exception) -> APIError:
        if isinstance(exc, DeploymentError):
            return APIError(str(exc), exc.status, code=exc.code,
                            type="server_error" if exc.status >= 500 else "invalid_request_error")
        if isinstance(exc, ModelNotFoundError):
            return APIError(str(exc), 404, code="model_not_found", param="name")
        if isinstance(exc, ConfigError):
            message = str(exc)
            param = message.split(":", 2)[1].strip() if message.count(":") >= 2 else None
            return APIError(message, 400, code="invalid_request", param=param)
        return APIError(str(exc), 400)

    async def json_body(request: Request, example: str) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise APIError(f"the body is not JSON ({getattr(exc, 'msg', exc)}); send an object like {example}",
                           400, code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(f"the body must be a JSON object like {example}", 400, code="invalid_request")
        return body

    @app.get("/admin/deployments")
    async def list_deployments(request: Request) -> dict[str, Any]:
        await admin(request)
        return {"object": "list", "data": deployments.list()}

    @app.get("/admin/deployments/{name}")
    async def get_deployment(name: str, request: Request) -> dict[str, Any]:
        await admin(request)
        try:
            return deployments.get(name)
        except AutoGLMError as exc:
            raise api_error(exc) from None

    @app.post("/admin/deployments", status_code=201)
    async def launch_deployment(request: Request) -> JSONResponse:
        await admin(request)
        spec = await json_body(request, '{"name": "demo2", "source": "autoglm-demo"}')
        try:
            entry = await deployments.launch(spec)
        except AutoGLMError as exc:
            raise api_error(exc) from None
        return JSONResponse(entry, status_code=201)

    @app.delete("/admin/deployments/{name}")
    async def stop_deployment(name: str, request: Request) -> dict[str, Any]:
        await admin(request)
        try:
            return await deployments.stop(name)
        except AutoGLMError as exc:
            raise api_error(exc) from None

    @app.post("/admin/deployments/{name}/swap")
    async def swap_deployment(name: str, request: Request) -> dict[str, Any]:
        await admin(request)
        body = await json_body(request, '{"source": "models:/NAME@champion"}')
        _only(body, "source", "drain_s")
        source = body.get("source")
        if not isinstance(source, str) or not source.strip():
            raise APIError("'source' is required: models:/NAME@ALIAS, a local model directory or a model id", 400,
                           code="invalid_request", param="source")
        drain_s = _drain_s(body)
        try:
            return await deployments.swap(name, source, drain_s=drain_s)
        except AutoGLMError as exc:
            log.warning("swap of %s to %s refused: %s", name, source, exc)
            raise api_error(exc) from None

    @app.post("/admin/deployments/{name}/scale")
    async def scale_deployment(name: str, request: Request) -> dict[str, Any]:
        await admin(request)
        body = await json_body(request, '{"replicas": 2}')
        _only(body, "replicas", "drain_s")
        replicas = body.get("replicas")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
            raise APIError(f"'replicas' must be a whole number from 1 to {MAX_REPLICAS}; got {replicas!r}", 400,
                           code="invalid_request", param="replicas")
        drain_s = _drain_s(body)
        try:
            return await deployments.scale(name, replicas, drain_s=drain_s)
        except AutoGLMError as exc:
            log.warning("scaling %s to %s replicas refused: %s", name, replicas, exc)
            raise api_error(exc) from None


def _only(body: dict[str, Any], *allowed: str) -> None:
    """A 400 naming the first field of ``body`` that is not ``allowed``."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise APIError(f"unknown field(s) {unknown}; allowed: {', '.join(allowed)}", 400, code="invalid_request",
                       param=unknown[0])


def _drain_s(body: dict[str, Any]) -> float | None:
    """``body["drain_s"]``: None, or seconds (0 or more); anything else is a 400 naming it."""
    drain_s = body.get("drain_s")
    if drain_s is not None and (isinstance(drain_s, bool) or not isinstance(drain_s, (int, float)) or drain_s < 0):
        raise APIError(f"'drain_s' must be a number of seconds, 0 or more; got {drain_s!r}", 400,
                       code="invalid_request", param="drain_s")
    return drain_s
