"""Live streams: SSE events, the stream list, runtime add/remove, per-stream health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from gateway.api.auth import KEY_OR_TOKEN_REQUIRED, KEY_REQUIRED
from gateway.api.deps import SettingsDep, StreamsDep
from gateway.api.errors import responses
from gateway.api.sse_guard import SseGuard, Watched
from gateway.config import Settings
from gateway.errors import StreamNotFound, SubscriberLimit
from gateway.fanout import Broadcaster, Subscription
from gateway.ingest import StreamState
from gateway.schema import STREAM_ID_PATTERN, StreamCreate, StreamHealth, StreamInfo, event_type
from gateway.streams.manager import StreamManager

router = APIRouter(tags=["streams"])
DRAIN_GRACE_S = 5.0
StreamId = Annotated[str, Path(pattern=STREAM_ID_PATTERN, description="Stream id.")]
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events, until the stream is removed: `prediction` events "
        "(`PredictionEvent`) and `status` events (`StatusEvent`), each with an increasing `id`. "
        "A new subscriber gets the current status first; keep-alive comments every ingest.keepalive_s.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


async def _events(
    broadcaster: Broadcaster, sub: Subscription, guard: SseGuard, watched: Watched | None
) -> AsyncIterator[ServerSentEvent]:
    try:
        while True:
            envelope = await sub.get()
            if envelope is None:
                return
            yield ServerSentEvent(data=envelope.data, event=event_type(envelope.event), id=str(envelope.id))
    finally:
        broadcaster.unsubscribe(sub)
        guard.unwatch(watched)


def _sse(request: Request, streams: StreamManager, settings: Settings, sid: str) -> EventSourceResponse:
    worker = streams.get(sid)
    limit = settings.ingest.max_subscribers
    if sum(w.broadcaster.subscribers for w in streams.list()) >= limit:
        request.app.state.metrics.sse_dropped.labels("limit").inc()
        raise SubscriberLimit(f"{limit} SSE subscribers are connected, the limit (ingest.max_subscribers)")
    guard: SseGuard = request.app.state.sse_guard
    sub = worker.broadcaster.subscribe()
    watched = guard.watch(request.scope, sid)  # drops the subscriber if it stops reading
    return EventSourceResponse(
        _events(worker.broadcaster, sub, guard, watched),
        ping=settings.ingest.keepalive_s,
        send_timeout=settings.ingest.send_timeout_s,
        # On shutdown the stream manager ends each response with a final status event
        # (gateway.api.draining); sse-starlette waits this long for it before cancelling.
        shutdown_grace_period=min(DRAIN_GRACE_S, settings.ingest.send_timeout_s),
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, **responses(401, 404, 503)},
    dependencies=[KEY_OR_TOKEN_REQUIRED],
    summary="SSE of the default stream (rtsp_url, or the first configured stream).",
)
async def default_stream(request: Request, streams: StreamsDep, settings: SettingsDep) -> EventSourceResponse:
    if streams.default_id is None:
        raise StreamNotFound("no default stream: set rtsp_url or streams in the configuration")
    return _sse(request, streams, settings, streams.default_id)


@router.get(
    "/streams/{sid}/events",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, **responses(401, 404, 422, 503)},
    dependencies=[KEY_OR_TOKEN_REQUIRED],
    summary="SSE of one stream: `prediction` and `status` events.",
)
async def stream_events(
    request: Request, sid: StreamId, streams: StreamsDep, settings: SettingsDep
) -> EventSourceResponse:
    return _sse(request, streams, settings, sid)


@router.get(
    "/streams",
    response_model=list[StreamInfo],
    responses=responses(401),
    dependencies=[KEY_REQUIRED],  # camera hosts are visible, even with passwords redacted
    summary="Every stream with its state and counters.",
)
async def list_streams(streams: StreamsDep) -> list[StreamInfo]:
    return [w.describe() for w in streams.list()]


@router.post(
    "/streams",
    status_code=201,
    response_model=StreamInfo,
    responses=responses(400, 401, 403, 409, 422),
    dependencies=[KEY_REQUIRED],
    summary="Add an RTSP stream at runtime (checked against stream_policy).",
)
async def add_stream(stream: StreamCreate, streams: StreamsDep) -> StreamInfo:
    worker = await streams.create(stream)
    return worker.describe()


@router.delete(
    "/streams/{sid}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 404, 422),
    dependencies=[KEY_REQUIRED],
    summary="Stop and remove a stream.",
)
async def remove_stream(sid: StreamId, streams: StreamsDep) -> Response:
    await streams.remove(sid)
    return Response(status_code=204)


@router.get(
    "/health/stream",
    response_model=StreamHealth,
    responses={503: {"model": StreamHealth, "description": "A configured stream is not running."}},
    summary="Per-stream health; 200 only when every configured stream is running.",
)
async def stream_health(streams: StreamsDep) -> JSONResponse:
    workers = {w.id: w.describe() for w in streams.list()}
    healthy = all(sid in workers and workers[sid].state is StreamState.RUNNING for sid in streams.configured)
    body = StreamHealth(healthy=healthy, streams=workers)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if healthy else 503)
