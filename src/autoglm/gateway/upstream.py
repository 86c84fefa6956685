"""A remote OpenAI-compatible server as a backend: forward the request JSON, hand back the reply.

:class:`Upstream` is one base URL (``http://host:8000/v1``; ``/v1`` is added when the URL has no path)
with an optional API key of its own. :meth:`Upstream.forward` rewrites the request's ``model`` to the
upstream's name, adds ``Authorization: Bearer <upstream key>`` and POSTs it with one shared
:class:`httpx.AsyncClient`. What comes back is an :class:`UpstreamReply`: a JSON body, or for a
stream the raw SSE bytes as they arrive (nothing is buffered). Outcomes the router acts on are
exceptions: :class:`UpstreamConnectionError` (could not connect, or 502/503/504: retry elsewhere),
:class:`UpstreamOverloaded` (429: try the fallback). Any other 4xx/5xx is a reply passed through as an
OpenAI error object. The upstream key is never logged and never shown in a repr.

:func:`proxy` turns a reply into a Starlette response for the app (``model`` renamed to the served name,
SSE relayed line by line as it arrives, usage reported to the gateway's request hooks).
Knows HTTP and the OpenAI shapes; nothing about engines or which replica to pick.
"""
from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "Upstream",
    "UpstreamReply",
    "UpstreamError",
    "UpstreamConnectionError",
    "UpstreamOverloaded",
    "normalize_base_url",
    "error_object",
    "proxy",
]

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = (502, 503, 504)
_PASS_HEADERS = ("retry-after", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                 "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")


def normalize_base_url(url: str) -> str:
    """``http://h:8000`` -> ``http://h:8000/v1``; a URL with a path keeps it (without a trailing ``/``)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        from autoglm.errors import ConfigError

        raise ConfigError(f"upstream URL {url!r} is not an http(s) URL; write e.g. http://10.0.0.5:8000/v1")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def error_object(message: str, type: str = "api_error", code: str | None = None,  # noqa: A002
                 param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class UpstreamError(Exception):
    """Base of the outcomes the router reacts to."""


class UpstreamConnectionError(UpstreamError):
    """The upstream could not be reached or said it is unavailable (502/503/504)."""


@dataclass
class UpstreamReply:
    """What the upstream answered. Exactly one of ``body`` (parsed JSON) and ``chunks`` is set."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    chunks: AsyncIterator[bytes] | None = None
    media_type: str = "application/json"

    async def aclose(self) -> None:
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class UpstreamOverloaded(UpstreamError):
    """The upstream answered 429; ``reply`` is passed to the client when there is no fallback."""

    def __init__(self, reply: UpstreamReply):
        super().__init__("upstream is overloaded (429)")
        self.reply = reply


class Upstream:
    """One remote base URL. ``model``: the upstream's name for the model (``None``: leave it as sent)."""

    def __init__(self, url: str, *, api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0, connect_timeout: float = 5.0, client: Any = None):
        import httpx

        self.base_url = normalize_base_url(url)
        self.model = model
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._health_timeout = httpx.Timeout(min(timeout, 5.0), connect=connect_timeout)
        self._client = client or httpx.AsyncClient(limits=httpx.Limits(max_connections=None,
                                                                       max_keepalive_connections=64))
        self._owns_client = client is None

    def __repr__(self) -> str:  # never the key
        return f"Upstream({self.base_url!r}, model={self.model!r}, api_key={'set' if self._api_key else None})"

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if extra:
            headers.update(extra)
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        return headers

    async def forward(self, path: str, payload: Mapping[str, Any],
                      headers: Mapping[str, str] | None = None) -> UpstreamReply:
        """POST ``payload`` to ``base_url + path`` (``/chat/completions``...). See the module docstring."""
        import httpx

        body = dict(payload)
        if self.model is not None:
            body["model"] = self.model
        stream = bool(body.get("stream"))
        request = self._client.build_request("POST", self.base_url + path, json=body,
                                             headers=self._headers(headers), timeout=self._timeout)
        try:
            response = await self._client.send(request, stream=True)
        except (httpx.TransportError, OSError) as exc:  # connect, timeout, protocol, DNS
            raise UpstreamConnectionError(f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200 or not stream:
            try:
                raw = await response.aread()
            except (httpx.TransportError, OSError) as exc:
                raise UpstreamConnectionError(f"{self.base_url}: {type(exc).__name__} while reading") from None
            finally:
                await response.aclose()
            return self._reply(response, raw)
        return UpstreamReply(status=200, headers=_pass_headers(response.headers),
                             chunks=_relay(response, self.base_url), media_type="text/event-stream")

    def _reply(self, response: Any, raw: bytes) -> UpstreamReply:
        status = response.status_code
        if status in _RETRYABLE_STATUS:
            raise UpstreamConnectionError(f"{self.base_url}: answered {status}")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if status >= 400 and not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
            # Not an OpenAI error object (e.g. a proxy's HTML page): wrap it in one.
            text = raw[:200].decode("utf-8", "replace").strip() or response.reason_phrase
            body = error_object(f"the upstream model server answered {status}: {text}",
                                "invalid_request_error" if status < 500 else "api_error", code="upstream_error")
        elif status < 400 and body is None:
            status, body = 502, error_object("the upstream model server sent a reply that is not JSON",
                                             code="bad_upstream_response")
        reply = UpstreamReply(status=status, headers=_pass_headers(response.headers), body=body)
        if status == 429:
            raise UpstreamOverloaded(reply)
        return reply

    async def check(self) -> bool:
        """True when ``GET {base_url}/models`` answers 200 (works on any OpenAI-compatible server)."""
        import httpx

        try:
            response = await self._client.get(self.base_url + "/models", headers=self._headers(),
                                              timeout=self._health_timeout)
        except (httpx.HTTPError, OSError):
            return False
        return response.status_code == 200

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _pass_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: headers[k] for k in _PASS_HEADERS if k in headers}


