"""Live streams: SSE events, the stream list, runtime add/remove, per-stream health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from gateway.api.auth import KEY_OR_TOKEN_REQUIRED, KEY_REQUIRED
from gateway.api.deps import ClusterDep, SettingsDep, StreamsDep
from gateway.api.errors import responses
from gateway.api.sse_guard import SseGuard, Watched
from gateway.cluster.node import ClusterNode
from gateway.config import Settings
from gateway.errors import StreamNotFound, SubscriberLimit
from gateway.fanout import Envelope, EventId, Subscription
from gateway.ingest import StreamState
from gateway.schema import STREAM_ID_PATTERN, StreamCreate, StreamHealth, StreamInfo, event_type
from gateway.streams.manager import StreamManager

router = APIRouter(tags=["streams"])
DRAIN_GRACE_S = 5.0
StreamId = Annotated[str, Path(pattern=STREAM_ID_PATTERN, description="Stream id.")]
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events, until the stream is removed: `prediction` events "
        "(`PredictionEvent`) and `status` events (`StatusEvent`), each with an id `<run>-<seq>` (run: when this "
        "run of the stream began, Unix ms; seq: from 1, without holes).  A new subscriber gets the current status "
        "first; one that sends Last-Event-ID gets what it missed from the resume ring (ingest.resume_events, "
        "ingest.resume_s), or a `status` event with reason `events_lost` saying how many are gone.  A `retry:` "
        "hint first; keep-alive comments every ingest.keepalive_s.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
FEED_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `status` events (`StatusEvent`) of every stream, without ids.  Each "
        "stream's current status first, then every change; a stream added appears with its first status, a stream "
        "removed ends with state `stopped`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description="Resume after this event id: EventSource sends it by itself when it reconnects.",
    ),
]
LastEventIdQuery = Annotated[
    str | None,
    Query(
        alias="last_event_id",
        max_length=64,
        description="The same as the Last-Event-ID header, for a client that opens a new EventSource (which cannot "
        "set headers); the header wins.",
    ),
]


def _resume_point(header: str | None, query: str | None) -> EventId | None:
    text = header if header is not None else query
    return EventId.parse(text) if text else None


async def _events(
    sub: Subscription,
    *,
    unsubscribe: Callable[[Subscription], None],
    guard: SseGuard,
    watched: Watched | None,
    retry_ms: int,
    notice: Callable[[int], Envelope | None],
) -> AsyncIterator[ServerSentEvent]:
    """A subscriber's events: the replay, then live.  A queue overflow is announced by ``notice``."""
    try:
        yield ServerSentEvent(retry=retry_ms)  # how long EventSource waits before it reconnects
        while True:
            replaying = bool(sub.backlog)
            envelope = await sub.get()
            if envelope is None:
                return
            # the queue's losses lie between the replay and the queue: announced with the queue's events
            lost = 0 if replaying else sub.take_lost()
            if lost:
                extra = notice(lost)
                if extra is not None:
                    yield _sse_event(extra)
            yield _sse_event(envelope)
    finally:
        unsubscribe(sub)
        guard.unwatch(watched)


def _sse_event(envelope: Envelope) -> ServerSentEvent:
    ident = str(envelope.id) if envelope.id is not None else None
    return ServerSentEvent(data=envelope.data, event=event_type(envelope.event), id=ident)


def _admit(request: Request, streams: StreamManager, settings: Settings) -> None:
    limit = settings.ingest.max_subscribers
    cluster: ClusterNode | None = request.app.state.cluster
    mirrored = cluster.hub.subscribers if cluster is not None else 0
    if sum(w.broadcaster.subscribers for w in streams.list()) + streams.feed.subscribers + mirrored >= limit:
        request.app.state.metrics.sse_dropped.labels("limit").inc()
        raise SubscriberLimit(f"{limit} SSE subscribers are connected, the limit (ingest.max_subscribers)")


def _serve(
    request: Request,
    settings: Settings,
    sub: Subscription,
    *,
    unsubscribe: Callable[[Subscription], None],
    label: str,
    notice: Callable[[int], Envelope | None],
) -> EventSourceResponse:
    """The SSE response of one subscription, watched by the SSE guard (``label``: its stream)."""
    guard: SseGuard = request.app.state.sse_guard
    watched = guard.watch(request.scope, label)  # drops the subscriber if it stops reading
    events = _events(
        sub, unsubscribe=unsubscribe, guard=guard, watched=watched, retry_ms=settings.ingest.retry_ms, notice=notice
    )
    return EventSourceResponse(
        events,
        ping=settings.ingest.keepalive_s,
        send_timeout=settings.ingest.send_timeout_s,
        # On shutdown the stream manager ends each response with a final status event
        # (gateway.api.draining); sse-starlette waits this long for it before cancelling.
        shutdown_grace_period=min(DRAIN_GRACE_S, settings.ingest.send_timeout_s),
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )


