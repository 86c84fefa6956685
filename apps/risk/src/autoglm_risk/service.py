"""The decision service: FastAPI around :class:`~autoglm_risk.engine.RiskEngine`.

Routes (every one but ``/health`` and ``/metrics`` needs a key: ``Authorization: Bearer KEY``)::

    POST /v1/risk/decide                  a transaction -> {decision, score, rule_hits, reasons, model_version, decision_id}
    GET  /v1/risk/decisions/{id}          a stored decision
    GET  /v1/risk/reviews?status=open     the review queue (review and strong_verify), highest score first
    POST /v1/risk/reviews/{id}/claim      {"reviewer": "ana"}
    POST /v1/risk/reviews/{id}/resolve    {"label": "fraud"|"legit", "reviewer": "ana", "note": "..."}
    POST /v1/risk/labels                  {"labels": [{"transaction_id": 1, "label": "fraud"}, ...]} (a chargeback feed)
    GET  /v1/risk/monitor                 drift, prediction drift rate, AUC (also on /metrics)
    POST /v1/risk/admin/reload            serve the model now @champion (after a retrain)
    GET  /metrics                         Prometheus

Keys: autoglm's gateway keys (``autoglm keys create`` against the same state store; verified with
``autoglm.gateway.verify``) and/or static keys given to :func:`build_risk_app`. Errors are OpenAI
error objects (``autoglm.api.errors``): a malformed transaction is a 400 whose ``param`` names the field.
"""
from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any, Literal, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from autoglm.api.errors import APIError, install_error_handlers
from autoglm.gateway import extract_api_key
from autoglm_risk.engine import Conflict, NotFound, RiskEngine

__all__ = ["build_risk_app", "TransactionIn", "KeyChecker"]


class TransactionIn(BaseModel):
    """An incoming transaction. Identifiers are integers; no card numbers are accepted or stored."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: Optional[int] = Field(None, ge=1)
    user_id: int = Field(ge=0)
    card_id: int = Field(ge=0)
    device_id: int = Field(ge=0)
    merchant_id: int = Field(ge=0)
    amount: float = Field(gt=0, le=100_000_000)
    ip: str = Field(min_length=3, max_length=64)
    ts: Optional[int] = Field(None, ge=0, le=10**14, description="epoch milliseconds; default now")
    category: Optional[str] = Field(None, max_length=64)
    country: Optional[str] = Field(None, min_length=2, max_length=2)
    continent: Optional[Literal["AS", "EU", "NA", "SA", "AF", "OC", "AN"]] = None
    lat: Optional[float] = Field(None, ge=-90, le=90)
    lon: Optional[float] = Field(None, ge=-180, le=180)

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None
        return v

    def to_engine(self) -> dict[str, Any]:
        d = self.model_dump()
        d["txn_id"] = d.pop("transaction_id")
        return d


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reviewer: str = Field(min_length=1, max_length=64)


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Literal["fraud", "legit"]
    reviewer: Optional[str] = Field(None, min_length=1, max_length=64)
    note: Optional[str] = Field(None, max_length=2000)


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    transaction_id: int = Field(ge=1)
    label: Literal["fraud", "legit"]


class LabelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[LabelIn] = Field(min_length=1, max_length=100_000)


class KeyChecker:
    """Static keys and/or autoglm gateway keys (verified against the state store, cached for a minute)."""

    def __init__(self, static_keys: list[str] | None = None, gateway_store: Any = None, ttl_s: float = 60.0):
        self.static = {hashlib.sha256(k.encode()).hexdigest(): f"static-{i}" for i, k in enumerate(static_keys or [])}
        self.store, self.ttl = gateway_store, ttl_s
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.static) or self.store is not None

    def check(self, presented: str | None) -> str | None:
        """The key's name, or None when the key is missing or unknown."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).hexdigest()
        if digest in self.static:
            return self.static[digest]
        if self.store is None:
            return None
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        from autoglm.gateway import verify

        info = verify(self.store, presented)
        name = info.name if info is not None else None
        with self._lock:
            self._cache[digest] = (now, name)
        return name


