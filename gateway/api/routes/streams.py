"""Live streams: SSE events, the stream list, runtime add/remove, per-stream health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from gateway.api.deps import SettingsDep, StreamsDep
from gateway.api.errors import responses
from gateway.errors import StreamNotFound
from gateway.fanout import Broadcaster, Subscription
from gateway.ingest import StreamState
from gateway.schema import STREAM_ID_PATTERN, StreamCreate, StreamHealth, StreamInfo, event_type

router = APIRouter(tags=["streams"])
StreamId = Annotated[str, Path(pattern=STREAM_ID_PATTERN, description="Stream id.")]
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events, until the stream is removed: `prediction` events "
        "(`PredictionEvent`) and `status` events (`StatusEvent`), each with an increasing `id`. "
        "A new subscriber gets the current status first; keep-alive comments every ingest.keepalive_s.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


async def _events(broadcaster: Broadcaster, sub: Subscription) -> AsyncIterator[ServerSentEvent]:
    try:
        while True:
            envelope = await sub.get()
            if envelope is None:
                return
            yield ServerSentEvent(data=envelope.data, event=event_type(envelope.event), id=str(envelope.id))
    finally:
        broadcaster.unsubscribe(sub)


def _sse(streams: StreamsDep, settings: SettingsDep, sid: str) -> EventSourceResponse:
    worker = streams.get(sid)
    sub = worker.broadcaster.subscribe()
    return EventSourceResponse(
        _events(worker.broadcaster, sub),
        ping=settings.ingest.keepalive_s,
        send_timeout=settings.ingest.send_timeout_s,
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, **responses(404)},
    summary="SSE of the default stream (rtsp_url, or the first configured stream).",
)
async def default_stream(streams: StreamsDep, settings: SettingsDep) -> EventSourceResponse:
    if streams.default_id is None:
        raise StreamNotFound("no default stream: set rtsp_url or streams in the configuration")
    return _sse(streams, settings, streams.default_id)


@router.get(
    "/streams/{sid}/events",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, **responses(404, 422)},
    summary="SSE of one stream: `prediction` and `status` events.",
)
async def stream_events(sid: StreamId, streams: StreamsDep, settings: SettingsDep) -> EventSourceResponse:
    return _sse(streams, settings, sid)


@router.get("/streams", response_model=list[StreamInfo], summary="Every stream with its state and counters.")
async def list_streams(streams: StreamsDep) -> list[StreamInfo]:
    return [w.describe() for w in streams.list()]


@router.post(
    "/streams",
    status_code=201,
    response_model=StreamInfo,
    responses=responses(400, 403, 409, 422),
    summary="Add an RTSP stream at runtime (checked against stream_policy).",
)
async def add_stream(stream: StreamCreate, streams: StreamsDep) -> StreamInfo:
    worker = await streams.create(stream)
    return worker.describe()


@router.delete(
    "/streams/{sid}",
    status_code=204,
    response_class=Response,
    responses=responses(404, 422),
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
