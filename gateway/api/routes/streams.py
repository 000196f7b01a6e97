"""Live streams: SSE events, the stream list, runtime add/remove, per-stream health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from gateway.api.deps import SettingsDep, StreamsDep
from gateway.config import StreamConfig
from gateway.errors import StreamNotFound
from gateway.fanout import Broadcaster, Subscription
from gateway.ingest import StreamState

router = APIRouter(tags=["streams"])


async def _events(broadcaster: Broadcaster, sub: Subscription) -> AsyncIterator[ServerSentEvent]:
    try:
        while True:
            event = await sub.get()
            if event is None:
                return
            yield ServerSentEvent(data=json.dumps(event.data), event=event.type, id=str(event.id))
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


@router.get("/stream", summary="SSE of the default stream (rtsp_url, or the first configured stream).")
async def default_stream(streams: StreamsDep, settings: SettingsDep) -> EventSourceResponse:
    if streams.default_id is None:
        raise StreamNotFound("no default stream: set rtsp_url or streams in the configuration")
    return _sse(streams, settings, streams.default_id)


@router.get("/streams/{sid}/events", summary="SSE of one stream: `prediction` and `status` events.")
async def stream_events(sid: str, streams: StreamsDep, settings: SettingsDep) -> EventSourceResponse:
    return _sse(streams, settings, sid)


@router.get("/streams", summary="Every stream with its state and counters.")
async def list_streams(streams: StreamsDep) -> list[dict[str, Any]]:
    return [w.describe() for w in streams.list()]


@router.post("/streams", status_code=201, summary="Add an RTSP stream at runtime (checked against stream_policy).")
async def add_stream(config: StreamConfig, streams: StreamsDep) -> dict[str, Any]:
    streams.check_policy(config)
    worker = await streams.add(config)
    return worker.describe()


@router.delete("/streams/{sid}", status_code=204, summary="Stop and remove a stream.")
async def remove_stream(sid: str, streams: StreamsDep) -> Response:
    await streams.remove(sid)
    return Response(status_code=204)


@router.get("/health/stream", summary="Per-stream health; 200 only when every configured stream is running.")
async def stream_health(streams: StreamsDep) -> JSONResponse:
    workers = {w.id: w.describe() for w in streams.list()}
    healthy = all(sid in workers and workers[sid]["state"] == StreamState.RUNNING.value for sid in streams.configured)
    return JSONResponse({"healthy": healthy, "streams": workers}, status_code=200 if healthy else 503)
