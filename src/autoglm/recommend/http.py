"""``model: "auto"`` in the HTTP path: resolve it before routing, and ``POST /v1/recommend``.

:func:`resolve_auto` is called by the app before :meth:`~autoglm.gateway.router.Router.dispatch`: when
the router has a recommender and the request names one of its aliases, the request is identified and a
concrete model chosen among those the caller's key may use and that are up; the decision is counted in
``autoglm:route_decisions_total{task,model}`` and returned so the app can put :data:`ROUTE_HEADER` on
the response. Identification with the hashing encoder takes well under a millisecond and runs inline;
with a neural encoder it runs in a worker thread, off the event loop. A request no model can serve is a
:class:`~autoglm.gateway.facade.GatewayError` (403 / 400 / 503), never a 500.

``POST /v1/recommend`` takes the body of a chat or completions request (or ``{"text": ...}``) and
returns the decision without generating.

Quality (:mod:`autoglm.recommend.quality`): while the app runs, a
:class:`~autoglm.recommend.learn.QualitySync` thread turns feedback on routed responses and pipeline
evaluations into observations every ``recommend.quality.sync_interval_s``.
``GET /v1/recommend/quality`` runs one pass first (``?sync=false`` skips it) and returns the table of
prior, recorded mean, count and estimate per (model, task), for the models the caller's key may use.
``POST /v1/recommend/ratings`` records ratings (the admin key when the server has a gateway)::

    {"model": "coder", "task": "code", "score": 0.2}          # or "rating": -1..1; "weight": 3;
    {"ratings": [{...}, {...}]}                               # "source": "manual" | "evaluation"

``GET /v1/models`` lists each alias (``auto``) as a model card whose description names the models it
routes among (:func:`auto_cards`). Knows FastAPI and the gateway's key object; not engines.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import weakref
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)
_MAX_RATINGS = 1000  # one POST

__all__ = ["ROUTE_HEADER", "resolve_auto", "install_recommend_routes", "auto_cards"]

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


def auto_cards(router: Any, key: Any) -> list[dict[str, Any]]:
    """``/v1/models`` entries for the recommender's aliases (``root`` is the alias itself): one per alias
    when the key may use at least one of the models it routes among; ``[]`` without a recommender."""
    rec = getattr(router, "recommender", None)
    if rec is None:
        return []
    models = [m for m in rec.profiles if key is None or key.allows_model(m)]
    if not models:
        return []
    default = rec.default if rec.default in models else None
    lengths = [rec.profiles[m].context_length for m in models if rec.profiles[m].context_length]
    description = (f"routes each request by its identified task to one of: {', '.join(models)}"
                   + (f" (unknown tasks: {default})" if default else "")
                   + f"; tasks: {', '.join(rec.identifier.tasks)}; the choice is in the {ROUTE_HEADER} header")
    return [{"id": alias, "root": alias, "description": description, "max_model_len": max(lengths) if lengths else None}
            for alias in sorted(rec.aliases)]


def _rating_rows(rec: Any, spec: Any) -> list[Any]:
    """The observations a ``POST /v1/recommend/ratings`` body asks for (GatewayError 400 naming the field)."""
    from autoglm.gateway.facade import GatewayError
    from autoglm.recommend.quality import Observation

    def bad(message: str, param: str) -> GatewayError:
        return GatewayError(400, "invalid_value", message, param=param)

    if not isinstance(spec, dict):
        raise bad("the body must be a JSON object: {\"model\": ..., \"task\": ..., \"score\": 0..1} or "
                  "{\"ratings\": [...]}", "body")
    items = spec.get("ratings") if "ratings" in spec else [spec]
    if not isinstance(items, list) or not items or len(items) > _MAX_RATINGS:
        raise bad(f"ratings must be a list of 1..{_MAX_RATINGS} objects", "ratings")
    out = []
    for i, item in enumerate(items):
        at = f"ratings[{i}]." if "ratings" in spec else ""
        if not isinstance(item, dict):
            raise bad(f"{at or 'the body'} must be an object", at.rstrip(".") or "body")
        unknown = sorted(set(item) - {"model", "task", "score", "rating", "weight", "source", "ref"})
        if unknown:
            raise bad(f"unknown field(s) {unknown}; allowed: model, task, score | rating, weight, source, ref",
                      at + unknown[0])
        model, task = item.get("model"), item.get("task")
        if model not in rec.profiles:
            raise bad(f"model {str(model)[:80]!r} is not one that model 'auto' routes among; use one of "
                      f"{', '.join(rec.profiles)}", at + "model")
        if task not in rec.identifier.tasks:
            raise bad(f"task {str(task)[:80]!r} is not in the taxonomy; use one of {', '.join(rec.identifier.tasks)}",
                      at + "task")
        score, rating = item.get("score"), item.get("rating")
        if (score is None) == (rating is None):
            raise bad("give either score (0..1) or rating (-1..1)", at + "score")
        value, low = (score, 0.0) if score is not None else (rating, -1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= 1.0:
            name = "score" if score is not None else "rating"
            raise bad(f"{name} must be a number in [{low:g}, 1], got {json.dumps(value)[:40]}", at + name)
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 10_000:
            raise bad(f"weight must be a number in (0, 10000], got {json.dumps(weight)[:40]}", at + "weight")
        source = item.get("source", "manual")
        if source not in ("manual", "evaluation"):
            raise bad(f"source must be 'manual' or 'evaluation', got {json.dumps(source)[:40]}", at + "source")
        ref = item.get("ref")
        if ref is not None and (not isinstance(ref, str) or len(ref) > 200):
            raise bad("ref must be a string of at most 200 characters", at + "ref")
        score01 = float(value) if score is not None else (float(value) + 1.0) / 2.0
        out.append(Observation(model, task, score01, float(weight), source, ref=ref))
    return out


def install_recommend_routes(app: Any, router: Any, owner: Any = None) -> None:
    """``POST /v1/recommend``, ``GET /v1/recommend/quality``, ``POST /v1/recommend/ratings`` (404 without a
    recommender) and the quality sync thread for the app's lifetime. ``owner``: the app's GatewayHTTP."""
    from autoglm.gateway.facade import GatewayError
    from autoglm.gateway.store import StoreUnavailable

    def recommender(*, quality: bool = False) -> Any:
        rec = getattr(router, "recommender", None)
        if rec is None:
            raise GatewayError(404, "not_found", "this server has no recommender; add a 'recommend:' section "
                               "(and model profiles) to the deploy file")
        if quality and rec.quality is None:
            raise GatewayError(404, "not_found", "this recommender keeps no quality records (it was built "
                               "without a QualityBook; build_recommender gives it one)")
        return rec

    syncs: dict[int, Any] = {}

    def sync_of(rec: Any) -> Any:
        from autoglm.recommend.learn import QualitySync

        if id(rec) not in syncs:
            syncs.clear()
            syncs[id(rec)] = QualitySync(rec, rec.quality, rec.quality_config)
        return syncs[id(rec)]

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        rec = getattr(router, "recommender", None)
        sync = sync_of(rec) if rec is not None and rec.quality is not None else None
        if sync is not None:
            sync.start()
        try:
            async with inner(a) as state:
                yield state
        finally:
            if sync is not None:
                await asyncio.to_thread(sync.stop)
                await asyncio.to_thread(rec.quality.close)

    app.router.lifespan_context = lifespan

    async def blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StoreUnavailable:
            raise GatewayError(503, "state_store_unavailable", "the state store that keeps model quality is "
                               "unreachable; retry shortly", type="service_unavailable",
                               headers={"retry-after": "2"}) from None

    def table(rec: Any, request: Request, models: set[str] | None = None) -> dict[str, Any]:
        key = request.scope.get("state", {}).get("autoglm_key")
        profiles = {m: p for m, p in rec.profiles.items()
                    if (key is None or key.allows_model(m)) and (models is None or m in models)}
        return {"object": "list", "prior_weight": rec.quality.prior_weight, "refreshed_at": rec.quality.refreshed_at,
                "data": rec.quality.table(profiles, rec.identifier.tasks)}

    @app.get("/v1/recommend/quality")
    async def quality(request: Request, sync: bool = True) -> JSONResponse:
        rec = recommender(quality=True)
        await blocking(sync_of(rec).run_once if sync else rec.quality.refresh)
        return JSONResponse(table(rec, request))

    @app.post("/v1/recommend/ratings", status_code=201)
    async def ratings(request: Request) -> JSONResponse:
        rec = recommender(quality=True)
        gw = getattr(owner, "gateway", None)
        if gw is not None:
            gw.require_admin(request.headers)
        try:
            spec = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GatewayError(400, "invalid_json", 'the body is not JSON; send {"model": "...", "task": "...", '
                               '"score": 0.8}') from None
        observations = _rating_rows(rec, spec)
        await blocking(rec.quality.store.add_many, observations)
        await blocking(rec.quality.refresh)
        return JSONResponse(table(rec, request, {o.model for o in observations}), status_code=201)

    @app.post("/v1/recommend")
    async def recommend(request: Request) -> JSONResponse:
        recommender()
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
