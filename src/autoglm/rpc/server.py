"""gRPC beside the HTTP API: ``autoglm.v1.Generation`` (streaming generate) and the Open Inference Protocol.

:class:`GrpcServer` runs a ``grpc.aio`` server in the serving process, next to uvicorn. Its services
do not reimplement serving: each call becomes one in-process request to the same ASGI app the HTTP
listener runs (:func:`autoglm.rpc.asgi_call.call`), so keys (``authorization`` / ``x-api-key``
metadata), per-key rate limits, usage, ``/metrics`` counters, the access log, model ``auto`` and the
shutdown drain are the HTTP API's own. What this module knows is the translation:

- ``Generation.Generate``: a :class:`GenerateRequest` -> ``POST /v1/completions`` (``prompt``) or
  ``POST /v1/chat/completions`` (``chat``) with ``stream: true``; each SSE chunk -> one
  :class:`GenerateResponse` text delta per choice; the usage chunk -> a message with ``usage``.
- ``Generation.ListModels`` -> ``GET /v1/models`` (what this key may see).
- ``inference.GRPCInferenceService`` (KServe V2): ``ServerLive``/``ServerReady``/``ModelReady`` from the
  router's health (no key needed: these are probes), ``ServerMetadata``, ``ModelMetadata`` ->
  ``GET /v1/models/{name}``, ``ModelInfer`` with a BYTES ``text_input`` tensor (one element per prompt)
  and sampling parameters as request parameters -> ``POST /v1/completions``; the reply has a BYTES
  ``text_output`` tensor and ``finish_reason`` / token counts as parameters.

An HTTP error becomes the gRPC status that means the same (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED,
403 PERMISSION_DENIED, 404 NOT_FOUND, 413 INVALID_ARGUMENT, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE,
other 5xx INTERNAL) with the OpenAI error message as its details. ``grpcio`` is the ``grpc`` extra;
it is imported when a :class:`GrpcServer` is built.
"""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from autoglm import __version__
from autoglm.errors import ConfigError
from autoglm.rpc.asgi_call import AsgiReply, call

__all__ = ["GrpcServer", "status_for_http", "generate_body", "SAMPLING_FIELDS"]

log = logging.getLogger("autoglm.rpc")

# SamplingParams fields, all named as in the HTTP request bodies
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                   "top_k", "min_p", "repetition_penalty", "ignore_eos", "stop_token_ids")
_REPEATED = {"stop", "stop_token_ids"}
_FORWARDED = ("authorization", "x-api-key", "x-request-id", "cache-control")
_INFER_PARAMS = {"max_tokens": int, "temperature": float, "top_p": float, "seed": int, "top_k": int,
                 "min_p": float, "presence_penalty": float, "frequency_penalty": float,
                 "repetition_penalty": float, "ignore_eos": bool, "stop": str}


def _grpc() -> Any:
    try:
        import grpc
    except ImportError:
        raise ConfigError('gRPC needs grpcio: pip install -c constraints.txt -e ".[grpc]"') from None
    return grpc


def status_for_http(status: int) -> str:
    """The name of the gRPC status code that means what HTTP ``status`` means."""
    return {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
            409: "FAILED_PRECONDITION", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
            503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")


def generate_body(request: Any) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of the HTTP request a :class:`GenerateRequest` stands for."""
    body: dict[str, Any] = {"stream": True}
    if request.model:
        body["model"] = request.model
    if request.include_usage:
        body["stream_options"] = {"include_usage": True}
    params = request.params
    for name in SAMPLING_FIELDS:
        if name in _REPEATED:
            values = list(getattr(params, name))
            if values:
                body[name] = values
        elif params.HasField(name):
            body[name] = getattr(params, name)
    which = request.WhichOneof("input")
    if which == "chat":
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.chat.messages]
        return "/v1/chat/completions", body
    if which == "prompt":
        body["prompt"] = request.prompt
        return "/v1/completions", body
    return "", body


def _headers(context: Any) -> dict[str, str]:
    headers = {"user-agent": "autoglm-grpc"}
    for key, value in context.invocation_metadata() or ():
        if key.lower() in _FORWARDED and isinstance(value, str):
            headers[key.lower()] = value
    return headers


def _peer(context: Any) -> tuple[str, int]:
    """The caller's address, so loopback-only routes judge a gRPC caller as they judge an HTTP one."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        host = host.strip("[]").replace("%5B", "").replace("%5D", "")
        try:
            return host, int(port)
        except ValueError:
            return host, 0
    return "127.0.0.1", 0  # unix sockets and in-process channels are local


def _message(status: int, raw: Any) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("error"), dict):
        return str(raw["error"].get("message") or f"HTTP {status}")
    return f"HTTP {status}"


