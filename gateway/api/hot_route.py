"""A pure ASGI middleware that hands one hot route straight to its endpoint.

``POST /predict`` runs once per uploaded image, and its own work (decode, preprocessing,
the Triton call) runs on a worker thread; what the event loop adds to every request is
latency.  Past the user middleware, Starlette and FastAPI wrap each request in more
layers (the exception middleware, the exit-stack middleware, the router's match over
every route, the route's request/response wrappers, dependency solving for the
``Request`` parameter).  Driven in process with a decode and a preprocessing between
requests, as on the server (that work evicts the interpreter's caches), the application
took 0.9 ms a request through those layers and 0.6 ms without them; on the server, the
event loop's CPU per request fell from 1.28 to 1.08 ms (docs/benchmarks.md).

The route stays declared on the router (it is what the OpenAPI document describes, and
what serves the path whenever this middleware does not: another method, a root path).
Errors the endpoint raises go to the handlers ``errors.install`` registered on the app,
looked up by the exception's class as Starlette's exception middleware looks them up, so
a request answered here gets the same status, body, headers and metric as one answered
by the router.  An exception with no handler but ``Exception``'s goes on outwards, to the
server-error middleware, as it would from the router.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Any], Response | Awaitable[Response]]


class HotRoute:
    def __init__(self, app: ASGIApp, owner: FastAPI, method: str, path: str, endpoint: Endpoint) -> None:
        self.app = app
        self.owner = owner  # its exception_handlers, as errors.install left them
        self.method = method
        self.path = path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != self.method:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler | None:
        """The handler registered for the nearest class of ``exc``, ``Exception``'s excepted
        (that one is the server-error middleware's, and it also logs the traceback)."""
        handlers = self.owner.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None
