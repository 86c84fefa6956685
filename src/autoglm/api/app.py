"""The app factory: ``build_app(engines, server) -> FastAPI``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health`` (200 with queue numbers when every engine is up, 503
otherwise) and ``GET /version``. The lifespan starts the engines (``Engine.start`` is idempotent, so
a caller may start them earlier) and shuts them down. When ``server.api_keys`` is set, every route
but ``/health`` needs ``Authorization: Bearer <key>``: a deliberately small check
(:class:`BearerKeyAuth`) meant to be replaced by the gateway's key system.

Nothing happens at import time; the app is built from its parts, so tests pass their own engines.
"""
from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from autoglm import __version__
from autoglm.api.errors import APIError, error_body, install_error_handlers
from autoglm.api.schemas import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from autoglm.api.serving_chat import create_chat_completion
from autoglm.api.serving_completions import create_completion
from autoglm.config import ServerSettings

__all__ = ["build_app", "BearerKeyAuth"]

log = logging.getLogger("autoglm.api")


class BearerKeyAuth:
    """ASGI middleware: 401 (OpenAI error object) unless the request carries one of ``keys``."""

    def __init__(self, app: Any, keys: list[str], open_paths: tuple[str, ...] = ("/health",)):
        self.app = app
        self._keys = [k.encode() for k in keys]
        self._open = open_paths

    def _allowed(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        return any(hmac.compare_digest(token, key) for key in self._keys)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self._open:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self._allowed(headers.get(b"authorization", b"")):
            return await self.app(scope, receive, send)
        err = APIError("Missing or incorrect API key. Send it as 'Authorization: Bearer <key>' "
                       "(the key given to 'autoglm serve --api-key').", 401, code="invalid_api_key")
        body = json.dumps(error_body(err)).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


def build_app(engines: dict[str, Any], server: ServerSettings | None = None, *,
              manage_engines: bool = True) -> FastAPI:
    """An OpenAI-compatible app serving ``engines`` (served name -> engine).

    ``manage_engines``: start engines in the lifespan and shut them down at exit (the default);
    False leaves both to the caller.
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
    if server.api_keys:
        app.add_middleware(BearerKeyAuth, keys=list(server.api_keys))

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

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(engine_for(body.model), body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(engine_for(body.model), body, request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return ModelList(data=[card(n, e) for n, e in engines.items()]).model_dump()

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
