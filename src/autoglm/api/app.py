"""The app factory: ``build_app(engines, server, gateway=None) -> FastAPI``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health`` (200 with queue numbers when every engine is up, 503
otherwise), ``GET /version``, ``GET /metrics`` (Prometheus text) and, with a gateway, the admin
routes ``/admin/keys`` and ``/admin/usage``. The lifespan starts the engines (``Engine.start`` is
idempotent, so a caller may start them earlier) and shuts them down.

Every request passes :class:`~autoglm.gateway.http.GatewayMiddleware` (request id, authentication,
access log). Keys come from the :class:`~autoglm.gateway.Gateway` (``Authorization: Bearer`` or
``x-api-key``) and from ``server.api_keys`` (static keys, e.g. ``autoglm serve --api-key``); with
neither, the server is open. Completion routes go through :meth:`GatewayHTTP.serve` (model
authorization, rate limits, per-model concurrency, usage, the response cache). The caller owns the
gateway: build_app does not close it.

Nothing happens at import time; the app is built from its parts, so tests pass their own engines.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from autoglm import __version__
from autoglm.api.errors import APIError, install_error_handlers
from autoglm.api.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from autoglm.api.serving_chat import create_chat_completion
from autoglm.api.serving_completions import create_completion
from autoglm.config import ServerSettings
from autoglm.gateway.http import GatewayHTTP, GatewayMiddleware, install_admin_routes, install_gateway_handlers

__all__ = ["build_app"]

log = logging.getLogger("autoglm.api")


def _metrics(engines: dict[str, Any], enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from autoglm.monitoring.metrics import ServerMetrics

        return ServerMetrics(engines)
    except ImportError as exc:
        log.warning("/metrics is off: %s", exc)
        return None


def build_app(engines: dict[str, Any], server: ServerSettings | None = None, *,
              manage_engines: bool = True, gateway: Any = None) -> FastAPI:
    """An OpenAI-compatible app serving ``engines`` (served name -> engine).

    ``manage_engines``: start engines in the lifespan and shut them down at exit (the default);
    False leaves both to the caller. ``gateway``: an :class:`autoglm.gateway.Gateway` for keys,
    limits, usage and the response cache; None keeps only ``server.api_keys`` as static keys.
    """
    if not engines:
        raise ValueError("build_app needs at least one engine")
    server = server or ServerSettings()
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engines:
            for engine in engines.values():
                await engine.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            if manage_engines:
                for name, engine in engines.items():
                    try:
                        await engine.shutdown()
                    except Exception:  # noqa: BLE001 - shut the others down regardless
                        log.exception("shutting down engine %s failed", name)

    app = FastAPI(title="Open-AutoGLM", version=__version__, lifespan=lifespan)
    app.state.engines = engines
    install_error_handlers(app)
    install_gateway_handlers(app)
    metrics = _metrics(engines, server.metrics)
    gw = GatewayHTTP(gateway, list(server.api_keys), metrics)
    app.state.gateway_http = gw
    app.add_middleware(GatewayMiddleware, owner=gw)
    install_admin_routes(app, gw)

    def engine_for(model: str | None) -> Any:
        if model is None:
            return next(iter(engines.values()))
        if model in engines:
            return engines[model]
        raise APIError(f"The model '{model}' does not exist. Available models: {', '.join(engines)}.",
                       404, param="model", code="model_not_found")

    def card(name: str, engine: Any) -> ModelCard:
        return ModelCard(id=name, description=getattr(engine, "description", "") or "",
                         max_model_len=getattr(engine, "max_model_len", None))

    def served_name(model: str | None) -> str:
        return model if model is not None else next(iter(engines))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        engine = engine_for(body.model)
        return await gw.serve(request, body, engine, served_name(body.model), create_chat_completion, "chat")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        engine = engine_for(body.model)
        return await gw.serve(request, body, engine, served_name(body.model), create_completion, "completion")

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        key = request.scope.get("state", {}).get("autoglm_key")
        allowed = [(n, e) for n, e in engines.items() if key is None or key.allows_model(n)]
        return ModelList(data=[card(n, e) for n, e in allowed]).model_dump()

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        if metrics is None:
            raise APIError("Metrics are off on this server (install prometheus_client).", 404, code="not_found")
        from autoglm.monitoring.metrics import CONTENT_TYPE

        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return card(model_id, engine_for(model_id)).model_dump()

    @app.get("/health")
    async def health() -> JSONResponse:
        models: dict[str, Any] = {}
        ok = state["ready"]
        for name, engine in engines.items():
            try:
                models[name] = asdict(engine.stats())
            except Exception as exc:  # noqa: BLE001 - an engine that cannot report is not healthy
                ok = False
                models[name] = {"error": type(exc).__name__}
        body = {
            "status": "ok" if ok else "unavailable",
            "num_running": sum(m.get("num_running", 0) for m in models.values()),
            "num_waiting": sum(m.get("num_waiting", 0) for m in models.values()),
            "models": models,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    return app
