"""The gateway in the HTTP request path: auth middleware, per-request hooks, cache replay, admin routes.

:class:`GatewayHTTP` is built by the app factory from an optional :class:`~autoglm.gateway.Gateway`,
the static keys of ``autoglm serve --api-key`` and the app's :class:`~autoglm.monitoring.ServerMetrics`.
It supplies:

* :class:`GatewayMiddleware` (ASGI): gives each request an id (``x-request-id``) and an
  :class:`~autoglm.monitoring.AccessRecord`, authenticates every route but ``/health`` and ``/ui``
  (the console's pages, which ask for a key themselves; ``/metrics`` needs the admin key unless public
  or the gateway is open; ``/admin/*`` checks the admin key itself),
  counts requests by route and status, and writes one access-log line when the response is done.
* :meth:`GatewayHTTP.serve`: the path of a completion request, in the order the facade prescribes:
  authorize the model (403) -> look the response cache up (deterministic requests only; ``Cache-Control:
  no-cache`` skips the lookup, ``no-store`` skips storing) -> on a hit, take one request from the rpm
  bucket and replay the stored response (as SSE when ``stream``) -> on a miss, run the serving
  function with :class:`_Hooks`, which check limits with prompt + max tokens once the prompt is
  tokenized, hold a model slot, feed metrics, then record usage (reconciling the token estimate) and
  store the response. Responses carry ``x-autoglm-cache: hit|miss|bypass`` and the
  ``x-ratelimit-*`` headers.
* :func:`install_admin_routes`: ``POST/GET /admin/keys``, ``DELETE /admin/keys/{name}``, ``GET /admin/usage``.

A cache hit returns the stored body with a fresh ``id`` and ``created``; it counts one request
against the key's rpm, uses no tokens, and is recorded in usage as a request with zero tokens.
Static ``--api-key`` keys are unlimited and recorded in usage under the id ``cli``.

Knows FastAPI/Starlette and the OpenAI response shapes; not engines, models or storage backends.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from autoglm.api.errors import to_api_error
from autoglm.api.sse import SSE_DONE, SSE_HEADERS, sse_event
from autoglm.api.streams import ClientDisconnected
from autoglm.errors import AutoGLMError, OverloadedError
from autoglm.gateway.facade import ADMIN_KEY_INFO, Gateway, GatewayError, extract_api_key
from autoglm.gateway.ratelimit import LimiterUnavailable
from autoglm.gateway.keys import KeyInfo
from autoglm.gateway.ratelimit import RateDecision
from autoglm.monitoring.access_log import AccessRecord, emit

__all__ = ["GatewayHTTP", "GatewayMiddleware", "STATIC_KEY_INFO", "install_admin_routes", "replay_stream"]

log = logging.getLogger("autoglm.gateway")

# Who a static `--api-key` caller is: unlimited, every model.
STATIC_KEY_INFO = KeyInfo(id="cli", name="cli-key", prefix="(cli)")
OPEN_PATHS = frozenset({"/health"})
CACHE_HEADER = "x-autoglm-cache"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CACHED_KINDS = frozenset({"chat", "completion"})
_CACHED_FINISH = frozenset({"stop", "length", "tool_calls"})  # not abort/timeout: those are not the answer
_STATE_RECORD, _STATE_KEY = "autoglm_record", "autoglm_key"


def _headers_of(scope: Mapping[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}


def _key_label(key: KeyInfo | None) -> str:
    return key.name if key is not None else "(open)"


class GatewayHTTP:
    """Per-app gateway glue; ``gateway`` None means static keys only (or fully open)."""

    def __init__(self, gateway: Gateway | None, static_keys: list[str] | None = None, metrics: Any = None):
        self.gateway, self.metrics = gateway, metrics
        self._static = [k.encode("utf-8") for k in static_keys or [] if k]
        # async (request, response dict) -> None, awaited with each completed response, cache hits included
        # (the served-model monitor: autoglm.monitoring.served); it must only queue work
        self.on_response: Callable[[Request, dict[str, Any]], Awaitable[None]] | None = None

    # -- authentication ------------------------------------------------------------------------
    def _static_match(self, presented: str | None) -> bool:
        if not presented or not self._static:
            return False
        data = presented.encode("utf-8")
        return any(hmac.compare_digest(data, k) for k in self._static)

    def _missing(self, presented: str | None) -> GatewayError:
        if presented is None:
            return GatewayError(401, "invalid_api_key", "no API key provided; send it as 'Authorization: Bearer "
                                "<key>' or 'x-api-key: <key>' (the key given to 'autoglm serve --api-key').")
        return GatewayError(401, "invalid_api_key", "incorrect API key; check the key given to "
                            "'autoglm serve --api-key' or created with `autoglm keys create`.")

    async def authenticate(self, headers: Mapping[str, str]) -> KeyInfo | None:
        """The caller's key; ``None`` when the server is open; :class:`GatewayError` 401 otherwise."""
        presented = extract_api_key(headers)
        if self._static_match(presented):
            return STATIC_KEY_INFO
        if self.gateway is None:
            if self._static:
                raise self._missing(presented)
            return None
        info = await self.gateway.authenticate(headers)
        if info is None and self._static:  # the gateway is open, but a static key is required
            raise self._missing(presented)
        return info

    async def authenticate_metrics(self, headers: Mapping[str, str]) -> KeyInfo | None:
        """``/metrics``: public when configured or when nothing is protected; else the admin or a static key."""
        gw = self.gateway
        presented = extract_api_key(headers)
        if gw is not None and gw.settings.metrics_public:
            return None
        if self._static_match(presented):
            return STATIC_KEY_INFO
        if gw is not None and gw.is_admin(headers):
            return ADMIN_KEY_INFO
        if not self._static and (gw is None or await gw.open_mode()):
            return None
        raise GatewayError(401, "invalid_api_key", "/metrics needs the admin key (AUTOGLM_ADMIN_KEY) or "
                           "--api-key; or start the server with --metrics-public.")

    # -- operators: /admin/* ------------------------------------------------------------------
    async def operator_access(self, request: Request) -> str | None:
        """How the caller may use the operator routes (``/admin/*``): ``"key"`` (the admin key or a static
        ``--api-key``), ``"local"`` (an open server - no admin key, no static key, no API key created -
        and a caller on the loopback interface), or None (refused). Never raises."""
        gw, presented = self.gateway, extract_api_key(request.headers)
        if self._static_match(presented) or (gw is not None and gw.is_admin(request.headers)):
            return "key"
        if await self._protected():
            return None
        host = request.client.host if request.client is not None else ""
        if host == "localhost":
            return "local"
        try:
            return "local" if ipaddress.ip_address(host).is_loopback else None
        except ValueError:
            return None

    async def _protected(self) -> bool:
        """Does anything protect this server: a static key, an admin key, or an API key created?"""
        gw = self.gateway
        return bool(self._static) or (gw is not None and (bool(gw.settings.admin_key) or not await gw.open_mode()))

    async def require_operator(self, request: Request) -> None:
        """Admit an operator (see :meth:`operator_access`) or raise the 401/403 that says what to send."""
        access = await self.operator_access(request)
        if access is not None:
            if access == "key":
                record = request.scope.get("state", {}).get(_STATE_RECORD)
                if record is not None:
                    record.key_name = ADMIN_KEY_INFO.name
            return
        gw = self.gateway
        if not await self._protected():
            raise GatewayError(403, "admin_loopback_only", "this server has no admin key, so /admin/* answers only "
                               "clients on this machine; set AUTOGLM_ADMIN_KEY (or --api-key) on the server")
        self.count_auth_failure(None, None, "admin")
        if gw is not None and not self._static:
            gw.require_admin(request.headers)  # raises the 401 with its hint
        raise self._missing(extract_api_key(request.headers))

    async def store_status(self) -> str | None:
        """``ok``/``down`` for the gateway's state store; None without a gateway."""
        return None if self.gateway is None else await self.gateway.store_status()

    async def health_details_allowed(self, headers: Mapping[str, str]) -> bool:
        """Counters and backend details on ``/health``: for anyone while the server is open, else only
        for a caller with a valid key (``/health`` itself stays open for load balancers)."""
        if self.gateway is not None and self.gateway.is_admin(headers):
            return True
        try:
            await self.authenticate(headers)
        except Exception:  # noqa: BLE001 - no key, a bad key, or the store down: the short answer
            return False
        return True

    def count_auth_failure(self, key: KeyInfo | None, model: str | None, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_failures.labels(model or "", _key_label(key) if key else "", reason).inc()

    # -- the request path ----------------------------------------------------------------------
    async def check_limits(self, key: KeyInfo | None, model: str, est_tokens: int) -> RateDecision | None:
        if self.gateway is None or key is STATIC_KEY_INFO:
            return None
        try:
            return await self.gateway.check_limits(key, model, est_tokens)
        except GatewayError:
            if self.metrics is not None:
                self.metrics.rate_limited.labels(model, _key_label(key)).inc()
            raise
        except LimiterUnavailable as exc:
            # the limiter's store (Redis) is unreachable: a clean 503, not a server error
            log.error("rate limiter unavailable: %s", exc)
            raise GatewayError(503, "rate_limiter_unavailable", "the rate limiter's store is unreachable; retry "
                               "shortly", type="server_error", headers={"retry-after": "5"}) from None

    async def serve(
        self,
        request: Request,
        body: Any,
        engine: Any,
        model: str,
        handler: Callable[..., Awaitable[Response]],
        kind: str,
    ) -> Response:
        """Run ``handler(engine, body, request, hooks)`` behind authorization, limits and the cache.

        ``kind`` is ``"chat"`` or ``"completion"`` (how to replay a cached response as a stream); any
        other kind (``"responses"``, ``"tokenize"``) gets keys, limits and usage but no response cache.
        """
        gw, metrics = self.gateway, self.metrics
        record: AccessRecord | None = request.scope.get("state", {}).get(_STATE_RECORD)
        key: KeyInfo | None = request.scope.get("state", {}).get(_STATE_KEY)
        if record is not None:
            record.model, record.stream = model, bool(getattr(body, "stream", False))
        if gw is not None:
            try:
                gw.authorize_model(key, model)
            except GatewayError:
                self.count_auth_failure(key, model, "model_not_allowed")
                raise
        cache_key, cache_status = None, None
        if gw is not None and kind in _CACHED_KINDS:  # responses, tokenize: never from the cache
            fields = body.model_dump(mode="json")
            fields["model"] = model
            if gw.cacheable(fields):
                directives = request.headers.get("cache-control", "").lower()
                cache_key = gw.cache_key(fields) if "no-store" not in directives else None
                if "no-cache" in directives:
                    cache_status = "bypass"
                else:
                    hit = None
                    try:
                        hit = await gw.cache.get(gw.cache_key(fields))
                    except Exception:  # noqa: BLE001 - a broken cache must not fail the request
                        log.warning("response cache lookup failed; serving from the model", exc_info=True)
                    label = (model, _key_label(key))
                    if hit is not None:
                        if metrics is not None:
                            metrics.cache_hits.labels(*label).inc()
                        return await self._serve_hit(request, body, key, model, hit, kind, record)
                    cache_status = "miss"
                    if metrics is not None:
                        metrics.cache_misses.labels(*label).inc()
        if record is not None and cache_status is not None:
            record.cache = cache_status
        hooks = _Hooks(self, key, model, record, cache_key, request)
        response = await handler(engine, body, request, hooks)
        response.headers[CACHE_HEADER] = cache_status or "miss"
        if hooks.decision is not None:
            response.headers.update(hooks.decision.headers())
        return response

    async def _serve_hit(self, request: Request, body: Any, key: KeyInfo | None, model: str,
                         stored: dict[str, Any], kind: str, record: AccessRecord | None) -> Response:
        decision = await self.check_limits(key, model, 0)
        if self.gateway is not None:
            try:
                await self.gateway.record_usage(key, model, 0, 0, decision)
            except Exception:  # noqa: BLE001 - usage is bookkeeping; the answer is ready
                log.warning("recording usage of a cache hit failed", exc_info=True)
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        fresh = {**stored, "id": f"{prefix}-{secrets.token_hex(12)}", "created": int(time.time())}
        if self.on_response is not None:
            await self.on_response(request, fresh)
        usage = fresh.get("usage") or {}
        if record is not None:
            record.cache = "hit"
            record.prompt_tokens, record.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            record.first_token()
        headers = {CACHE_HEADER: "hit", **(decision.headers() if decision is not None else {})}
        if not body.stream:
            return JSONResponse(fresh, headers=headers)
        include_usage = bool(getattr(body, "stream_options", None) and body.stream_options.include_usage)
        return StreamingResponse(replay_stream(fresh, kind, include_usage), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **headers})


