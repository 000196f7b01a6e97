"""One event's way from its stream's publisher to a subscriber, in one process, without
decoding or inference: what cluster mode adds per event, free of the rest of a gateway's
noise.  Single: the broadcaster's fan-out.  Cluster: the event log -> a Redis Stream ->
the event hub (``XREAD BLOCK``), the code the gateways run, against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np

from bench.procstat import CpuMeter, pid
from gateway.cluster.events import EventHub, EventLog
from gateway.cluster.store import RedisStore
from gateway.config import ClusterSettings
from gateway.fanout import Broadcaster, Envelope, Subscription
from gateway.schema import ClassificationResult, ClassScore, ImageSize, Latency, PredictionEvent, prediction_event
from harness.peers.redis import RedisServer


@dataclass
class PathCost:
    path: str
    events: int
    cpu_us_per_event: float  # this process: publish, (append, read, parse,) deliver
    redis_cpu_us_per_event: float
    lag_p50_ms: float
    lag_p99_ms: float


def _event(sid: str, seq: int) -> PredictionEvent:
    scores = [ClassScore(index=i, label=f"class {i}", probability=0.2) for i in range(5)]
    result = ClassificationResult(
        model="mobilenet_v3_small", model_version="1", image=ImageSize(width=640, height=360), predictions=scores
    )
    latency = Latency(wait=1.0, preprocess=2.0, inference=3.0, total=6.0)
    return prediction_event(result, stream=sid, frame=seq, captured_at=time.time(), latency=latency)


class _Path:
    """Publishers and one subscriber per stream; ``sent`` maps an event id to its publish time."""

    def __init__(self, redis: RedisServer | None, streams: int) -> None:
        self.redis = redis
        self.sids = [f"p{i}" for i in range(streams)]
        now = int(time.time() * 1000)
        self.casts = {sid: Broadcaster(stream=sid, run=now, queue_size=64) for sid in self.sids}
        self.sent: dict[str, float] = {}
        self.lags: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0
        self.store: RedisStore | None = None
        self.log: EventLog | None = None
        self.hub: EventHub | None = None

    async def subscribe(self) -> list[Subscription]:
        if self.redis is None:
            return [self.casts[sid].subscribe() for sid in self.sids]
        settings = ClusterSettings(redis_url=self.redis.url, key_prefix=f"path{time.monotonic_ns()}")
        self.store = RedisStore(settings)
        self.log = EventLog(self.store, settings.events_maxlen)
        self.hub = EventHub(self.store, queue_size=64, resume_limit=1000, local=lambda sid: None)
        self.log.start()
        self.hub.start()
        subs = [(await self.hub.subscribe(sid, None))[0] for sid in self.sids]
        await asyncio.sleep(0.5)  # the hub's first XREAD covers every stream
        return subs

    def publish(self, sid: str, seq: int) -> None:
        envelope = self.casts[sid].publish(_event(sid, seq))
        assert envelope is not None
        self.sent[str(envelope.id)] = time.monotonic()
        if self.log is not None:
            self.log.append(sid, envelope)

    async def consume(self, sub: Subscription) -> None:
        while (env := await sub.get()) is not None:
            self.received(env)

    def received(self, env: Envelope) -> None:
        sent = self.sent.get(str(env.id))
        if sent is not None:
            self.lags.append(time.monotonic() - sent)
            if len(self.lags) >= self.expected:
                self.done.set()

    async def close(self) -> None:
        if self.hub is not None and self.log is not None and self.store is not None:
            await self.hub.stop()
            await self.log.stop()
            await self.store.close()


def path_cost(redis: RedisServer | None, *, streams: int = 24, events: int = 4800, rate: float = 400.0) -> PathCost:
    """``events`` prediction events over ``streams`` streams at ``rate`` per second."""

    async def run() -> tuple[float, list[float]]:
        path = _Path(redis, streams)
        subs = await path.subscribe()
        readers = [asyncio.create_task(path.consume(sub)) for sub in subs]
        path.expected = events
        cpu0, wall0 = time.process_time(), time.monotonic()
        for k in range(events):
            path.publish(path.sids[k % streams], k // streams + 1)
            await asyncio.sleep(max(0.0, wall0 + (k + 1) / rate - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(path.done.wait(), 10)
        cpu = time.process_time() - cpu0
        for task in readers:
            task.cancel()
        await path.close()
        return cpu, path.lags

    meter = CpuMeter({"redis": pid(redis.proc.pid)} if redis is not None and redis.proc is not None else {})
    meter.start()
    started = time.monotonic()
    cpu, lags = asyncio.run(run())
    redis_cpu = meter.cores().get("redis", 0.0) * (time.monotonic() - started)
    n = max(1, len(lags))
    return PathCost(
        path="cluster" if redis is not None else "single",
        events=len(lags),
        cpu_us_per_event=round(cpu / n * 1e6, 1),
        redis_cpu_us_per_event=round(redis_cpu / n * 1e6, 1),
        lag_p50_ms=round(float(np.percentile(lags, 50)) * 1000, 2) if lags else -1.0,
        lag_p99_ms=round(float(np.percentile(lags, 99)) * 1000, 2) if lags else -1.0,
    )
