"""The monitor's routes: ``POST /v1/monitor/labels`` (labels for AUC) and ``GET /admin/monitor``.

``POST /v1/monitor/labels`` is keyed like every route (the gateway middleware authenticates it). Body::

    {"id": "chatcmpl-...", "label": 1}                  # a scored prediction this key received
    {"model": "NAME", "score": 0.83, "label": 0}        # a prediction scored elsewhere
    {"labels": [ ...up to 1000 of either... ]}

``label`` is 1 (the class the score ranks high) or 0; labelling an id again corrects it. An id that was
not served to this key as a score (a number, or JSON with a ``score`` field) is a 404; bad values are a
400 naming the field (``labels[3].label``). ``GET /admin/monitor?windows=20`` (operators: the admin key,
or loopback on an open server) returns the per-model summary ``/metrics`` shows, the references and the
latest windows. Knows FastAPI and the OpenAI error shape; the data is
:class:`~autoglm.monitoring.served.ServedMonitor`'s.
"""
from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from fastapi import Request

__all__ = ["install_monitor_routes", "parse_labels"]

_MAX_LABELS = 1000


def parse_labels(spec: Any) -> list[dict[str, Any]]:
    """``{"id", "label"}`` | ``{"model", "score", "label"}`` | ``{"labels": [...]}`` -> checked items.

    ``label``: 1/0 or true/false (1 = the positive class the score ranks). Raises (message, param)."""
    if not isinstance(spec, dict):
        raise ValueError("the body must be a JSON object: {\"id\": \"chatcmpl-...\", \"label\": 1}, "
                         "{\"model\": \"NAME\", \"score\": 0.8, \"label\": 1} or {\"labels\": [...]}", "body")
    items = spec["labels"] if "labels" in spec else [spec]
    if "labels" in spec and set(spec) != {"labels"}:
        raise ValueError("with 'labels', give nothing else at the top level", sorted(set(spec) - {"labels"})[0])
    if not isinstance(items, list) or not items:
        raise ValueError("labels must be a non-empty list", "labels")
    if len(items) > _MAX_LABELS:
        raise ValueError(f"at most {_MAX_LABELS} labels per request, got {len(items)}", "labels")
    out = []
    for i, item in enumerate(items):
        where = f"labels[{i}]." if "labels" in spec else ""
        if not isinstance(item, dict):
            raise ValueError(f"{where or 'each label '}must be an object", f"{where}label".rstrip("."))
        unknown = sorted(set(item) - {"id", "model", "score", "label"})
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; allowed: id, model, score, label", where + unknown[0])
        label = item.get("label")
        if label not in (0, 1) or (isinstance(label, float)):
            raise ValueError(f"label must be 1 or 0 (true or false), got {json.dumps(label)[:40]}", where + "label")
        if "id" in item:
            if "score" in item or "model" in item:
                raise ValueError("give either id (a prediction this key received) or model and score, not both",
                                 where + "id")
            if not isinstance(item["id"], str) or not item["id"]:
                raise ValueError("id must be the id of a chat or completion response", where + "id")
            out.append({"id": item["id"], "label": int(label)})
            continue
        score, model = item.get("score"), item.get("model")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"score must be a finite number (or give the id of a scored response), got "
                             f"{json.dumps(score)[:40]}", where + "score")
        if not isinstance(model, str) or not model:
            raise ValueError("model must name the served model the score came from", where + "model")
        out.append({"model": model, "score": float(score), "label": int(label)})
    return out


def install_monitor_routes(app: Any, owner: Any, router: Any, monitor: Any) -> None:
    """``POST /v1/monitor/labels`` and ``GET /admin/monitor`` for ``monitor`` (a
    :class:`~autoglm.monitoring.served.ServedMonitor`)."""
    from autoglm.api.errors import APIError
    from autoglm.gateway.store import StoreUnavailable
    from autoglm.gateway.usage import OPEN_MODE_KEY_ID

    async def store_call(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreUnavailable:
            raise APIError("the state store that keeps the monitor's data is unreachable; retry shortly", 503,
                           code="state_store_unavailable", headers={"retry-after": "2"}) from None

    @app.post("/v1/monitor/labels")
    async def post_labels(request: Request) -> dict[str, Any]:
        key = request.scope.get("state", {}).get("autoglm_key")
        key_id = key.id if key is not None else OPEN_MODE_KEY_ID
        try:
            spec = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise APIError("the body is not JSON; send {\"id\": \"chatcmpl-...\", \"label\": 1}", 400,
                           param="body", code="invalid_value") from None
        try:
            items = parse_labels(spec)
        except ValueError as exc:
            message, param = exc.args
            raise APIError(message, 400, param=param, code="invalid_value") from None
        models: dict[str, str] = {}
        for item in items:
            if "model" in item and item["model"] not in models:
                route = router.resolve(item["model"])  # unknown -> 404 naming the models
                if key is not None and hasattr(key, "allows_model") and not key.allows_model(route.name):
                    raise APIError(f"this key may not use the model {item['model']!r}", 403, param="model",
                                   code="model_not_allowed")
                models[item["model"]] = route.name
        try:
            data = await store_call(monitor.apply_labels, key_id, items, models)
        except LookupError as exc:
            index, rid = exc.args
            param = f"labels[{index}].id" if isinstance(spec, dict) and "labels" in spec else "id"
            raise APIError(f"no scored prediction with id {str(rid)[:80]!r} was served to this key; label a response "
                           "whose answer was a score (a number, or JSON with a 'score' field), or send model and "
                           "score", 404, param=param, code="prediction_not_found") from None
        return {"object": "list", "data": data}

    gw = owner.gateway

    async def operator(request: Request) -> None:
        require = getattr(owner, "require_operator", None)  # the admin key, or loopback on an open server
        if require is not None:
            await require(request)
        elif gw is not None:
            gw.require_admin(request.headers)
        else:
            raise APIError("/admin/monitor needs the gateway (it checks the admin key); use `autoglm monitor "
                           "status` on this machine", 404, code="not_found")

    @app.get("/admin/monitor")
    async def monitor_status(request: Request, windows: int = 20) -> dict[str, Any]:
        await operator(request)
        if not 0 <= windows <= 10_000:
            raise APIError(f"windows must be in 0..10000, got {windows}", 400, param="windows", code="invalid_value")

        def read() -> dict[str, Any]:
            ws = monitor.window_store()
            rows = ws.windows(limit=windows) if windows else []
            return {"object": "monitor.status", "instance": monitor.instance,
                    "models": {name: snap.to_dict() for name, snap in monitor.snapshot.items()},
                    "references": [r.to_dict() for r in ws.references()],
                    "windows": [r.to_dict() for r in rows]}

        return await store_call(read)
