"""``POST /v1/feedback`` (rate a response this key received) and ``GET /admin/feedback[/stats]``.

:func:`install_feedback_routes` is called by the app factory with the app's
:class:`~autoglm.gateway.http.GatewayHTTP` and server settings. With a gateway (it has the state store)
it builds the :class:`~autoglm.feedback.capture.CaptureService`, installs it as the app's response tap
when capture is on (``server.capture``, off by default; see :mod:`autoglm.api.respond`), drains its
queue when the app shuts down, and adds the routes.

``POST /v1/feedback`` body::

    {"id": "chatcmpl-...", "choice_index": 0,          # the response, as the API returned it
     "rating": 0.5 | "thumbs": "up" | "down",          # a number in [-1, 1], or thumbs (= +1 / -1)
     "correction": "the right answer",                 # optional
     "preferred_over": {"id": "chatcmpl-...", "choice_index": 0},   # optional: this answer is better
     "comment": "...", "tags": ["billing"]}            # optional

It is keyed like every other route, and a key may rate only responses it received: another key's
response, or an id never captured, is a 404. Bad values are a 400 naming the field; capture off for
this key is a 409 that says so. 201 returns the stored feedback. Admin routes (the admin key):
``GET /admin/feedback?since=7d&key=ID&source=explicit&limit=100``, ``GET /admin/feedback/stats?since=`` and
``GET /admin/feedback/export?format=sft|dpo|kto&since=&lr=&half_life_days=&implicit_weight=&min_support=``
(the rows ``autoglm feedback export`` writes, as JSON).
Knows FastAPI and the OpenAI error shape; the storage is :mod:`autoglm.feedback`'s.
"""
from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from autoglm.api.errors import APIError
from autoglm.errors import ConfigError

__all__ = ["install_feedback_routes"]

_FIELDS = {"id", "choice_index", "rating", "thumbs", "correction", "preferred_over", "comment", "tags"}
_MAX_CORRECTION, _MAX_COMMENT, _MAX_TAGS, _MAX_TAG = 64 * 1024, 4096, 32, 64
_OFF = ("capture is off for this key, so there is no stored response to rate; turn it on in the deploy "
        "file (gateway.capture.enabled: true, or list the key under gateway.capture.keys) and rate responses "
        "received after that")


def _since(value: str | None) -> float | None:
    from autoglm.feedback.store import parse_since

    try:
        return parse_since(value)
    except ConfigError as exc:
        raise APIError(str(exc), 400, param="since", code="invalid_value") from None


def _bad(message: str, param: str) -> APIError:
    return APIError(message, 400, param=param, code="invalid_value")


def _index(value: Any, param: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(f"{param} must be a whole number >= 0, got {json.dumps(value)[:40]}", param)
    return value


def _text(spec: dict[str, Any], name: str, limit: int) -> str | None:
    value = spec.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string, got {type(value).__name__}", name)
    if len(value) > limit:
        raise _bad(f"{name} is {len(value)} characters; at most {limit} are accepted", name)
    return value


def _rating(spec: dict[str, Any]) -> float | None:
    rating, thumbs = spec.get("rating"), spec.get("thumbs")
    if rating is not None and thumbs is not None:
        raise _bad("give either rating or thumbs, not both", "thumbs")
    if thumbs is not None:
        if thumbs not in ("up", "down"):
            raise _bad(f"thumbs must be 'up' or 'down', got {json.dumps(thumbs)[:40]}", "thumbs")
        return 1.0 if thumbs == "up" else -1.0
    if rating is None:
        return None
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating) \
            or not -1.0 <= rating <= 1.0:
        raise _bad(f"rating must be a number in [-1, 1] (or use thumbs: up|down), got {json.dumps(rating)[:40]}",
                   "rating")
    return float(rating)


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) and 0 < len(t) <= _MAX_TAG for t in value):
        raise _bad(f"tags must be a list of strings of 1..{_MAX_TAG} characters", "tags")
    if len(value) > _MAX_TAGS:
        raise _bad(f"at most {_MAX_TAGS} tags are accepted, got {len(value)}", "tags")
    return list(dict.fromkeys(value))


