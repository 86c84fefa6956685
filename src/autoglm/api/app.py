"""The app factory: ``build_app(engines, server, gateway=None, router=None) -> FastAPI``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health`` (200 with queue numbers when every engine is up, 503
otherwise), ``GET /version``, ``GET /metrics`` (Prometheus text) and, with a gateway, the admin
routes ``/admin/keys`` and ``/admin/usage``. Each feature mounts its own routes by one ``install_*`` call
below: feedback, hooks, recommend, the served-model monitor (``/v1/monitor/labels``), live deployments
(``/admin/deployments``), the admin REST API (``/admin/pipelines``, runs, studies, models, loop), the Batch API
(``/v1/files``, ``/v1/batches``) and the console (``/ui``). The lifespan starts the engines (``Engine.start`` is
idempotent, so a caller may start them earlier) and shuts them down.

Every request passes :class:`~autoglm.gateway.http.GatewayMiddleware` (request id, authentication,
access log). Keys come from the :class:`~autoglm.gateway.Gateway` (``Authorization: Bearer`` or
``x-api-key``) and from ``server.api_keys`` (static keys, e.g. ``autoglm serve --api-key``); with
neither, the server is open. Completion routes go through :meth:`GatewayHTTP.serve` (model
authorization, rate limits, per-model concurrency, usage, the response cache). The caller owns the
gateway: build_app does not close it.

Which backend serves a model is the :class:`~autoglm.gateway.router.Router`'s business: names and
aliases, local replicas and remote upstreams, retries, fallback and health checks. Without a router,
each engine is one single-replica model. ``/health`` reports each model's status (``ok``/``down``);
it is 200 while at least one model is up (``degraded`` when some are down) and 503 otherwise.

Nothing happens at import time; the app is built from its parts, so tests pass their own engines.
"""
from __future__ import annotations

import functools
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from autoglm import __version__
from autoglm.api.errors import APIError, install_error_handlers, install_openapi
from autoglm.api.limits import RequestLimits
from autoglm.api.middleware import BodyLimitMiddleware, HeadMiddleware, InternalErrorMiddleware
from autoglm.api.routes_feedback import install_feedback_routes
from autoglm.api.routes_hooks import install_hook_routes
from autoglm.api.routes_admin import install_admin_api
from autoglm.api.routes_batch import install_batch_routes
from autoglm.api.routes_deployments import install_deployment_routes
from autoglm.console import install_console
from autoglm.monitoring.served import install_monitoring
from autoglm.api.schemas import ChatCompletionRequest, CompletionRequest, ModelCard
from autoglm.api.serving_chat import create_chat_completion
from autoglm.api.serving_completions import create_completion
from autoglm.api.response_store import ResponseStore
from autoglm.api.routes_tokenize import create_detokenize, create_tokenize
from autoglm.api.schemas import DetokenizeRequest, ResponsesRequest, TokenizeRequest
from autoglm.api.serving_responses import create_response, install_stored_response_routes
from autoglm.api.serving_embeddings import EmbeddingModel, install_embedding_routes
from autoglm.config import ServerSettings
from autoglm.gateway.http import GatewayHTTP, GatewayMiddleware, install_admin_routes, install_gateway_handlers
from autoglm.gateway.affinity import request_text
from autoglm.gateway.router import Dispatched, Router
from autoglm.recommend.http import ROUTE_HEADER, auto_cards, install_recommend_routes, resolve_auto
from autoglm.gateway.upstream import UpstreamOverloaded, proxy

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


def _hold_until_done(d: Dispatched[Response]) -> Response:
    """Keep the replica's outstanding count until a streamed body has been sent (or abandoned)."""
    response = d.result
    if d.backend.version:  # which registry version answered (it changes with a swap: autoglm.deploy.live)
        response.headers["x-autoglm-model-version"] = d.backend.version
    body = getattr(response, "body_iterator", None)
    if body is None:
        d.release()
        return response

    async def counted() -> AsyncIterator[Any]:
        try:
            async for part in body:
                yield part
        finally:
            d.release()

    response.body_iterator = counted()
    return response


