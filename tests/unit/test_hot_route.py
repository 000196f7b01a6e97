"""POST /predict handed straight to its endpoint (``HotRoute``): the same answers as through
the router, for every refusal that comes before the predictor, and only that route taken."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from gateway.api import errors
from gateway.api.hot_route import HotRoute
from gateway.config import AuthSettings, Settings, UploadSettings
from gateway.errors import BadRequest
from gateway.main import create_app

KEY = "hot-route-key-0123456789abcdef"
SETTINGS = Settings(auth=AuthSettings(api_keys=(KEY,)), upload=UploadSettings(max_bytes=1024))
AUTH = {"X-API-Key": KEY}
JPEG = {**AUTH, "Content-Type": "image/jpeg"}


class Scopes:
    """The app, keeping each request's scope as the app left it (the router writes the
    matched route's ``endpoint`` into it)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[MutableMapping[str, Any]] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        self.seen.append(scope)
        await self.app(scope, receive, send)


def router_only(app: FastAPI) -> FastAPI:
    """The same app without ``HotRoute``: /predict through Starlette's and FastAPI's layers."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not cast(Any, HotRoute)]
    return app


def call(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(go())


def errors_counted(app: FastAPI) -> dict[str, float]:
    counts = {}
    for metric in app.state.metrics.errors.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels["code"]] = sample.value
    return counts


REFUSALS: list[tuple[str, dict[str, Any]]] = [
    ("no key", {"content": b"x", "headers": {"Content-Type": "image/jpeg"}}),
    ("wrong key", {"content": b"x", "headers": {"Content-Type": "image/jpeg", "X-API-Key": KEY[:-1] + "y"}}),
    ("top_k out of range", {"params": {"top_k": "0"}, "content": b"x", "headers": JPEG}),
    ("model name", {"params": {"model": "../x"}, "content": b"x", "headers": JPEG}),
    ("threshold", {"params": {"threshold": "nan"}, "content": b"x", "headers": JPEG}),
    ("content type", {"content": b"x", "headers": {**AUTH, "Content-Type": "text/plain"}}),
    ("too large", {"content": b"x" * 4000, "headers": JPEG}),
    ("no boundary", {"content": b"x", "headers": {**AUTH, "Content-Type": "multipart/form-data"}}),
    ("no image field", {"files": {"other": ("a.jpg", b"x", "image/jpeg")}, "headers": AUTH}),
    ("bad form field", {"files": {"image": ("a.jpg", b"x", "image/jpeg")}, "data": {"top_k": "x"}, "headers": AUTH}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "kw"), REFUSALS, ids=[c for c, _ in REFUSALS])
def test_each_refusal_is_answered_as_the_router_answers_it(case: str, kw: dict[str, Any]) -> None:
    hot, routed = create_app(SETTINGS), router_only(create_app(SETTINGS))
    a, b = call(hot, "POST", "/predict", **kw), call(routed, "POST", "/predict", **kw)
    assert 400 <= a.status_code < 500, (case, a.status_code, a.text)
    assert (a.status_code, a.json()) == (b.status_code, b.json()), case
    for header in ("content-type", "www-authenticate", "retry-after"):
        assert a.headers.get(header) == b.headers.get(header), (case, header)
    assert errors_counted(hot) == errors_counted(routed) == {a.json()["error"]["code"]: 1.0}, case


def test_only_post_predict_skips_the_router() -> None:
    app = Scopes(create_app(SETTINGS))
    refused = call(app, "POST", "/predict", content=b"x", headers={**AUTH, "Content-Type": "text/plain"})
    assert refused.status_code == 415
    assert "endpoint" not in app.seen[-1], "POST /predict went through the router"
    assert call(app, "GET", "/predict").status_code == 405, "other methods: the router's answer"
    assert "endpoint" in app.seen[-1], "other methods go through the router"
    assert call(app, "GET", "/health").status_code == 200
    assert "endpoint" in app.seen[-1], "other paths go through the router"
    routed = Scopes(router_only(create_app(SETTINGS)))
    call(routed, "POST", "/predict", content=b"x", headers={**AUTH, "Content-Type": "text/plain"})
    assert "endpoint" in routed.seen[-1], "the check above can tell the two paths apart"


def test_an_error_without_its_own_handler_goes_on_outwards() -> None:
    owner = FastAPI()
    errors.install(owner, retry_after_s=1)
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])

    async def failing(request: Request) -> Response:
        if request.query_params.get("bad") == "input":
            raise BadRequest("bad input")
        raise RuntimeError("a bug")

    hot = HotRoute(inner, owner, "POST", "/predict", failing)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    def scope(query: bytes, path: str = "/predict") -> dict[str, Any]:
        return {"type": "http", "method": "POST", "path": path, "query_string": query, "headers": [], "app": owner}

    asyncio.run(hot(scope(b"bad=input"), receive, send))
    assert sent[0]["status"] == 400 and b'"bad_request"' in sent[1]["body"]
    with pytest.raises(RuntimeError, match="a bug"):  # to the server-error middleware: 500, and the traceback
        asyncio.run(hot(scope(b""), receive, send))
    asyncio.run(hot(scope(b"", "/predict/"), receive, send))
    assert seen == ["/predict/"], "another path goes to the next app"
