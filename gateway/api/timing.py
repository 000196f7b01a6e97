"""A pure ASGI middleware that times ``POST /predict`` by status code (no per-request task,
unlike ``BaseHTTPMiddleware``)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import Metrics

PREDICTED_MODEL = "predicted_model"  # set in request.state by the route on success


class PredictTimer:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            # the model label only for answered predictions: a client's text never becomes a label
            model = str(scope.get("state", {}).get(PREDICTED_MODEL, "")) if status == 200 else ""
            self.metrics.predict_seconds.labels(model, str(status)).observe(time.perf_counter() - started)