class _Hooks:
    """:class:`~autoglm.api.streams.RequestHooks` for one request: limits, slot, metrics, usage, cache."""

    def __init__(self, owner: GatewayHTTP, key: KeyInfo | None, model: str, record: AccessRecord | None,
                 cache_key: str | None, request: Request | None = None):
        self.owner, self.key, self.model, self.record, self.cache_key = owner, key, model, record, cache_key
        self.request = request
        self.decision: RateDecision | None = None
        self._stack = contextlib.AsyncExitStack()
        self._observe = owner.metrics.observer(model) if owner.metrics is not None else None
        self._tokens: dict[str, tuple[int, int]] = {}  # engine request id -> (prompt, output)
        self._finished = False

    async def admit(self, prompt_tokens: int, max_new_tokens: int) -> None:
        gw = self.owner.gateway
        if gw is None:
            return
        self.decision = await self.owner.check_limits(self.key, self.model, prompt_tokens + max_new_tokens)
        try:
            await self._stack.enter_async_context(gw.model_slot(self.model))
        except GatewayError:
            if self.owner.metrics is not None:
                self.owner.metrics.rate_limited.labels(self.model, _key_label(self.key)).inc()
            raise

    def on_output(self, out: Any) -> None:
        if self.record is not None and out.token_ids:
            self.record.first_token()
        self._tokens[out.request_id] = (out.num_prompt_tokens, out.num_output_tokens)
        if self._observe is not None:
            self._observe(out)

    async def finish(self, usage: dict[str, int] | None, response: dict[str, Any] | None,
                     error: BaseException | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        import anyio

        # Shielded: a stream cut by its client is cancelled, and this bookkeeping must still happen.
        with anyio.CancelScope(shield=True):
            try:
                await self._finish(usage, response, error)
            except Exception:  # noqa: BLE001 - bookkeeping must never turn a served answer into an error
                log.warning("gateway bookkeeping for model %s failed", self.model, exc_info=True)

    async def _finish(self, usage: dict[str, int] | None, response: dict[str, Any] | None,
                      error: BaseException | None) -> None:
        await self._stack.aclose()  # the model slot
        if usage is None:
            usage = {"prompt_tokens": sum(p for p, _ in self._tokens.values()),
                     "completion_tokens": sum(o for _, o in self._tokens.values())}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        if self.record is not None:
            self.record.prompt_tokens, self.record.completion_tokens = prompt, completion
        if error is None and response is not None and self.owner.on_response is not None:
            await self.owner.on_response(self.request, response)
        if error is not None and _is_upstream_failure(error) and self.owner.metrics is not None:
            self.owner.metrics.upstream_errors.labels(self.model, _key_label(self.key)).inc()
        gw = self.owner.gateway
        if gw is None:
            return
        await gw.record_usage(self.key, self.model, prompt, completion, self.decision)
        if (error is None and response is not None and self.cache_key is not None and gw.cache is not None
                and all(c.get("finish_reason") in _CACHED_FINISH for c in response.get("choices", []))):
            await gw.cache.put(self.cache_key, response)


def _is_upstream_failure(error: BaseException) -> bool:
    if isinstance(error, (ClientDisconnected, asyncio.CancelledError, GeneratorExit, GatewayError)):
        return False
    if isinstance(error, OverloadedError):
        return True
    if isinstance(error, AutoGLMError):
        return False  # the request's own fault (400/404)
    return to_api_error(error).status >= 500


# -- cache replay ----------------------------------------------------------------------------------
def replay_stream(response: dict[str, Any], kind: str, include_usage: bool) -> AsyncIterator[str]:
    """A stored (non-streamed) response as SSE chunks shaped like live streaming, ending ``[DONE]``."""

    async def gen() -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        base = {"id": response["id"], "object": obj, "created": response["created"], "model": response["model"]}

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
            c = {**base, "choices": choices}
            if include_usage:
                c["usage"] = usage
            return sse_event(c)

        for choice in response.get("choices", []):
            i, finish = choice["index"], choice.get("finish_reason")
            if kind == "chat":
                msg = choice.get("message") or {}
                calls = msg.get("tool_calls") or []
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": None if calls else ""},
                              "logprobs": None, "finish_reason": None}])
                if msg.get("content"):
                    yield chunk([{"index": i, "delta": {"content": msg["content"]},
                                  "logprobs": choice.get("logprobs"), "finish_reason": None}])
                for j, call in enumerate(calls):
                    yield chunk([{"index": i, "delta": {"tool_calls": [{"index": j, **call}]},
                                  "logprobs": None, "finish_reason": None}])
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish}])
            else:
                yield chunk([{"index": i, "text": choice.get("text", ""), "logprobs": choice.get("logprobs"),
                              "finish_reason": None}])
                yield chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": finish}])
        if include_usage:
            yield chunk([], response.get("usage"))
        yield SSE_DONE

    return gen()


