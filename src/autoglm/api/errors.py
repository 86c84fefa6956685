"""OpenAI error objects and the exception handlers that produce them.

Every failure the HTTP layer returns has OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: validation errors (with the field path as
``param``), unknown routes and methods, :class:`~autoglm.errors.AutoGLMError` s raised by the engine
(400 for bad parameters, 429 + ``Retry-After`` when overloaded, 404 for an unknown model), and
unexpected exceptions (500, logged here with the traceback, never sent to the client).
This module knows nothing about engines or request conversion.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autoglm.errors import AutoGLMError, InvalidRequestError, ModelNotFoundError, OverloadedError

__all__ = ["APIError", "error_body", "error_response", "install_error_handlers", "to_api_error"]

log = logging.getLogger("autoglm.api")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
}

# Parts of a pydantic error location that name a union member, not a field.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal", "function-after"}


class APIError(Exception):
    """An error the client should see, already in OpenAI terms."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type or _STATUS_TYPES.get(status, "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers


def error_body(err: APIError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception to what the client sees; unknown ones become an opaque 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, OverloadedError):
        retry = max(1, math.ceil(exc.retry_after))
        return APIError(str(exc), 429, code="overloaded", headers={"Retry-After": str(retry)})
    if isinstance(exc, InvalidRequestError):
        return APIError(str(exc), 400, param=exc.param)
    if isinstance(exc, ModelNotFoundError):
        return APIError(str(exc), 404, code="model_not_found", param="model")
    if isinstance(exc, AutoGLMError):
        return APIError(str(exc), 400)
    return APIError("The server had an internal error while processing the request.", 500,
                    code="internal_error")


def _param_path(loc: tuple[Any, ...]) -> str | None:
    parts: list[str] = []
    for item in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and (item in _TYPE_TAGS or "[" in item or "(" in item
                                        or item.startswith("literal")):
            continue  # a union member tag such as 'list[str]', not a field name
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return (f"The request body is not valid JSON ({ctx.get('error', 'parse error')}). "
                "Send a JSON object with Content-Type: application/json.", None)
    if first.get("type") == "lone_surrogate":
        param = (first.get("ctx") or {}).get("param")
        return f"Invalid value for '{param}': {first.get('msg')}.", param
    param = _param_path(tuple(first.get("loc", ())))
    if param is None and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return "The request body must be a JSON object (sent with Content-Type: application/json).", None
    value = first.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    msg = f"Invalid value for '{param}': {first.get('msg', 'invalid')} (got {shown})."
    if len(errors) > 1:
        msg += f" ({len(errors) - 1} more error(s) in this request.)"
    return msg, param


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts on this path (Starlette's own 405 names only the first route's)."""
    from starlette.routing import Match

    methods: set[str] = set()
    scope = {**request.scope, "method": "__none__"}
    for route in request.app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")  # served by HeadMiddleware
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so every failure leaves the server as an OpenAI error object."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(APIError(message, 400, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            msg = f"Unknown route {request.method} {request.url.path}. See GET /v1/models and the API docs."
            code = "not_found"
        elif exc.status_code == 405:
            allowed = allowed_methods(request)
            msg = (f"Method {request.method} is not allowed on {request.url.path}; "
                   f"allowed: {', '.join(allowed) or 'none'}.")
            code = "method_not_allowed"
            return error_response(APIError(msg, 405, code=code, headers={"Allow": ", ".join(allowed)}))
        else:
            msg, code = str(exc.detail), None
        err = APIError(msg, exc.status_code, code=code, headers=getattr(exc, "headers", None))
        return error_response(err)

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(AutoGLMError)
    async def _autoglm(_: Request, exc: AutoGLMError) -> JSONResponse:
        return error_response(to_api_error(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(to_api_error(exc))


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
_DOCUMENTED = {
    "400": "Invalid request (an OpenAI error object; `param` names the field)",
    "401": "Missing or invalid API key",
    "404": "Unknown model or route",
    "429": "Overloaded or rate limited (see Retry-After)",
}


def install_openapi(app: FastAPI) -> None:
    """Make ``/openapi.json`` promise what the server answers: 400 (not FastAPI's 422) with OpenAI's
    error object, plus 401, 404 and 429 on every operation."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        from typing import ForwardRef

        # a route whose return annotation never resolved (a name imported only for type checking)
        # would make the whole document fail: leave that route out and say so
        routes = [r for r in app.routes if not isinstance(getattr(r, "response_model", None), ForwardRef)]
        for r in app.routes:
            if r not in routes:
                log.warning("OpenAPI: %s left out: its return annotation %s is not resolvable",
                            getattr(r, "path", r), getattr(r, "response_model", None))
        doc = get_openapi(title=app.title, version=app.version, routes=routes)
        content = {"application/json": {"schema": _ERROR_SCHEMA}}
        for path_item in doc.get("paths", {}).values():
            for op in path_item.values():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                op["responses"].pop("422", None)
                for status, text in _DOCUMENTED.items():
                    op["responses"].setdefault(status, {"description": text, "content": content})
        schemas = doc.get("components", {}).get("schemas", {})
        if not any("HTTPValidationError" in str(op) for item in doc.get("paths", {}).values() for op in item.values()):
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