async def _sse(
    request: Request, streams: StreamManager, settings: Settings, sid: str, after: EventId | None
) -> EventSourceResponse:
    cluster: ClusterNode | None = request.app.state.cluster
    if cluster is not None:  # any gateway serves any stream's events, from Redis
        if not await cluster.exists(sid):
            raise StreamNotFound(f"no stream {sid!r}")
        _admit(request, streams, settings)
        sub, unsubscribe = await cluster.hub.subscribe(sid, after)
        return _serve(request, settings, sub, unsubscribe=unsubscribe, label=sid, notice=cluster.hub.notice_for(sid))
    worker = streams.get(sid)
    _admit(request, streams, settings)
    broadcaster = worker.broadcaster
    sub = broadcaster.subscribe(after)
    return _serve(request, settings, sub, unsubscribe=broadcaster.unsubscribe, label=sid, notice=broadcaster.gap_notice)


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={**FEED_RESPONSE, **responses(401, 503)},
    dependencies=[KEY_OR_TOKEN_REQUIRED],
    summary="SSE of every stream's status: each stream's current status first, then every change.",
)
async def status_feed(request: Request, streams: StreamsDep, settings: SettingsDep) -> EventSourceResponse:
    _admit(request, streams, settings)
    feed = streams.feed
    sub = feed.subscribe()

    def resend(_lost: int) -> None:  # a missed status is stale state: send every stream's current one again
        sub.backlog.extend(feed.current())

    return _serve(request, settings, sub, unsubscribe=feed.unsubscribe, label="*", notice=resend)


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, **responses(400, 401, 404, 503)},
    dependencies=[KEY_OR_TOKEN_REQUIRED],
    summary="SSE of the default stream (rtsp_url, or the first configured stream).",
)
async def default_stream(
    request: Request,
    streams: StreamsDep,
    settings: SettingsDep,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> EventSourceResponse:
    if streams.default_id is None:
        raise StreamNotFound("no default stream: set rtsp_url or streams in the configuration")
    after = _resume_point(last_event_id, last_event_id_query)
    return await _sse(request, streams, settings, streams.default_id, after)


@router.get(
    "/streams/{sid}/events",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, **responses(400, 401, 404, 422, 503)},
    dependencies=[KEY_OR_TOKEN_REQUIRED],
    summary="SSE of one stream: `prediction` and `status` events.",
)
async def stream_events(
    request: Request,
    *,
    sid: StreamId,
    streams: StreamsDep,
    settings: SettingsDep,
    last_event_id: LastEventIdHeader = None,
    last_event_id_query: LastEventIdQuery = None,
) -> EventSourceResponse:
    return await _sse(request, streams, settings, sid, _resume_point(last_event_id, last_event_id_query))


@router.get(
    "/streams/{sid}/frame.jpg",
    response_class=Response,
    responses={
        200: {
            "description": "The stream's last predicted frame (the one of its latest prediction event), JPEG.  "
            "X-Frame-Index is that event's `frame`; X-Captured-At its `captured_at`.  Encoded at most once per "
            "viewer.frame_interval_s, however many clients ask.  Cluster mode: a stream another gateway runs "
            "is shared through Redis, refreshed once a second while asked for (404 no_frame until the first).",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        },
        **responses(401, 404, 422, 503),
    },
    dependencies=[KEY_OR_TOKEN_REQUIRED],  # an <img src> sends no headers either: ?token= works here too
    summary="The latest frame a stream predicted on, as a JPEG (for the viewer).",
)
async def stream_frame(sid: StreamId, streams: StreamsDep, cluster: ClusterDep) -> Response:
    if cluster is not None and streams.broadcaster_of(sid) is None:
        if not await cluster.exists(sid):
            raise StreamNotFound(f"no stream {sid!r}")
        jpeg = await cluster.frame(sid)  # run by another gateway: its frames come through Redis
    else:
        jpeg = await streams.get(sid).snapshot.jpeg()
    return Response(
        jpeg.data,
        media_type="image/jpeg",
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Index": str(jpeg.frame),
            "X-Captured-At": f"{jpeg.captured_at:.3f}",
        },
    )


@router.get(
    "/streams",
    response_model=list[StreamInfo],
    responses=responses(401),
    dependencies=[KEY_REQUIRED],  # camera hosts are visible, even with passwords redacted
    summary="Every stream with its state and counters.",
)
async def list_streams(streams: StreamsDep, cluster: ClusterDep) -> list[StreamInfo]:
    if cluster is not None:
        return await cluster.streams()
    return [w.describe() for w in streams.list()]


@router.post(
    "/streams",
    status_code=201,
    response_model=StreamInfo,
    responses=responses(400, 401, 403, 409, 422, 503),
    dependencies=[KEY_REQUIRED],
    summary="Add an RTSP stream at runtime (checked against stream_policy).  Cluster mode: registered for "
    "every gateway; the one that owns it starts it within a second (503 while Redis is down).",
)
async def add_stream(stream: StreamCreate, streams: StreamsDep, cluster: ClusterDep) -> StreamInfo:
    if cluster is not None:
        return await cluster.create(stream)
    worker = await streams.create(stream)
    return worker.describe()


@router.delete(
    "/streams/{sid}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 404, 422, 503),
    dependencies=[KEY_REQUIRED],
    summary="Stop and remove a stream.  Cluster mode: on any gateway; the one running it stops it within a "
    "second (503 while Redis is down).",
)
async def remove_stream(sid: StreamId, streams: StreamsDep, cluster: ClusterDep) -> Response:
    if cluster is not None:
        await cluster.delete(sid)
        return Response(status_code=204)
    await streams.remove(sid)
    return Response(status_code=204)


@router.get(
    "/health/stream",
    response_model=StreamHealth,
    responses={503: {"model": StreamHealth, "description": "A configured stream is not running."}},
    summary="Per-stream health; 200 only when every configured stream is running.",
)
async def stream_health(streams: StreamsDep, cluster: ClusterDep) -> JSONResponse:
    rows = await cluster.streams() if cluster is not None else [w.describe() for w in streams.list()]
    workers = {w.id: w for w in rows}
    healthy = all(sid in workers and workers[sid].state is StreamState.RUNNING for sid in streams.configured)
    body = StreamHealth(healthy=healthy, streams=workers)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if healthy else 503)