# -- middleware ------------------------------------------------------------------------------------
class GatewayMiddleware:
    """ASGI: request id, access record, authentication, request counting, the access-log line."""

    def __init__(self, app: Any, owner: GatewayHTTP):
        self.app, self.owner = app, owner

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers_of(scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else f"req-{secrets.token_hex(8)}"
        record = AccessRecord(request_id=request_id, method=scope.get("method", ""), path=scope.get("path", ""))
        state = scope.setdefault("state", {})
        state[_STATE_RECORD] = record

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        try:
            path = scope.get("path", "")
            # /ui: the console's static pages (autoglm.console), which ask for a key themselves
            if path not in OPEN_PATHS and not path.startswith(("/admin/", "/ui/")) and path != "/ui":
                try:
                    if path == "/metrics":
                        key = await self.owner.authenticate_metrics(headers)
                    else:
                        key = await self.owner.authenticate(headers)
                except GatewayError as exc:
                    self.owner.count_auth_failure(None, None, "invalid_key" if extract_api_key(headers)
                                                  else "missing_key")
                    await gateway_error_response(exc)(scope, receive, send_with_id)
                    return
                state[_STATE_KEY] = key
                record.key_name = key.name if key is not None else None
            await self.app(scope, receive, send_with_id)
        finally:
            if record.status == 0:
                record.status = 500  # the exception went past us to the server-error handler
            metrics = self.owner.metrics
            if metrics is not None:
                route = scope.get("route")
                metrics.http_requests.labels(getattr(route, "path", "(unmatched)"), str(record.status)).inc()
            emit(record)


def gateway_error_response(exc: GatewayError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("www-authenticate", "Bearer")
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def install_gateway_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway(_: Request, exc: GatewayError) -> JSONResponse:
        return gateway_error_response(exc)


# -- admin routes ----------------------------------------------------------------------------------
def install_admin_routes(app: FastAPI, owner: GatewayHTTP) -> None:
    """Key management and usage over HTTP, for holders of the admin key only."""
    from autoglm.gateway import keys as keys_mod
    from autoglm.gateway import usage as usage_mod

    gw = owner.gateway
    if gw is None:
        return

    def admin(request: Request) -> None:
        try:
            gw.require_admin(request.headers)
        except GatewayError:
            owner.count_auth_failure(None, None, "admin")
            raise
        record = request.scope.get("state", {}).get(_STATE_RECORD)
        if record is not None:
            record.key_name = ADMIN_KEY_INFO.name

    @app.post("/admin/keys", status_code=201)
    async def create_key(request: Request) -> JSONResponse:
        admin(request)
        try:
            spec = json.loads(await request.body() or b"{}")
        except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
            raise GatewayError(400, "invalid_json", f"the body is not JSON ({getattr(exc, 'msg', exc)}); send an object like "
                               '{"name": "ci-bot", "rpm": 60}') from None
        if not isinstance(spec, dict):
            raise GatewayError(400, "invalid_request", "the body must be a JSON object with at least 'name'")
        unknown = set(spec) - {"name", "models", "rpm", "tpm", "expires_at"}
        if unknown:
            raise GatewayError(400, "invalid_request", f"unknown field(s) {sorted(unknown)}; allowed: name, "
                               "models, rpm, tpm, expires_at", param=sorted(unknown)[0])
        # every field checked before anything is stored: a key is created only if its answer can be sent
        checks = (("name", lambda v: keys_mod.check_name(v if v is not None else "")),
                  ("models", keys_mod.check_models),
                  ("rpm", lambda v: keys_mod.check_limit("rpm", v)),
                  ("tpm", lambda v: keys_mod.check_limit("tpm", v)),
                  ("expires_at", lambda v: keys_mod.check_expires(v, what="expires_at")))
        fields: dict[str, Any] = {}
        for field, check in checks:
            try:
                fields[field] = check(spec.get(field))
            except AutoGLMError as exc:
                raise GatewayError(400, "invalid_request", str(exc), param=field) from None
        try:
            plaintext, info = await gw._store_call(
                keys_mod.create_key, gw.store, fields["name"], fields["models"], fields["rpm"], fields["tpm"],
                fields["expires_at"], pepper=gw.settings.key_pepper,
            )
        except AutoGLMError as exc:
            raise GatewayError(400, "invalid_request", str(exc), param="name") from None
        return JSONResponse({**info.to_dict(), "key": plaintext}, status_code=201)

    @app.get("/admin/keys")
    async def list_keys(request: Request) -> dict[str, Any]:
        admin(request)
        infos = await gw._store_call(keys_mod.list_keys, gw.store)
        return {"object": "list", "data": [i.to_dict() for i in infos]}

    @app.delete("/admin/keys/{name}")
    async def revoke_key(name: str, request: Request) -> dict[str, Any]:
        admin(request)
        try:
            info = await gw._store_call(keys_mod.revoke_key, gw.store, name)
        except keys_mod.KeyNotFoundError as exc:
            raise GatewayError(404, "key_not_found", str(exc), param="name") from None
        return info.to_dict()

    @app.get("/admin/usage")
    async def usage(request: Request, key: str | None = None, model: str | None = None, per: str = "day",
                    since: str | None = None) -> dict[str, Any]:
        admin(request)
        since_ts = None
        if since is not None:
            try:
                since_ts = float(since)
            except ValueError:
                since_ts = None
            if since_ts is None or not math.isfinite(since_ts) or not 0 <= since_ts <= keys_mod.MAX_EXPIRES:
                raise GatewayError(400, "invalid_request", f"since must be epoch seconds between 0 and "
                                   f"{keys_mod.MAX_EXPIRES:.0f}, got {since[:40]!r}", param="since")
        if per not in ("hour", "day"):
            raise GatewayError(400, "invalid_request", f"per must be 'hour' or 'day', got {per[:40]!r}", param="per")
        try:
            rows = await gw._store_call(usage_mod.query_usage, gw.store, key=key, model=model, per=per,
                                        since=since_ts)
        except keys_mod.KeyNotFoundError as exc:
            raise GatewayError(404, "key_not_found", str(exc), param="key") from None
        except AutoGLMError as exc:
            raise GatewayError(400, "invalid_request", str(exc)) from None
        return {"object": "list", "data": [r.to_dict() for r in rows]}
