"""The one place where errors become HTTP answers: ``ErrorBody``, ``{"error": {"code", "message"}}``.

``responses(...)`` documents the same answers in the OpenAPI document, so every
status a route can give is declared with its schema.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gateway.errors import GatewayError, InferenceUnavailable, SubscriberLimit, Unauthorized
from gateway.schema import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)

_WHEN = {
    400: "Bad input: the message says what was wrong.",
    401: "Authentication is on (auth.api_keys) and the request had no valid API key (Authorization: Bearer "
    "<key> or X-API-Key) or, on SSE routes, no valid ?token= from POST /auth/token.",
    403: "Refused by policy.",
    404: "Not found: the message names what.",
    409: "Conflicts with an existing resource.",
    413: "Too large: upload.max_bytes, upload.max_pixels, or a side over 65535 pixels.",
    415: "Not multipart/form-data or a raw JPEG/PNG/WebP body, or an image format that is not accepted.",
    422: "A parameter or JSON field is missing or out of its documented range.",
    502: "Triton answered with an error that retrying will not fix.",
    503: "Triton is down, frozen or timing out, a model is degraded, the gateway is overloaded or at its SSE "
    "subscriber limit: retry after "
    "the Retry-After header.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, each with the error body."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _WHEN[status]}
        if status == 503:
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"description": "Bearer.", "schema": {"type": "string"}}}
        out[status] = entry
    return out


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, request: Request | None = None
) -> JSONResponse:
    """The error answer, counted by ``code`` in the app's metrics when ``request`` is given."""
    metrics = getattr(request.app.state, "metrics", None) if request is not None else None
    if metrics is not None:
        metrics.errors.labels(code).inc()
    body = ErrorBody(error=ErrorDetail(code=code, message=message[:65_536]))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path``: Starlette's own 405 names only the
    methods of the first route whose path matched (``GET`` for ``/streams``, not ``POST``)."""
    allowed = []
    for method in HTTP_METHODS:
        scope = {"type": "http", "path": path, "root_path": "", "method": method, "headers": []}
        if any(route.matches(scope)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


def install(app: FastAPI, *, retry_after_s: int) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        headers = None
        if isinstance(exc, InferenceUnavailable | SubscriberLimit):
            headers = {"Retry-After": str(retry_after_s)}
        elif isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        if exc.status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
        return error_response(exc.status, exc.code, exc.message, headers, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, "invalid_request", details, request=request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return error_response(exc.status_code, "http_error", str(exc.detail), headers, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the gateway log", request=request)