def build_app(engines: dict[str, Any], server: ServerSettings | None = None, *,
              manage_engines: bool = True, gateway: Any = None, router: Router | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``engines`` (served name -> engine).

    ``manage_engines``: start engines in the lifespan and shut them down at exit (the default);
    False leaves both to the caller. ``gateway``: an :class:`autoglm.gateway.Gateway` for keys,
    limits, usage and the response cache; None keeps only ``server.api_keys`` as static keys.
    ``router``: several models, replicas and remote upstreams behind one endpoint (then ``engines``
    may be empty: the router's local engines are managed); its health checks run in the lifespan.
    """
    if router is None:
        if not engines:
            raise ValueError("build_app needs at least one engine (or a router)")
        router = Router.from_engines(engines)
    else:
        engines = {b.label: b.engine for r in router.routes for b in r.backends if b.engine is not None}
    server = server or ServerSettings()
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engines:
            for engine in engines.values():
                await engine.start()
        await router.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await router.close()
            if manage_engines:
                for name, engine in engines.items():
                    try:
                        await engine.shutdown()
                    except Exception:  # noqa: BLE001 - shut the others down regardless
                        log.exception("shutting down engine %s failed", name)

    app = FastAPI(title="Open-AutoGLM", version=__version__, lifespan=lifespan)
    app.state.engines = engines
    app.state.router = router
    install_error_handlers(app)
    install_gateway_handlers(app)
    install_openapi(app)
    metrics = _metrics(engines, server.metrics)
    gw = GatewayHTTP(gateway, list(server.api_keys), metrics)
    app.state.gateway_http = gw
    limits = RequestLimits.from_settings(server)
    # innermost first: an unexpected error is a 500 here (the connection stays usable), a too-large
    # body a 413 before anything parses it, HEAD is GET without a body; auth and access log outside
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_request_bytes)
    app.add_middleware(HeadMiddleware)
    app.add_middleware(GatewayMiddleware, owner=gw)
    chat_handler = functools.partial(create_chat_completion, limits=limits)
    completion_handler = functools.partial(create_completion, limits=limits)
    # /v1/responses: stored responses live in this process (autoglm.api.response_store), not the state store
    responses_store = app.state.response_store = ResponseStore()
    responses_handler = functools.partial(create_response, limits=limits, store=responses_store)
    tokenize_handler = functools.partial(create_tokenize, limits=limits)
    install_stored_response_routes(app, responses_store)  # GET/DELETE /v1/responses/{id}
    embedding = (EmbeddingModel(server.embedding_model, truncatable=server.embedding_truncatable)
                 if server.embedding_model else None)
    app.state.embedding = embedding  # the batch worker runs /v1/embeddings lines with it
    install_embedding_routes(app, gw, embedding)  # POST /v1/embeddings (404 unless embedding_model is set)
    install_admin_routes(app, gw)
    install_feedback_routes(app, gw, server)  # POST /v1/feedback, /admin/feedback, capture when on
    install_hook_routes(app, gw)  # POST /admin/hooks/{name}: signed webhooks in (autoglm.api.routes_hooks)
    install_recommend_routes(app, router, gw)  # /v1/recommend, quality, ratings (autoglm.recommend.http)
    install_monitoring(app, gw, server, router, metrics)  # drift and quality of the served model (monitoring.served)
    install_deployment_routes(app, gw, router, server)  # /admin/deployments: launch, stop, swap
    install_admin_api(app, gw, server)  # /admin/pipelines, runs, studies, models (api.routes_admin)
    install_batch_routes(app, gw, server, router)  # /v1/files, /v1/batches (api.routes_batch)
    install_console(app, server)  # the web console at /ui (autoglm.console)

    def card(entry: dict[str, Any]) -> dict[str, Any]:
        base = ModelCard(id=entry["id"], description=entry["description"] or "",
                         max_model_len=entry["max_model_len"]).model_dump()
        return {**base, "root": entry["root"]}

    async def routed(body: Any, request: Request, handler: Any, kind: str, path: str) -> Response:
        async def local(engine: Any, route: Any) -> Response:
            return await gw.serve(request, body, engine, route.name, handler, kind)

        async def remote(upstream: Any, route: Any) -> Response:
            payload = await request.json()  # as the client sent it; starlette keeps the bytes

            async def forward(up: Any, _body: Any, _raw: Request, hooks: Any) -> Response:
                return await proxy(up, path, payload, route.name, hooks)

            return await gw.serve(request, body, upstream, route.name, forward, kind)

        decision = await resolve_auto(router, request, body, metrics)  # model "auto" -> a concrete model
        try:
            # the prompt's text only when a route with several replicas asks for it (prefix affinity)
            response = _hold_until_done(await router.dispatch(decision.model if decision else body.model,
                                                              local=local, remote=remote,
                                                              prefix=lambda: request_text(body)))
        except UpstreamOverloaded as exc:  # saturated and no fallback left: the upstream's own 429
            return JSONResponse(exc.reply.body, status_code=429, headers=exc.reply.headers)
        if decision is not None:
            response.headers[ROUTE_HEADER] = decision.header()
        return response

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await routed(body, request, chat_handler, "chat", "/chat/completions")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await routed(body, request, completion_handler, "completion", "/completions")

    @app.post("/v1/responses")
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        return await routed(body, request, responses_handler, "responses", "/responses")

    @app.post("/tokenize")  # vLLM's paths (no /v1), through the gateway like the completion routes
    async def tokenize(body: TokenizeRequest, request: Request) -> Response:
        return await routed(body, request, tokenize_handler, "tokenize", "/tokenize")

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
        return await routed(body, request, create_detokenize, "tokenize", "/detokenize")

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        key = request.scope.get("state", {}).get("autoglm_key")
        cards = [card(c) for c in router.model_cards() if key is None or key.allows_model(c["root"])]
        cards += [card(c) for c in auto_cards(router, key)]  # model "auto" (autoglm.recommend.http)
        return {"object": "list", "data": cards}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        if metrics is None:
            raise APIError("Metrics are off on this server (install prometheus_client).", 404, code="not_found")
        from autoglm.monitoring.metrics import CONTENT_TYPE

        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        key = request.scope.get("state", {}).get("autoglm_key")
        auto = next((c for c in auto_cards(router, key) if c["id"] == model_id), None)
        if auto is not None:  # model "auto" (autoglm.recommend.http)
            return card(auto)
        if key is None:
            router.resolve(model_id)  # 404 listing the names when unknown
        visible = [c for c in router.model_cards() if key is None or key.allows_model(c["root"])]
        found = next((c for c in visible if c["id"] == model_id), None)
        if found is None:  # unknown, or hidden from this key exactly as GET /v1/models hides it
            names = ", ".join(c["id"] for c in visible) or "(none for this key)"
            raise APIError(f"The model {model_id!r} does not exist. Available models: {names}.", 404,
                           code="model_not_found", param="model")
        return card(found)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        routed_health = router.health()
        models: dict[str, Any] = routed_health["models"]
        running = waiting = 0
        for route in router.routes:
            entry = models[route.name]
            for backend in route.backends:
                if backend.engine is None:
                    continue
                try:
                    stats = asdict(backend.engine.stats())
                except Exception as exc:  # noqa: BLE001 - an engine that cannot report is not healthy
                    stats = {"error": type(exc).__name__}
                running += stats.get("num_running", 0)
                waiting += stats.get("num_waiting", 0)
                if len(route.backends) == 1:
                    entry.update({k: v for k, v in stats.items() if k not in entry})
        status = routed_health["status"] if state["ready"] else "unavailable"
        store = await gw.store_status()
        if store == "down" and status == "ok":
            status = "degraded"  # keyed requests get 503 until the state store is back
        code = 503 if status == "unavailable" else 200
        if not await gw.health_details_allowed(request.headers):
            return JSONResponse({"status": status}, status_code=code)  # counters and backends: keyholders only
        body = {"status": status, "num_running": running, "num_waiting": waiting, "models": models}
        if store is not None:
            body["state_store"] = store
        return JSONResponse(body, status_code=code)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": __version__}

    return app