def install_feedback_routes(app: FastAPI, owner: Any, server: Any) -> None:
    """Capture (when on) and the feedback routes for ``app``; nothing without a gateway (no state store)."""
    from autoglm.feedback.capture import CaptureService, CaptureSettings
    from autoglm.feedback.store import Feedback
    from autoglm.gateway.store import StoreUnavailable
    from autoglm.gateway.usage import OPEN_MODE_KEY_ID

    gw = owner.gateway
    if gw is None:
        return
    settings = getattr(server, "capture", None) or CaptureSettings()
    service = CaptureService(gw.store, settings)
    app.state.feedback = service

    def caller(request: Request) -> tuple[str, str | None]:
        key = request.scope.get("state", {}).get("autoglm_key")
        return (key.id, key.name) if key is not None else (OPEN_MODE_KEY_ID, None)

    if settings.active:
        async def tap(request: Request, response: dict[str, Any]) -> None:
            key_id, name = caller(request)
            if settings.captures(name):
                service.submit_exchange(key_id, await request.body(), response)

        app.state.response_tap = tap
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(a: Any) -> AsyncIterator[Any]:
            async with inner(a) as state:
                yield state
            await asyncio.to_thread(service.close)  # what is still queued is written before the store closes

        app.router.lifespan_context = lifespan

    async def store_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StoreUnavailable:
            raise APIError("the state store that keeps feedback is unreachable; retry shortly", 503,
                           code="state_store_unavailable", headers={"retry-after": "2"}) from None

    async def owned(response_id: Any, choice: int, key_id: str, param: str) -> Any:
        """The captured exchange ``response_id`` if this key received it: (key_id, n_choices, conv_hash)."""
        if not isinstance(response_id, str) or not response_id:
            raise _bad(f"{param} must be the id of a chat or completion response (e.g. chatcmpl-...)", param)
        found = service.recent(response_id)
        if found is None:
            ex = await store_call(lambda: service.feedback_store().get_exchange(response_id))
            found = ex
        if found is None or found.key_id != key_id:
            raise APIError(f"no response with id {response_id[:80]!r} was captured for this key; rate a response "
                           "this key received while capture was on", 404, param=param, code="response_not_found")
        if getattr(found, "dropped", None):
            raise APIError(f"the response {response_id[:80]!r} was not stored ({found.dropped}: larger than "
                           "gateway.capture.max_exchange_bytes), so it cannot be rated", 409, param=param,
                           code="response_not_stored")
        if choice >= found.n_choices:
            raise _bad(f"choice_index {choice} is out of range: the response has {found.n_choices} choice(s)",
                       "choice_index" if param == "id" else "preferred_over.choice_index")
        return found

    @app.post("/v1/feedback", status_code=201)
    async def feedback(request: Request) -> JSONResponse:
        key_id, name = caller(request)
        try:
            spec = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _bad("the body is not JSON; send an object such as {\"id\": \"chatcmpl-...\", \"thumbs\": "
                       "\"up\"}", "body") from None
        if not isinstance(spec, dict):
            raise _bad("the body must be a JSON object with at least 'id'", "body")
        unknown = sorted(set(spec) - _FIELDS)
        if unknown:
            raise _bad(f"unknown field(s) {unknown}; allowed: {', '.join(sorted(_FIELDS))}", unknown[0])
        choice = _index(spec.get("choice_index"), "choice_index")
        rating = _rating(spec)
        correction = _text(spec, "correction", _MAX_CORRECTION)
        comment = _text(spec, "comment", _MAX_COMMENT)
        tags = _tags(spec.get("tags"))
        other = spec.get("preferred_over")
        if other is not None and (not isinstance(other, dict) or set(other) - {"id", "choice_index"}):
            raise _bad("preferred_over must be an object {\"id\": \"chatcmpl-...\", \"choice_index\": 0}",
                       "preferred_over")
        if rating is None and correction is None and other is None and comment is None and not tags:
            raise _bad("the feedback says nothing: give rating or thumbs, correction, preferred_over, comment or "
                       "tags", "rating")
        if not isinstance(spec.get("id"), str) or not spec["id"]:
            raise _bad("id must be the id of a chat or completion response (e.g. chatcmpl-...)", "id")
        if not settings.captures(name):
            raise APIError(_OFF, 409, param="id", code="capture_off")
        this = await owned(spec["id"], choice, key_id, "id")
        other_id = other_choice = None
        if other is not None:
            other_choice = _index(other.get("choice_index"), "preferred_over.choice_index")
            that = await owned(other.get("id"), other_choice, key_id, "preferred_over.id")
            other_id = other["id"]
            if other_id == spec["id"] and other_choice == choice:
                raise _bad("preferred_over names the same choice of the same response", "preferred_over")
            if this.conv_hash and that.conv_hash and this.conv_hash != that.conv_hash:
                raise _bad("preferred_over must be a response to the same conversation (same messages or prompt); "
                           f"{other_id[:80]!r} answers a different one", "preferred_over.id")
        fb = Feedback(id=f"fb-{secrets.token_hex(12)}", response_id=spec["id"], choice_index=choice, key_id=key_id,
                      source="explicit", rating=rating, correction=correction, other_id=other_id,
                      other_choice=other_choice, comment=comment, tags=tags, created_at=time.time())
        try:
            await service.add_feedback(fb)
        except StoreUnavailable:
            raise APIError("the state store that keeps feedback is unreachable; retry shortly", 503,
                           code="state_store_unavailable", headers={"retry-after": "2"}) from None
        return JSONResponse({**fb.to_dict(), "created": int(fb.created_at)}, status_code=201)

    def admin(request: Request) -> None:
        gw.require_admin(request.headers)

    @app.get("/admin/feedback")
    async def list_feedback(request: Request, since: str | None = None, key: str | None = None,
                            source: str | None = None, limit: int = 1000) -> dict[str, Any]:
        admin(request)
        if not 1 <= limit <= 100_000:
            raise _bad(f"limit must be in 1..100000, got {limit}", "limit")
        ts = _since(since)
        rows = await store_call(lambda: service.feedback_store().list_feedback(since=ts, key_id=key, source=source,
                                                                               limit=limit))
        return {"object": "list", "data": [r.to_dict() for r in rows]}

    @app.get("/admin/feedback/stats")
    async def feedback_stats(request: Request, since: str | None = None) -> dict[str, Any]:
        admin(request)
        ts = _since(since)
        return await store_call(lambda: service.feedback_store().stats(since=ts))

    @app.get("/admin/feedback/export")
    async def feedback_export(request: Request, format: str = "sft", since: str | None = None, lr: float = 1.0,
                              half_life_days: float = 30.0, implicit_weight: float = 0.5,
                              min_support: int = 1) -> dict[str, Any]:
        """The rows ``autoglm feedback export --format sft|dpo|kto`` writes, as JSON (autoglm.feedback.export)."""
        from autoglm.feedback.export import ExportOptions, export_rows

        admin(request)
        ts = _since(since)
        try:
            options = ExportOptions(format=format, since=ts, lr=lr, half_life_days=half_life_days,
                                    implicit_weight=implicit_weight, min_support=min_support)
        except ConfigError as exc:
            named = {"export format": "format", "half-life": "half_life_days", "min-support": "min_support",
                     "implicit-weight": "implicit_weight"}
            raise _bad(str(exc), next((v for k, v in named.items() if str(exc).startswith(k)), "format")) from None
        result = await store_call(lambda: export_rows(service.feedback_store(), options))
        return {"object": "list", "format": format, "data": result.rows, "stats": result.stats}