async def _abort(context: Any, reply: AsgiReply) -> None:
    grpc = _grpc()
    payload = await reply.json()
    await context.abort(getattr(grpc.StatusCode, status_for_http(reply.status)), _message(reply.status, payload))


async def _sse_events(reply: AsgiReply) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of an SSE body; stops at ``[DONE]``."""
    buffer = b""
    async for chunk in reply.chunks():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                try:
                    yield json.loads(data)
                except ValueError:
                    log.warning("gRPC bridge: an SSE event that is not JSON was skipped")


class _Generation:
    """``autoglm.v1.Generation`` over the app."""

    def __init__(self, app: Any, pb: Any):
        self.app, self.pb = app, pb

    async def Generate(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802 - gRPC's names
        grpc, pb = _grpc(), self.pb
        path, body = generate_body(request)
        if not path:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set either prompt or chat")
        reply = await call(self.app, "POST", path, body, headers=_headers(context), client=_peer(context))
        try:
            if reply.status != 200:
                await _abort(context, reply)
            async for event in _sse_events(reply):
                if "error" in event and "choices" not in event:  # a failure after the stream began
                    err = event["error"] if isinstance(event["error"], dict) else {}
                    code = "INVALID_ARGUMENT" if err.get("type") == "invalid_request_error" else "INTERNAL"
                    await context.abort(getattr(grpc.StatusCode, code), str(err.get("message") or "generation failed"))
                rid, model = str(event.get("id", "")), str(event.get("model", ""))
                for choice in event.get("choices") or ():
                    delta = choice.get("delta")
                    text = (delta or {}).get("content") if delta is not None else choice.get("text")
                    reason = choice.get("finish_reason") or ""
                    if text or reason:
                        yield pb.GenerateResponse(id=rid, model=model, index=int(choice.get("index", 0)),
                                                  text=text or "", finish_reason=reason)
                usage = event.get("usage")
                if usage and not event.get("choices"):
                    yield pb.GenerateResponse(id=rid, model=model, usage=pb.Usage(
                        prompt_tokens=int(usage.get("prompt_tokens", 0)),
                        completion_tokens=int(usage.get("completion_tokens", 0)),
                        total_tokens=int(usage.get("total_tokens", 0))))
        finally:
            await reply.aclose()  # cancelled by the client: the app sees the disconnect and aborts

    async def ListModels(self, request: Any, context: Any) -> Any:  # noqa: N802
        reply = await call(self.app, "GET", "/v1/models", headers=_headers(context), client=_peer(context))
        if reply.status != 200:
            await _abort(context, reply)
        data = (await reply.json() or {}).get("data", [])
        return self.pb.ListModelsResponse(models=[
            self.pb.ModelInfo(id=m.get("id", ""), root=str(m.get("root") or ""), max_model_len=int(m.get("max_model_len") or 0),
                              description=str(m.get("description") or "")) for m in data])


def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


class _Inference:
    """``inference.GRPCInferenceService`` (KServe V2) over the app and its router."""

    INPUT, OUTPUT = "text_input", "text_output"

    def __init__(self, app: Any, router: Any, pb: Any):
        self.app, self.router, self.pb = app, router, pb

    def _ready(self, name: str | None = None) -> bool:
        models = self.router.health().get("models", {}) if self.router is not None else {}
        if name is None:
            return any(m.get("status") == "ok" for m in models.values())
        try:
            route = self.router.resolve(name)
        except Exception:  # noqa: BLE001 - an unknown model is not ready
            return False
        return models.get(route.name, {}).get("status") == "ok"

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self.pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self.pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self.pb.ModelReadyResponse(ready=self._ready(request.name))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self.pb.ServerMetadataResponse(name="autoglm", version=__version__,
                                              extensions=["autoglm.v1.Generation"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        reply = await call(self.app, "GET", f"/v1/models/{request.name}", headers=_headers(context),
                           client=_peer(context))
        if reply.status != 200:
            await _abort(context, reply)
        card = await reply.json() or {}
        tensor = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(
            name=card.get("id", request.name), versions=[], platform="autoglm",
            inputs=[tensor(name=self.INPUT, datatype="BYTES", shape=[-1])],
            outputs=[tensor(name=self.OUTPUT, datatype="BYTES", shape=[-1])])

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        grpc, pb = _grpc(), self.pb
        prompts: list[str] | None = None
        for i, tensor in enumerate(request.inputs):
            if tensor.name != self.INPUT:
                continue
            raw = (list(tensor.contents.bytes_contents) if tensor.contents.bytes_contents
                   else ([request.raw_input_contents[i]] if i < len(request.raw_input_contents) else []))
            try:
                prompts = [b.decode("utf-8") for b in raw]
            except UnicodeDecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {self.INPUT!r} is not UTF-8 text")
        if not prompts:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"ModelInfer needs a BYTES input tensor named {self.INPUT!r} with at least one prompt")
        body: dict[str, Any] = {"model": request.model_name, "prompt": prompts if len(prompts) > 1 else prompts[0]}
        for name, param in request.parameters.items():
            kind = _INFER_PARAMS.get(name)
            if kind is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown parameter {name!r}; known: "
                                    + ", ".join(sorted(_INFER_PARAMS)))
            value = _param_value(param)
            body[name] = [value] if name == "stop" else kind(value)
        reply = await call(self.app, "POST", "/v1/completions", body, headers=_headers(context), client=_peer(context))
        if reply.status != 200:
            await _abort(context, reply)
        result = await reply.json() or {}
        choices = sorted(result.get("choices", []), key=lambda c: c.get("index", 0))
        usage = result.get("usage") or {}
        out = pb.ModelInferResponse.InferOutputTensor(
            name=self.OUTPUT, datatype="BYTES", shape=[len(choices)],
            contents=pb.InferTensorContents(bytes_contents=[c.get("text", "").encode() for c in choices]))
        params = {"id": pb.InferParameter(string_param=str(result.get("id", ""))),
                  "finish_reason": pb.InferParameter(string_param=",".join(c.get("finish_reason") or "" for c in choices)),
                  "prompt_tokens": pb.InferParameter(int64_param=int(usage.get("prompt_tokens", 0))),
                  "completion_tokens": pb.InferParameter(int64_param=int(usage.get("completion_tokens", 0)))}
        return pb.ModelInferResponse(model_name=str(result.get("model", request.model_name)), id=request.id,
                                     outputs=[out], parameters=params)


class GrpcServer:
    """The gRPC listener of one serving process: ``await start()``, ``await stop(grace)``.

    ``app``: the ASGI app the HTTP listener runs (the shutdown gate, so a drain covers gRPC too);
    ``router``: for the readiness probes. ``port`` 0 binds a free port; :attr:`port` is the bound one.
    """

    def __init__(self, app: Any, router: Any, *, host: str = "127.0.0.1", port: int = 50051,
                 max_message_bytes: int = 8 * 1024 * 1024):
        grpc = _grpc()
        from autoglm.rpc.protos import generate_pb2, generate_pb2_grpc, grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

        self.host = host
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self._server = grpc.aio.server(options=options)
        generate_pb2_grpc.add_GenerationServicer_to_server(_Generation(app, generate_pb2), self._server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            _Inference(app, router, grpc_predict_v2_pb2), self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address} ({exc}); pass a free --grpc-port") from None
        if not self.port:
            raise ConfigError(f"cannot listen for gRPC on {address}; pass a free --grpc-port")

    @property
    def target(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{shown}:{self.port}"

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = 5.0) -> None:
        await self._server.stop(grace)


def metadata(api_key: str | None, extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Call metadata carrying ``api_key`` the way the HTTP API takes it."""
    md = [("authorization", f"Bearer {api_key}")] if api_key else []
    return md + [(k.lower(), v) for k, v in (extra or {}).items()]
