"""OpenAI's Files and Batch API over a real queue: ``/v1/files`` and ``/v1/batches``.

Routes (keyed like every other route; a key sees, runs and cancels only its own files and batches --
another key's id is a 404, exactly like an unknown one):

* ``POST /v1/files`` (multipart: ``file``, ``purpose=batch``), ``GET /v1/files[?purpose=&limit=&order=&after=]``,
  ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``;
* ``POST /v1/batches`` (``input_file_id``, ``endpoint``: ``/v1/chat/completions`` | ``/v1/completions`` |
  ``/v1/embeddings``, ``completion_window: "24h"``, ``metadata``), ``GET /v1/batches[?limit=&after=]``,
  ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

Creating a batch reads the whole input file (:func:`autoglm.batch.jsonl.parse_input`: a malformed line
becomes an error-file entry with its line number; a file that cannot be a batch is a 400), stores its
requests and queues them (a queue that cannot be reached is a 503 and the batch is ``failed``). The
app's :class:`~autoglm.batch.worker.BatchWorker` -- started and stopped with the app -- runs them at its
share of capacity through :func:`_Executor.__call__`: the same router, :meth:`GatewayHTTP.serve`
(model authorization, rate limits, usage, cache) and serving functions as an interactive request, under
the key that created the batch (a key revoked since then fails its remaining requests with 401).

Files and batches live in the gateway's state store (:mod:`autoglm.batch.records`); without a gateway
(``--no-gateway``) every batch route is a 404 that says so. The queue is ``server.batch.queue``
(:class:`~autoglm.batch.BatchSettings`):
Redis Streams when the gateway has a Redis URL, else a table in the state store.
Uploads are limited by ``server.max_request_bytes`` (4 MiB by default; a larger file is a 413).
Knows FastAPI, the OpenAI shapes and the gateway's request path; the queue and records are
:mod:`autoglm.batch`'s.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from autoglm.api.errors import APIError, error_body, to_api_error

__all__ = ["install_batch_routes"]

log = logging.getLogger("autoglm.batch")

_BATCH_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
_WINDOWS = {"24h": 24 * 3600.0}
_MAX_META, _MAX_META_KEY, _MAX_META_VALUE = 16, 64, 512


def _bad(message: str, param: str | None = None, code: str = "invalid_value", status: int = 400) -> APIError:
    return APIError(message, status, param=param, code=code)


def _key_id(request: Request) -> str:
    from autoglm.gateway.usage import OPEN_MODE_KEY_ID

    key = request.scope.get("state", {}).get("autoglm_key")
    return key.id if key is not None else OPEN_MODE_KEY_ID


def _multipart(request: Request, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a ``multipart/form-data`` body by field name: ``(filename, bytes)``."""
    from email import policy
    from email.parser import BytesParser

    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data") or "boundary=" not in ctype:
        raise _bad("POST /v1/files takes multipart/form-data with the fields 'file' and 'purpose' (the SDK's "
                   "client.files.create(file=open('in.jsonl', 'rb'), purpose='batch') sends it)", "file")
    msg = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw)
    parts: dict[str, tuple[str | None, bytes]] = {}
    if msg.is_multipart():
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str) and name not in parts:
                parts[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return parts


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _bad("metadata must be an object of string keys and string values", "metadata")
    if len(value) > _MAX_META:
        raise _bad(f"metadata has {len(value)} keys; at most {_MAX_META}", "metadata")
    for k, v in value.items():
        if len(k) > _MAX_META_KEY or len(v) > _MAX_META_VALUE:
            raise _bad(f"metadata keys are at most {_MAX_META_KEY} characters and values at most "
                       f"{_MAX_META_VALUE} (key {k[:40]!r})", "metadata")
    return dict(value)


def _limit(value: str | None, default: int, top: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= top:
        raise _bad(f"limit must be a whole number in 1..{top}, got {value[:20]!r}", "limit")
    return n


class _KeyGone(Exception):
    pass


class _Executor:
    """Runs one batch request the way the interactive route would: router -> gateway -> serving function."""

    def __init__(self, app: Any, owner: Any, server: Any, router: Any, store: Any):
        from autoglm.api.limits import RequestLimits
        from autoglm.api.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
        from autoglm.api.serving_chat import create_chat_completion
        from autoglm.api.serving_completions import create_completion

        self.app, self.owner, self.router, self.store = app, owner, router, store
        limits = RequestLimits.from_settings(server)
        self.specs = {
            "/v1/chat/completions": (ChatCompletionRequest, functools.partial(create_chat_completion, limits=limits),
                                     "chat", "/chat/completions"),
            "/v1/completions": (CompletionRequest, functools.partial(create_completion, limits=limits), "completion",
                                "/completions"),
            "/v1/embeddings": (EmbeddingRequest, None, "embeddings", "/embeddings"),
        }

    async def key_of(self, key_id: str) -> Any:
        from autoglm.gateway.facade import ADMIN_KEY_INFO
        from autoglm.gateway.http import STATIC_KEY_INFO
        from autoglm.gateway.keys import KeyNotFoundError, get_key
        from autoglm.gateway.usage import OPEN_MODE_KEY_ID

        if key_id == OPEN_MODE_KEY_ID:
            return None
        for fixed in (STATIC_KEY_INFO, ADMIN_KEY_INFO):
            if key_id == fixed.id:
                return fixed
        try:
            info = await asyncio.to_thread(get_key, self.store, key_id)
        except KeyNotFoundError:
            raise _KeyGone() from None
        if not info.is_active():
            raise _KeyGone()
        return info

    def _request(self, path: str, raw: bytes, key: Any) -> Request:
        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # no client to go away: is_disconnected() stays False
            return {"type": "http.disconnect"}

        scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
                 "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json")], "client": ("batch", 0),
                 "server": ("batch", 0), "state": {"autoglm_key": key}}
        request = Request(scope, receive)
        request._body = raw  # what request.body()/json() return (a remote upstream forwards it)
        return request

    async def __call__(self, rec: Any, custom_id: str, body_text: str) -> tuple[int, Any]:
        from pydantic import ValidationError
        from fastapi.exceptions import RequestValidationError

        from autoglm.api.errors import validation_message
        from autoglm.batch.worker import RetryLater
        from autoglm.gateway.facade import GatewayError
        from autoglm.gateway.upstream import UpstreamOverloaded

        model_cls, handler, kind, path = self.specs[rec.endpoint]
        try:
            key = await self.key_of(rec.key_id)
        except _KeyGone:
            return 401, error_body(APIError("the API key that created this batch was revoked or has expired", 401,
                                            code="invalid_api_key"))
        raw = json.loads(body_text)
        try:
            body = model_cls.model_validate(raw)
        except ValidationError as exc:
            message, param = validation_message(RequestValidationError(exc.errors(include_url=False)))
            return 400, error_body(APIError(message, 400, param=param))
        request = self._request(rec.endpoint, body_text.encode(), key)
        try:
            response = await self._dispatch(request, body, raw, handler, kind, path)
        except UpstreamOverloaded as exc:
            raise RetryLater(_retry_after(exc.reply.headers), 429, exc.reply.body) from None
        except GatewayError as exc:
            if exc.status in (429, 503):
                raise RetryLater(_retry_after(exc.headers), exc.status, exc.to_dict()) from None
            return exc.status, exc.to_dict()
        except Exception as exc:  # noqa: BLE001 - what the interactive route would have answered
            err = to_api_error(exc)
            if err.status in (429, 503):
                raise RetryLater(_retry_after(err.headers or {}), err.status, error_body(err)) from None
            if err.status >= 500:
                log.error("batch %s request %r failed", rec.id, custom_id[:80], exc_info=exc)
            return err.status, error_body(err)
        status = int(response.status_code)
        try:
            out = json.loads(bytes(response.body))
        except (AttributeError, ValueError):
            out = None
        if status in (429, 503):
            raise RetryLater(_retry_after(response.headers), status, out)
        return status, out

    async def _dispatch(self, request: Request, body: Any, raw: Any, handler: Any, kind: str, path: str) -> Response:
        from autoglm.api.serving_embeddings import create_embeddings
        from autoglm.gateway.upstream import proxy
        from autoglm.recommend.http import resolve_auto

        gw = self.owner
        if kind == "embeddings":
            model = getattr(self.app.state, "embedding", None)
            if model is None:
                raise APIError("This server serves no embedding model.", 404, code="model_not_found", param="model")
            if body.model not in (None, model.name, model.spec):
                raise APIError(f"The model {body.model!r} does not serve embeddings on this server; use "
                               f"{model.name!r}.", 404, code="model_not_found", param="model")
            return await gw.serve(request, body, model, model.name, create_embeddings, "embeddings")

        async def local(engine: Any, route: Any) -> Response:
            return await gw.serve(request, body, engine, route.name, handler, kind)

        async def remote(upstream: Any, route: Any) -> Response:
            async def forward(up: Any, _body: Any, _raw: Any, hooks: Any) -> Response:
                return await proxy(up, path, raw, route.name, hooks)

            return await gw.serve(request, body, upstream, route.name, forward, kind)

        decision = await resolve_auto(self.router, request, body, gw.metrics)
        dispatched = await self.router.dispatch(decision.model if decision else body.model, local=local, remote=remote)
        dispatched.release()  # not a stream: the answer is complete
        return dispatched.result