def build_risk_app(engine: RiskEngine, keys: KeyChecker, *, allow_anonymous: bool = False) -> FastAPI:
    """The service's app, built from its parts (tests build it with their own)."""
    app = FastAPI(title="autoglm-risk", version="0.1.0")
    install_error_handlers(app)
    app.state.engine = engine
    _retrain_lock = threading.Lock()
    if not keys.enabled and not allow_anonymous:
        raise ValueError("the decision service needs keys (static keys or a gateway key store); pass "
                         "allow_anonymous=True only for local experiments")

    def key_of(request: Request) -> str:
        if not keys.enabled:
            return "anonymous"
        name = keys.check(extract_api_key(request.headers))
        if name is None:
            raise APIError("Missing or invalid API key. Send Authorization: Bearer <key> (autoglm keys create).",
                           401, code="invalid_api_key")
        return name

    async def run(fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except NotFound as e:
            raise APIError(str(e), 404, code="not_found") from None
        except Conflict as e:
            raise APIError(str(e), 409, code="conflict") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": engine.model.name if engine.model else None,
                "rules_version": engine.rules.version}

    @app.post("/v1/risk/decide")
    async def decide(body: TransactionIn, request: Request) -> JSONResponse:
        # On the event loop, not a worker thread: a decision is a few milliseconds of CPU, and handing it to
        # a thread and back (under the GIL) cost more than it saved. Keys are cached after the first check.
        key_of(request)
        rec = engine.decide(body.to_engine())
        return JSONResponse(rec.to_response(), headers={"x-risk-decision-ms": f"{rec.latency_ms:.3f}"})

    @app.get("/v1/risk/decisions/{decision_id}")
    async def get_decision(decision_id: str, request: Request) -> dict[str, Any]:
        key_of(request)
        return await run(engine.get, decision_id)

    @app.get("/v1/risk/reviews")
    async def reviews(request: Request, status: Literal["open", "claimed", "resolved"] = "open",
                      limit: int = 50) -> dict[str, Any]:
        key_of(request)
        if not 1 <= limit <= 1000:
            raise APIError("limit: expected 1..1000", 400, param="limit")
        items = await run(engine.reviews, status, limit)
        return {"object": "list", "data": items}

    @app.post("/v1/risk/reviews/{decision_id}/claim")
    async def claim(decision_id: str, body: ClaimIn, request: Request) -> dict[str, Any]:
        key_of(request)
        return await run(engine.claim, decision_id, body.reviewer)

    @app.post("/v1/risk/reviews/{decision_id}/resolve")
    async def resolve(decision_id: str, body: ResolveIn, request: Request) -> dict[str, Any]:
        key = key_of(request)
        return await run(engine.resolve, decision_id, body.label, body.reviewer, body.note, key)

    @app.post("/v1/risk/labels")
    async def labels(body: LabelsIn, request: Request) -> dict[str, Any]:
        key = key_of(request)
        return await run(engine.add_labels, [(x.transaction_id, 1 if x.label == "fraud" else 0) for x in body.labels],
                         key)

    @app.get("/v1/risk/monitor")
    async def monitor(request: Request) -> dict[str, Any]:
        key_of(request)
        return await run(engine.monitor.refresh)

    @app.post("/v1/risk/admin/reload")
    async def reload(request: Request) -> dict[str, Any]:
        key_of(request)
        old = await run(engine.reload_model)
        return {"previous": old, "model_version": engine.model.name if engine.model else None}

    @app.post("/v1/risk/admin/retrain")
    async def retrain(request: Request, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One turn of the loop on the labels so far (see autoglm_risk.loop); reloads a promoted model."""
        key_of(request)
        wd = getattr(app.state, "workdir", None)
        if wd is None:
            raise APIError("this service was started without a working directory; run autoglm-risk retrain", 400)
        opts = body or {}

        def work() -> dict[str, Any]:
            from autoglm_risk.loop import retrain as loop_retrain

            engine.flush()
            with _retrain_lock:
                r = loop_retrain(engine.store, wd.root, home=wd.home, min_feedback=int(opts.get("min_feedback", 1)),
                        n_trials=int(opts.get("trials", 4)), n_estimators=int(opts.get("estimators", 100)))
            old = engine.reload_model() if r.status == "promoted" else None
            return {"status": r.status, "reason": r.reason, "candidate": r.candidate, "previous": old,
                    "model_version": engine.model.name if engine.model else None}

        return await run(work)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        await asyncio.to_thread(engine.monitor.refresh)
        return Response(generate_latest(engine.registry), media_type=CONTENT_TYPE_LATEST)

    @app.on_event("shutdown")
    def _stop() -> None:
        engine.close()

    return app
