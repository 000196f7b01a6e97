"""Cluster mode's Redis parts against a real redis-server, without gateways: the scripts
(membership, leases, registry, epoch), the event log through an outage, and the event
hub's resume rules (trimmed streams, holes).  Fast: no Triton, no camera."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cluster.events import EventHub, EventLog
from gateway.cluster.store import Outgoing, RedisStore
from gateway.config import ClusterSettings, StreamConfig
from gateway.errors import ClusterUnavailable
from gateway.fanout import Envelope, EventId
from gateway.ingest import StreamState
from gateway.schema import EVENTS_LOST, StatusEvent
from harness.peers.redis import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _settings(redis: RedisServer, prefix: str, **kw: object) -> ClusterSettings:
    return ClusterSettings(redis_url=redis.url, key_prefix=prefix, **kw)


def _status(sid: str, at: float, reason: str = "") -> StatusEvent:
    return StatusEvent(stream=sid, state=StreamState.RUNNING, reason=reason, at=at, triton="available")


def _envelope(sid: str, run: int, seq: int) -> Envelope:
    event = _status(sid, float(seq))
    return Envelope(EventId(run, seq), event, event.model_dump_json())


def test_membership_leases_and_registry(redis: RedisServer) -> None:
    async def run() -> None:
        store = RedisStore(_settings(redis, "t1"))
        try:
            # membership: a member that stops heartbeating is gone after its lease
            beat = await store.heartbeat("a", 300)
            assert beat.members == ("a",)
            beat = await store.heartbeat("b", 5000)
            assert beat.members == ("a", "b")
            await asyncio.sleep(0.4)
            assert (await store.heartbeat("b", 5000)).members == ("b",)
            # leases: one holder; renewing keeps it; another cannot take it until it expires or is released
            assert await store.claim("a", ["s1", "s2"], 300) == {"s1": True, "s2": True}
            assert await store.claim("b", ["s1"], 5000) == {"s1": False}
            assert await store.claim("a", ["s1"], 300) == {"s1": True}
            await asyncio.sleep(0.4)
            assert await store.claim("b", ["s1"], 5000) == {"s1": True}  # a's lease expired
            assert await store.holders(["s1", "s2", "s3"]) == {"s1": "b", "s2": None, "s3": None}
            assert await store.release("a", ["s1"]) == 0  # not a's to release
            assert await store.release("b", ["s1"]) == 1
            # registry: add once, version bumps, remove
            v0 = (await store.heartbeat("b", 5000)).version
            cam = StreamConfig(id="cam", url="rtsp://10.0.0.1/x", sample_fps=1)
            assert await store.add(cam) is True
            assert await store.add(cam) is False
            assert (await store.heartbeat("b", 5000)).version != v0
            assert await store.streams() == {"cam": cam}
            assert await store.seed([cam, StreamConfig(id="two", url="rtsp://10.0.0.2/x")]) == 1
            assert await store.remove("cam") is True
            assert await store.remove("cam") is False
            assert set(await store.streams()) == {"two"}
        finally:
            await store.close()

    asyncio.run(run())


def test_an_emptied_redis_gets_a_new_epoch(redis: RedisServer, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")
    server.start()

    async def beat() -> str:
        store = RedisStore(_settings(server, "t2"))
        try:
            return (await store.heartbeat("a", 1000)).epoch
        finally:
            await store.close()

    try:
        first = asyncio.run(beat())
        assert asyncio.run(beat()) == first
        server.kill()
        server.start()  # no persistence: empty
        assert asyncio.run(beat()) != first
    finally:
        server.stop()


def test_redis_down_is_cluster_unavailable_within_the_deadline(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")  # never started: connection refused

    async def run() -> float:
        store = RedisStore(ClusterSettings(redis_url=server.url, op_timeout_s=0.5))
        started = time.monotonic()
        try:
            with pytest.raises(ClusterUnavailable, match="heartbeat"):
                await store.heartbeat("a", 1000)
        finally:
            await store.close()
        return time.monotonic() - started

    assert asyncio.run(run()) < 2


def test_the_event_log_keeps_events_through_an_outage_and_sends_them_in_order(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")
    server.start()

    async def run() -> None:
        store = RedisStore(ClusterSettings(redis_url=server.url, key_prefix="t3", op_timeout_s=0.5))
        log = EventLog(store, maxlen=100)
        log.start()
        try:
            for seq in range(1, 6):
                log.append("cam", _envelope("cam", 1000, seq))
            await _until(lambda: log.written == 5)
            server.kill()
            for seq in range(6, 11):
                log.append("cam", _envelope("cam", 1000, seq))
            await _until(lambda: log.down_since is not None)
            assert log.pending == 5
            await asyncio.to_thread(server.start)  # back, empty
            await _until(lambda: log.written == 10)
            ids = [e.id for e in await store.events_after("cam", "0-0", 100)]
            assert ids == [f"1000-{s}" for s in range(6, 11)]
            assert log.dropped == 0
            # an id not above the stream's last (a stale owner) is refused and counted, not fatal
            log.append("cam", _envelope("cam", 1000, 3))
            await _until(lambda: log.dropped == 1)
        finally:
            await log.stop()
            await store.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


async def _until(predicate: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_the_hub_resumes_from_redis_and_announces_trimmed_and_missing_events(redis: RedisServer) -> None:
    async def run() -> None:
        store = RedisStore(_settings(redis, "t4"))
        hub = EventHub(store, queue_size=64, resume_limit=1000, local=lambda sid: None)
        hub.start()
        try:
            run_ms = 5000
            # events 1..20, with 11 and 12 missing (the owner lost them while Redis was down)
            events = [
                Outgoing("cam", f"{run_ms}-{s}", "status", _envelope("cam", run_ms, s).data) for s in range(1, 21)
            ]
            await store.append([e for e in events if e.id not in (f"{run_ms}-11", f"{run_ms}-12")], 1000)
            # resume after 5: 6..10, a notice that 2 are lost, 13..20
            sub, unsubscribe = await hub.subscribe("cam", EventId(run_ms, 5))
            got = list(sub.backlog)
            ids = [str(e.id) for e in got if e.id is not None]
            assert ids == [f"{run_ms}-{s}" for s in (*range(6, 11), *range(13, 21))], ids
            notices = [(i, e.event) for i, e in enumerate(got) if e.id is None]
            assert len(notices) == 1 and notices[0][0] == 5, notices
            assert isinstance(notices[0][1], StatusEvent) and notices[0][1].lost_events == 2
            unsubscribe(sub)
            # resuming right at the hole: the notice comes first
            sub, unsubscribe = await hub.subscribe("cam", EventId(run_ms, 10))
            first = sub.backlog[0]
            assert isinstance(first.event, StatusEvent) and first.event.reason == EVENTS_LOST
            assert first.event.lost_events == 2
            assert [str(e.id) for e in list(sub.backlog)[1:]] == [f"{run_ms}-{s}" for s in range(13, 21)]
            sub.backlog.clear()
            # live: each new event reaches the subscriber once, and a hole in the live events is announced
            for s in (21, 24):
                await store.append([Outgoing("cam", f"{run_ms}-{s}", "status", _envelope("cam", run_ms, s).data)], 1000)
            live = [await asyncio.wait_for(sub.get(), 5) for _ in range(3)]
            assert live[0] is not None and str(live[0].id) == f"{run_ms}-21"
            assert live[1] is not None and isinstance(live[1].event, StatusEvent) and live[1].event.lost_events == 2
            assert live[2] is not None and str(live[2].id) == f"{run_ms}-24"
            assert sub.queue.empty()
            unsubscribe(sub)
        finally:
            await hub.stop()
            await store.close()

    asyncio.run(run())


def test_the_hub_counts_what_redis_trimmed(redis: RedisServer) -> None:
    async def run() -> None:
        store = RedisStore(_settings(redis, "t5"))
        hub = EventHub(store, queue_size=64, resume_limit=1000, local=lambda sid: None)
        try:
            run_ms = 7000
            for s in range(1, 301):  # XADD MAXLEN ~ 10: Redis keeps a little more, in whole nodes
                await store.append([Outgoing("cam", f"{run_ms}-{s}", "status", _envelope("cam", run_ms, s).data)], 10)
            oldest = await store.first_event_id("cam")
            assert oldest is not None and oldest != f"{run_ms}-1"
            first_kept = EventId.parse(oldest).seq
            sub, _ = await hub.subscribe("cam", EventId(run_ms, 2))
            notice = sub.backlog[0]
            assert isinstance(notice.event, StatusEvent) and notice.event.lost_events == first_kept - 3
            assert str(sub.backlog[-1].id) == f"{run_ms}-300"
            # an id of a run Redis no longer holds: the count is unknown
            sub, _ = await hub.subscribe("cam", EventId(run_ms - 1, 2))
            assert isinstance(sub.backlog[0].event, StatusEvent) and sub.backlog[0].event.lost_events is None
        finally:
            await hub.stop()
            await store.close()

    asyncio.run(run())