def _retry_after(headers: Any) -> float:
    try:
        value = float({k.lower(): v for k, v in dict(headers).items()}.get("retry-after", 1))
    except (TypeError, ValueError):
        value = 1.0
    return value if math.isfinite(value) and value > 0 else 1.0


def _waiting(router: Any) -> Any:
    def waiting() -> int:
        total = 0
        for route in router.routes:
            for backend in route.backends:
                if backend.engine is not None:
                    total += int(getattr(backend.engine.stats(), "num_waiting", 0))
        return total

    return waiting


def _install_unavailable(app: Any) -> None:
    """Without a gateway there is no state store to keep files and batches in: say so on every route."""
    async def unavailable(request: Request) -> None:
        raise APIError("the Batch API keeps files and batches in the gateway's state store, and this server runs "
                       "without a gateway (--no-gateway); start it with the gateway", 404, code="batch_unavailable")

    for path, methods in (("/v1/files", ["GET", "POST"]), ("/v1/files/{file_id:path}", ["GET", "DELETE"]),
                          ("/v1/batches", ["GET", "POST"]), ("/v1/batches/{batch_id:path}", ["GET", "POST"])):
        app.add_api_route(path, unavailable, methods=methods, include_in_schema=False)


def install_batch_routes(app: Any, owner: Any, server: Any, router: Any) -> None:
    """Mount ``/v1/files`` and ``/v1/batches`` on ``app`` and run the batch worker in its lifespan."""
    from autoglm.batch import BatchSettings, BatchStore, BatchWorker, open_queue
    from autoglm.batch._base import QueueUnavailable
    from autoglm.batch.jsonl import ENDPOINTS, InputFileError, parse_input
    from autoglm.batch.records import FINAL, BatchRecord, FileRecord, new_id
    from autoglm.gateway.store import StoreUnavailable

    settings = getattr(server, "batch", None) or BatchSettings()
    if not settings.enabled:
        return
    gw = owner.gateway
    if gw is None:
        _install_unavailable(app)
        return
    store = gw.store
    records = BatchStore(store)
    redis_url = gw.settings.redis_url
    queue = open_queue(settings.queue_url(redis_url), name=settings.queue_name, lease_s=settings.lease_seconds,
                       store=store)
    worker = BatchWorker(records, queue, _Executor(app, owner, server, router, store), settings,
                         waiting=_waiting(router))
    app.state.batch = worker
    app.state.on_drain = [*(getattr(app.state, "on_drain", None) or []), worker.pause]  # SIGTERM: take no more
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            await worker.start()
            try:
                yield state
            finally:
                await worker.stop()  # before the engines stop: running requests are handed back

    app.router.lifespan_context = lifespan

    async def db(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StoreUnavailable:
            raise APIError("the state store that keeps files and batches is unreachable; retry shortly", 503,
                           code="state_store_unavailable", headers={"retry-after": "2"}) from None

    async def own_file(file_id: str, request: Request) -> FileRecord:
        rec = await db(records.get_file, file_id, _key_id(request))
        if rec is None:
            raise APIError(f"No such File object: {file_id[:80]}", 404, param="file_id", code="file_not_found")
        return rec

    async def own_batch(batch_id: str, request: Request) -> BatchRecord:
        rec = await db(records.get_batch, batch_id, _key_id(request))
        if rec is None:
            raise APIError(f"No such Batch object: {batch_id[:80]}", 404, param="batch_id", code="batch_not_found")
        return rec

    # -- files -----------------------------------------------------------------------------------
    @app.post("/v1/files")
    async def create_file(request: Request) -> JSONResponse:
        parts = _multipart(request, await request.body())
        purpose = parts.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
        if purpose != "batch":
            raise _bad(f"purpose must be 'batch' on this server (got {purpose[:40]!r}); files serve the Batch API",
                       "purpose")
        if "file" not in parts:
            raise _bad("the multipart body has no 'file' field", "file")
        filename, data = parts["file"]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad(f"the file is not UTF-8 text (byte {exc.start}); a batch file is JSONL", "file") from None
        if "\x00" in text:
            raise _bad("the file holds a NUL character; a batch file is JSONL text", "file")
        rec = FileRecord(new_id("file-"), _key_id(request), "batch", (filename or "upload.jsonl")[:255], len(data),
                         time.time())
        await db(records.add_file, rec, text)
        return JSONResponse(rec.to_openai())

    @app.get("/v1/files")
    async def list_files(request: Request, purpose: str | None = None, limit: str | None = None,
                         order: str = "desc", after: str | None = None) -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise _bad(f"order must be 'asc' or 'desc', got {order[:20]!r}", "order")
        rows, more = await db(records.list_files, _key_id(request), purpose=purpose,
                              limit=_limit(limit, 10_000, 10_000), after=after, order=order)
        data = [r.to_openai() for r in rows]
        return {"object": "list", "data": data, "has_more": more,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> dict[str, Any]:
        return (await own_file(file_id, request)).to_openai()

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request) -> Response:
        rec = await own_file(file_id, request)
        text = await db(records.file_content, rec)
        return Response(text.encode("utf-8"), media_type="application/octet-stream",
                        headers={"content-disposition": f'attachment; filename="{rec.filename}"'})

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
        rec = await own_file(file_id, request)
        await db(records.delete_file, rec.id)
        return {"id": rec.id, "object": "file", "deleted": True}

    # -- batches ---------------------------------------------------------------------------------
    @app.post("/v1/batches")
    async def create_batch(request: Request) -> JSONResponse:
        try:
            spec = json.loads(await request.body() or b"null")
        except ValueError:
            raise _bad("the body is not JSON; send {\"input_file_id\": \"file-...\", \"endpoint\": "
                       "\"/v1/chat/completions\", \"completion_window\": \"24h\"}", "body") from None
        if not isinstance(spec, dict):
            raise _bad("the body must be a JSON object with input_file_id, endpoint and completion_window", "body")
        unknown = sorted(set(spec) - _BATCH_FIELDS)
        if unknown:
            raise _bad(f"unknown field(s) {unknown}; allowed: {', '.join(sorted(_BATCH_FIELDS))}", unknown[0])
        endpoint = spec.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise _bad(f"endpoint {str(endpoint)[:80]!r} is not supported; use one of {', '.join(ENDPOINTS)}",
                       "endpoint", "unsupported_endpoint")
        window = spec.get("completion_window")
        if window not in _WINDOWS:
            raise _bad(f"completion_window must be '24h', got {str(window)[:20]!r}", "completion_window")
        metadata = _metadata(spec.get("metadata"))
        if endpoint == "/v1/embeddings" and getattr(app.state, "embedding", None) is None:
            raise _bad("this server serves no embedding model, so /v1/embeddings cannot be batched; start it with "
                       "an embedding model (embedding_model: minilm)", "endpoint", "unsupported_endpoint")
        file_id = spec.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise _bad("input_file_id must be the id of a file uploaded with purpose 'batch'", "input_file_id")
        frec = await own_file(file_id, request)
        if frec.kind != "upload":
            raise _bad(f"{file_id} is a batch's output file; give a file uploaded with purpose 'batch'",
                       "input_file_id")
        content = await db(records.file_content, frec)
        try:
            parsed = parse_input(content, endpoint, max_requests=settings.max_requests)
        except InputFileError as exc:
            raise _bad(f"{file_id}: {exc}", "input_file_id", "invalid_file") from None
        now = time.time()
        rec = BatchRecord(id=new_id("batch_"), key_id=_key_id(request), input_file_id=file_id, endpoint=endpoint,
                          completion_window=window, status="validating", created_at=now,
                          expires_at=now + _WINDOWS[window], total=parsed.total, output_file_id=new_id("file-"),
                          error_file_id=new_id("file-"), metadata=metadata, model=parsed.model)
        await db(records.create_batch, rec, parsed.requests, parsed.line_errors)
        try:
            await worker.enqueue(rec.id, [line for line, _, _ in parsed.requests])
        except QueueUnavailable as exc:
            log.error("batch %s could not be queued: %s", rec.id, exc)
            errors = [{"code": "queue_unavailable", "message": "the batch queue was unreachable", "param": None,
                       "line": None}]
            await db(records.set_status, rec.id, "failed", only_from=("validating",), errors=errors)
            raise APIError("the batch queue is unreachable right now; the batch was not started (status failed). "
                           "Retry shortly.", 503, code="queue_unavailable", headers={"retry-after": "5"}) from None
        log.info("batch %s: %d request(s) queued (%d malformed line(s)) for %s", rec.id, len(parsed.requests),
                 len(parsed.line_errors), endpoint)
        return JSONResponse((await own_batch(rec.id, request)).to_openai())

    @app.get("/v1/batches")
    async def list_batches(request: Request, limit: str | None = None, after: str | None = None) -> dict[str, Any]:
        rows, more = await db(records.list_batches, _key_id(request), limit=_limit(limit, 20, 100), after=after)
        data = [r.to_openai() for r in rows]
        return {"object": "list", "data": data, "has_more": more,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str, request: Request) -> dict[str, Any]:
        return (await own_batch(batch_id, request)).to_openai()

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, request: Request) -> dict[str, Any]:
        rec = await own_batch(batch_id, request)
        if rec.status in FINAL:
            raise _bad(f"batch {batch_id} is already {rec.status}; only a validating or in-progress batch can be "
                       "cancelled", "batch_id", "batch_not_cancellable", 409)
        await worker.cancel(rec.id)
        return (await own_batch(batch_id, request)).to_openai()

