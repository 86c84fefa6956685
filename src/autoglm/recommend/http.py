"""``model: "auto"`` in the HTTP path: resolve it before routing, and ``POST /v1/recommend``.

:func:`resolve_auto` is called by the app before :meth:`~autoglm.gateway.router.Router.dispatch`: when
the router has a recommender and the request names one of its aliases, the request is identified and a
concrete model chosen among those the caller's key may use and that are up; the decision is counted in
``autoglm:route_decisions_total{task,model}`` and returned so the app can put :data:`ROUTE_HEADER` on
the response. Identification with the hashing encoder takes well under a millisecond and runs inline;
with a neural encoder it runs in a worker thread, off the event loop. A request no model can serve is a
:class:`~autoglm.gateway.facade.GatewayError` (403 / 400 / 503), never a 500.

``POST /v1/recommend`` takes the body of a chat or completions request (or ``{"text": ...}``) and
returns the decision without generating. Knows FastAPI and the gateway's key object; not engines.
"""
from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

__all__ = ["ROUTE_HEADER", "resolve_auto", "install_recommend_routes"]

ROUTE_HEADER = "x-autoglm-route"
_counters: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _count(metrics: Any, task: str, model: str) -> None:
    if metrics is None:
        return
    counter = _counters.get(metrics)
    if counter is None:
        from prometheus_client import Counter

        counter = _counters[metrics] = Counter("autoglm:route_decisions", "model 'auto' decisions by task and "
                                               "chosen model.", ["task", "model"], registry=metrics.registry)
    counter.labels(task, model).inc()


def _healthy(router: Any) -> Any:
    def healthy(name: str) -> bool:
        try:
            return router.resolve(name).status() == "ok"
        except Exception:  # noqa: BLE001 - a profile for a name the router lacks: not servable
            return False

    return healthy


async def _decide(router: Any, request: Any, fields: dict[str, Any], metrics: Any) -> Any:
    from autoglm.gateway.facade import GatewayError
    from autoglm.recommend.profiles import metrics_latency
    from autoglm.recommend.route import RouteError

    rec = router.recommender
    key = request.scope.get("state", {}).get("autoglm_key")
    allowed = (lambda _: True) if key is None else key.allows_model
    if rec.latency is None and metrics is not None:
        rec.latency = metrics_latency(metrics)

    def run() -> Any:
        return rec.decide(fields, allowed=allowed, healthy=_healthy(router))

    try:
        return run() if rec.fast else await asyncio.to_thread(run)
    except RouteError as exc:
        raise GatewayError(exc.status, exc.code, exc.message, param="model",
                           type="invalid_request_error" if exc.status < 500 else "service_unavailable") from None


async def resolve_auto(router: Any, request: Any, body: Any, metrics: Any = None) -> Any:
    """The :class:`~autoglm.recommend.route.RouteDecision` for ``body`` when it asks for an alias of the
    router's recommender; None otherwise (the request is routed as it is)."""
    rec = getattr(router, "recommender", None)
    if rec is None or not rec.handles(getattr(body, "model", None)):
        return None
    decision = await _decide(router, request, body.model_dump(mode="json", exclude_none=True), metrics)
    _count(metrics, decision.task, decision.model)
    return decision


def install_recommend_routes(app: Any, router: Any) -> None:
    """``POST /v1/recommend``: the decision for a request, without generating (404 without a recommender)."""
    from autoglm.gateway.facade import GatewayError

    @app.post("/v1/recommend")
    async def recommend(request: Request) -> JSONResponse:
        if getattr(router, "recommender", None) is None:
            raise GatewayError(404, "not_found", "this server has no recommender; add a 'recommend:' section "
                               "(and model profiles) to the deploy file")
        try:
            fields = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GatewayError(400, "invalid_json", "the body is not JSON; send a chat request body "
                               '({"messages": [...]}) or {"text": "..."}') from None
        if not isinstance(fields, dict):
            raise GatewayError(400, "invalid_request", "the body must be a JSON object")
        if isinstance(fields.get("text"), str) and "messages" not in fields and "prompt" not in fields:
            fields = {**fields, "messages": [{"role": "user", "content": fields["text"]}]}
        if not isinstance(fields.get("messages"), list) and not isinstance(fields.get("prompt"), (str, list)):
            raise GatewayError(400, "invalid_request", "give 'messages' (a list), 'prompt' or 'text'",
                               param="messages")
        if fields.get("max_tokens") is not None and not isinstance(fields["max_tokens"], int):
            raise GatewayError(400, "invalid_request", "'max_tokens' must be an integer", param="max_tokens")
        decision = await _decide(router, request, fields, None)
        return JSONResponse(decision.to_dict())
