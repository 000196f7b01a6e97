"""App factory and lifespan.  ``uvicorn gateway.main:create_app --factory``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from gateway.api import draining, errors, openapi
from gateway.api.admission import Admission
from gateway.api.auth import API_KEY_HEADER, REDACT_TOKENS, Authenticator
from gateway.api.hot_route import HotRoute
from gateway.api.routes import auth as auth_routes
from gateway.api.routes import cluster as cluster_routes
from gateway.api.routes import health, predict, viewer
from gateway.api.routes import metrics as metrics_routes
from gateway.api.routes import streams as stream_routes
from gateway.api.sse_guard import SseGuard
from gateway.api.timing import PredictTimer
from gateway.capture import Capturer, CaptureStats
from gateway.cluster import Cluster
from gateway.config import Settings, load_settings
from gateway.inference.batcher import FrameBatcher
from gateway.inference.catalog import ModelCatalog
from gateway.inference.client import TritonClient
from gateway.inference.predictor import Predictor, Workers
from gateway.metrics import Metrics
from gateway.schema import StreamInfo
from gateway.streams.manager import StreamManager

log = logging.getLogger("gateway")


def _stream_rows(app: FastAPI) -> list[StreamInfo]:
    streams: StreamManager | None = getattr(app.state, "streams", None)
    return [w.describe() for w in streams.list()] if streams is not None else []


def _capture_stats(app: FastAPI) -> CaptureStats | None:
    capturer: Capturer | None = getattr(app.state, "capturer", None)
    return capturer.stats if capturer is not None and capturer.enabled else None


def _operation_id(route: APIRoute) -> str:
    """The route function's name (predict, add_stream, ...): what a generated client calls."""
    return route.name


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CORS_HEADERS = ["Authorization", API_KEY_HEADER, "Content-Type", "Last-Event-ID"]  # every header the API reads
CORS_EXPOSED = ["Retry-After", "X-Frame-Index", "X-Captured-At"]  # headers another origin's script may read


def _default_logging(level: str) -> None:
    """Under a bare ``uvicorn gateway.main:create_app --factory`` nobody configures
    logging, and the gateway's own INFO lines (model ready, version switches) would be
    lost.  If neither the root nor the ``gateway`` logger has a handler, give the
    ``gateway`` logger one on stderr; a host that configures logging is left alone."""
    if logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log.addHandler(handler)
    log.setLevel(level.upper())


def _frame_batcher(settings: Settings, client: TritonClient, metrics: Metrics) -> FrameBatcher:
    ing = settings.ingest
    observe = metrics.stream_batch_size.labels
    return FrameBatcher(client, ing.batch_window_ms, ing.batch_max, on_batch=lambda m, n: observe(m).observe(n))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    _default_logging(settings.server.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Created in order, stopped in reverse.
        workers = Workers(settings)
        client = TritonClient(settings.triton, on_retry=lambda m, why: metrics.inference_retries.labels(m, why).inc())
        await client.start()
        catalog = ModelCatalog(settings, client)
        batcher = _frame_batcher(settings, client, metrics)
        predictor = Predictor(settings, client, catalog, workers, batcher)
        capturer = Capturer(settings.capture)
        cluster = Cluster(settings, metrics) if settings.cluster.enabled else None
        streams = StreamManager(
            settings, predictor, metrics, capturer, on_event=cluster.log.append if cluster is not None else None
        )
        app.state.sse_guard = guard = SseGuard(metrics, settings.ingest.max_client_lag_s)
        app.state.triton, app.state.catalog, app.state.predictor = client, catalog, predictor
        app.state.streams, app.state.capturer = streams, capturer
        app.state.cluster = cluster.attach(streams) if cluster is not None else None
        drain: asyncio.Task[None] | None = None
        try:
            await catalog.warm(settings.model, settings.triton.startup_timeout_s)
            capturer.start()
            await streams.start()
            if cluster is not None:
                await cluster.start()
            guard.start()
            on_exit = cluster.drain if cluster is not None else streams.drain
            drain = asyncio.create_task(draining.watch(on_exit), name="drain-on-exit")
            yield
        finally:
            if drain is not None:
                drain.cancel()
            await guard.stop()
            if cluster is not None:
                await cluster.stop()
            await streams.stop()
            capturer.stop()
            await batcher.stop()
            await client.stop()
            workers.shutdown()

    app = FastAPI(
        title="stream-ml gateway",
        version="0.1.0",
        summary="Video and image inference through NVIDIA Triton.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.started_at = time.monotonic()
    app.state.auth = Authenticator(settings.auth)  # pure, so it exists before the lifespan
    logging.getLogger("uvicorn.access").addFilter(REDACT_TOKENS)
    # A passive registry, so it exists before the lifespan; it reads the streams at scrape time.
    metrics = Metrics(lambda: _stream_rows(app), lambda: _capture_stats(app))
    app.state.metrics = metrics
    _add_middleware(app, settings, metrics)
    errors.install(app, retry_after_s=settings.triton.retry_after_s)
    openapi.install(app, settings)
    _include_routes(app, settings)
    return app


def _add_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    # innermost: an admitted POST /predict goes straight to its endpoint
    app.add_middleware(HotRoute, owner=app, method="POST", path="/predict", endpoint=predict.predict)
    app.add_middleware(Admission, settings=settings.admission, metrics=metrics)
    app.add_middleware(PredictTimer, metrics=metrics)  # outermost: refused requests are timed too
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED,
            allow_credentials=settings.cors_allow_credentials,
        )


def _include_routes(app: FastAPI, settings: Settings) -> None:
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(auth_routes.router)
    app.include_router(stream_routes.router)
    app.include_router(metrics_routes.router)
    app.include_router(cluster_routes.router)
    if settings.viewer.enabled:
        viewer.install(app)