async def _relay(response: Any, base_url: str) -> AsyncIterator[bytes]:
    """The upstream's SSE bytes as they arrive; a broken upstream ends the stream with an error event."""
    import httpx

    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except (httpx.TransportError, OSError) as exc:
        log.warning("stream from upstream %s broke: %s", base_url, type(exc).__name__)
        err = error_object("the upstream model server closed the stream early", code="upstream_disconnected")
        yield b"\n\ndata: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n"
    finally:
        await response.aclose()


# -- as the HTTP layer needs it ---------------------------------------------------------------------
async def proxy(upstream: Upstream, path: str, payload: Mapping[str, Any], served_name: str,
                hooks: Any = None) -> Any:
    """Forward ``payload`` and return a Starlette response (JSON, or SSE passed through event by event).

    ``model`` in what comes back is rewritten to ``served_name`` (the name the client used). ``hooks``
    (:class:`~autoglm.api.streams.RequestHooks`) are told the usage the upstream reported; the
    router's exceptions (:class:`UpstreamConnectionError`, :class:`UpstreamOverloaded`) propagate.
    """
    from starlette.responses import JSONResponse, StreamingResponse

    if hooks is not None:
        prompt_chars = len(json.dumps(payload.get("messages") or payload.get("prompt") or ""))
        await hooks.admit(prompt_chars // 4, int(payload.get("max_tokens") or payload.get("max_completion_tokens")
                                                 or 16) * int(payload.get("n") or 1))
    try:
        reply = await upstream.forward(path, payload)
    except BaseException as exc:
        if hooks is not None:
            await hooks.finish(None, None, exc)
        raise
    if reply.chunks is None:
        body = reply.body
        if isinstance(body, dict) and "model" in body:
            body["model"] = served_name
        if hooks is not None:
            ok = reply.status == 200 and isinstance(body, dict)
            await hooks.finish(body.get("usage") if ok else {}, body if ok else None)
        return JSONResponse(body, status_code=reply.status, headers=reply.headers)
    return StreamingResponse(_rewrite_events(reply, served_name, hooks), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no", **reply.headers})


async def _rewrite_events(reply: UpstreamReply, served_name: str, hooks: Any) -> AsyncIterator[bytes]:
    """Each SSE line as soon as it is complete, with ``model`` renamed; the last usage goes to ``hooks``."""
    pending = b""
    usage: dict[str, Any] | None = None
    error: BaseException | None = None
    try:
        async for chunk in reply.chunks:  # type: ignore[union-attr]
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = []
            for line in lines:
                if line.startswith(b"data: {"):
                    try:
                        event = json.loads(line[6:])
                    except ValueError:
                        event = None
                    if isinstance(event, dict):
                        if "model" in event:
                            event["model"] = served_name
                        if event.get("usage"):
                            usage = event["usage"]
                        line = b"data: " + json.dumps(event, separators=(",", ":")).encode()
                out.append(line)
            if out:
                yield b"\n".join(out) + b"\n"
        if pending:
            yield pending
    except BaseException as exc:
        error = exc
        raise
    finally:
        await reply.aclose()
        if hooks is not None:
            await hooks.finish(usage or {}, None, error)
