"""A gateway in the cluster: membership, the shared stream registry, and which streams run here.

``ClusterNode`` runs one loop, a *tick* every ``min(1 s, lease_s / 3)``:

1. **Heartbeat** (one Lua script): renew this node's membership for ``lease_s``, drop expired
   members, read the live members, the registry's version and the dataset's epoch.
2. **Registry**: re-read the stream registry when its version changed (or Redis lost its data:
   then every gateway registers again every stream it knew, so nothing is lost).
3. **Ownership**: for ``settle_s`` after joining, or after Redis answers again, the member list
   may still miss gateways that have not heartbeated yet: the node then only keeps (and claims)
   what already runs here.  After that, a stream belongs here when rendezvous hashing over the live members says so
   (``gateway.cluster.ownership``).  Streams that no longer belong here (removed, or moved to a
   gateway that joined) are stopped, and their leases are renewed until their reader has
   stopped, then released.  Then the leases of the streams that belong here are claimed (renewed or taken,
   one script); a stream starts only once its lease is held, and stops as soon as a renewal
   says another gateway holds it.  So two gateways never decode the same camera at once.
4. **Descriptions**: the state and counters of the streams running here go to Redis for
   ``GET /streams`` on every gateway: at once when a stream's state changes, else every
   ``INFO_EVERY_S``.

When a gateway dies, its membership expires after ``lease_s`` and its leases too; the
next ticks of the others give its streams new owners: a takeover within ``lease_s`` plus
a tick.

**Redis down.**  Streams running here keep running and serving this gateway's
subscribers (``gateway.cluster.events``); registry changes answer 503
(``ClusterUnavailable``).  When Redis answers again the next tick claims the leases of the
streams running here: a lease still held by this gateway, or free, is kept; one another
gateway took meanwhile (possible only if Redis answered it but not this one) stops the
stream here at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from dataclasses import dataclass

from pydantic import ValidationError

from gateway.cluster import ownership
from gateway.cluster.events import EventHub, EventLog, envelope_of
from gateway.cluster.store import RedisStore
from gateway.config import Settings, StreamConfig
from gateway.errors import ClusterUnavailable, FrameNotReady, StreamConflict, StreamLimit, StreamNotFound
from gateway.fanout import EventId
from gateway.ingest import StreamState, redact
from gateway.metrics import ClusterStats, Metrics
from gateway.schema import MOVING, STREAM_REMOVED, ClusterHealth, ClusterStatus, Ownership, StreamCreate, StreamInfo
from gateway.streams.manager import StreamManager
from gateway.streams.snapshot import Jpeg

log = logging.getLogger(__name__)
HISTORY = 2000  # stream runs remembered for GET /cluster
FRAME_TTL_MS = 5000  # a frame asked for on another gateway: shared this long after the last ask
INFO_EVERY_S = 5.0  # a stream's description in Redis is at most this old (state changes: at once)


class NodeState(enum.Enum):
    JOINING = "joining"
    ACTIVE = "active"
    REDIS_DOWN = "redis_down"
    STOPPED = "stopped"


ALLOWED: dict[NodeState, set[NodeState]] = {
    NodeState.JOINING: {NodeState.ACTIVE, NodeState.REDIS_DOWN, NodeState.STOPPED},
    NodeState.ACTIVE: {NodeState.REDIS_DOWN, NodeState.STOPPED},
    NodeState.REDIS_DOWN: {NodeState.ACTIVE, NodeState.STOPPED},
    NodeState.STOPPED: set(),
}


@dataclass(frozen=True)
class NodeChange:
    old: NodeState
    new: NodeState
    reason: str
    at: float


class ClusterNode:
    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        manager: StreamManager,
        *,
        log_: EventLog,
        hub: EventHub,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._cfg = settings.cluster
        self.node_id = settings.cluster.node
        self._store = store
        self._manager = manager
        self._log = log_
        self._hub = hub
        self._metrics = metrics
        self._lease_ms = int(self._cfg.lease_s * 1000)
        self.tick_s = min(1.0, self._cfg.lease_s / 3)
        # every live gateway heartbeats within a tick, plus a command that was waiting for its timeout
        self.settle_s = 2 * self.tick_s + self._cfg.op_timeout_s
        self._settle_until = 0.0
        self.state = NodeState.JOINING
        self.changes: deque[NodeChange] = deque(maxlen=100)
        self.members: tuple[str, ...] = ()
        self.registry: dict[str, StreamConfig] = {}
        self._version: str | None = None
        self._epoch: str | None = None
        self._infos: dict[str, StreamInfo] = {}  # last read, for GET /streams while Redis is down
        self._retiring: dict[str, asyncio.Task[None]] = {}
        self._handing: set[str] = set()  # retiring streams whose lease is released once they stopped
        self._runs: dict[str, Ownership] = {}  # stream -> its run here (open)
        self.history: deque[Ownership] = deque(maxlen=HISTORY)
        self._redis_ok_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._written: dict[str, tuple[tuple[StreamState, str], float]] = {}  # stream -> what was written, when
        self._feed_seen: dict[str, str] = {}  # stream -> id of the last status sent to GET /events

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        log.info("cluster: node %s joining (lease %.1fs)", self.node_id, self._cfg.lease_s)
        with contextlib.suppress(ClusterUnavailable):  # the ticks retry
            await self._store.seed(self._settings.all_streams())
        self._task = asyncio.create_task(self._loop(), name="cluster-node")

    async def stop(self) -> None:
        """Leave: stop the ticks, stop every stream here (last event: ``moving``), release their
        leases so other gateways take them over at once, leave the membership.  Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = [w.id for w in self._manager.list()]
        # the leases stay ours while the readers stop (which can outlast lease_s): no new owner
        # starts a camera before this gateway has let go of it
        keeper = asyncio.create_task(self._keep(running), name="cluster-keep-leases")
        try:
            await asyncio.gather(*(self._retire(sid, release=False) for sid in running))
            await asyncio.gather(*self._retiring.values(), return_exceptions=True)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        with contextlib.suppress(ClusterUnavailable):
            await self._store.release(self.node_id, running)
            await self._store.leave(self.node_id)
        self._set(NodeState.STOPPED, "stopped")

    async def _keep(self, sids: list[str]) -> None:
        while True:
            with contextlib.suppress(ClusterUnavailable):
                await self._store.claim(self.node_id, sids, self._lease_ms)
            await asyncio.sleep(self.tick_s)

    def drain(self) -> None:
        """SIGTERM: the streams here tell their subscribers everywhere that they move (``moving``)."""
        self._manager.drain(MOVING)

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except ClusterUnavailable as e:
                self._set(NodeState.REDIS_DOWN, e.message)
            except Exception:  # the loop never dies silently
                log.exception("cluster: tick failed")
            await asyncio.sleep(max(0.0, self.tick_s - (time.monotonic() - started)))

    def _set(self, new: NodeState, reason: str) -> None:
        old = self.state
        if new is old:
            return
        if new not in ALLOWED[old]:
            log.error("cluster: illegal transition %s -> %s (%s)", old.value, new.value, reason)
            return
        self.state = new
        self.changes.append(NodeChange(old, new, reason, time.time()))
        level = logging.WARNING if new is NodeState.REDIS_DOWN or old is NodeState.REDIS_DOWN else logging.INFO
        log.log(level, "cluster: node %s %s -> %s: %s", self.node_id, old.value, new.value, reason)

    # --- one tick -----------------------------------------------------------------------------

    async def tick(self) -> None:
        beat = await self._store.heartbeat(self.node_id, self._lease_ms)
        self._redis_ok_at = time.monotonic()
        self.members = beat.members
        lost_data = self._epoch is not None and beat.epoch != self._epoch
        if lost_data:
            seeded = await self._store.seed([*self.registry.values(), *self._settings.all_streams()])
            log.warning("cluster: Redis lost its data; registered %d streams again", seeded)
        self._epoch = beat.epoch
        if lost_data or beat.version != self._version or self.state is not NodeState.ACTIVE:
            self.registry = await self._store.streams()
            self._version = beat.version
            self._hub.forget(set(self.registry))
        if self.state is not NodeState.ACTIVE:
            self._settle_until = time.monotonic() + self.settle_s
        self._set(NodeState.ACTIVE, f"{len(beat.members)} members")

        running = {w.id for w in self._manager.list()}
        if time.monotonic() < self._settle_until:
            # Just (re)joined: other gateways may not have heartbeated yet, so the member list may be
            # short.  Keep (and claim) what runs here; start and hand over nothing until it settles.
            mine = running & set(self.registry)
        else:
            mine = {sid for sid in self.registry if ownership.owner(sid, beat.members) == self.node_id}
        for sid in running - mine:  # removed, or belongs to another gateway now
            self._metrics.cluster_handovers.labels("removed" if sid not in self.registry else "moved").inc()
            self._start_retiring(sid)
        # claim what belongs here, and keep the leases of what is being handed over until its
        # reader has stopped (stopping can outlast lease_s; the next owner waits for the release)
        claim = sorted({sid for sid in mine if sid not in self._retiring} | self._handing)
        held = await self._store.claim(self.node_id, claim, self._lease_ms)
        for sid in sorted((running & mine) - set(self._retiring)):
            if not held.get(sid, False):  # another gateway holds it: stop here at once
                log.warning("cluster: lost the lease of stream %s; stopping it here", sid)
                self._metrics.cluster_handovers.labels("lease_lost").inc()
                self._start_retiring(sid, release=False)
        for sid in sorted(mine - running):
            if held.get(sid, False) and sid not in self._retiring:
                await self._run_here(self.registry[sid])
        await self._publish_infos()
        await self._share_frames()
        if self._manager.feed.subscribers:
            await self._feed_statuses()

    async def _run_here(self, config: StreamConfig) -> None:
        try:
            last = await self._store.last_event_id(config.id)
            after = EventId.parse(last) if last else None
            run = Ownership(stream=config.id, started_at=time.time())
            await self._manager.add(config, after=after)
        except StreamConflict:
            return
        except Exception as e:  # a stream that cannot start here: its lease goes back
            log.error("cluster: cannot run stream %s here: %s", config.id, e)
            with contextlib.suppress(ClusterUnavailable):
                await self._store.release(self.node_id, [config.id])
            if isinstance(e, ClusterUnavailable):
                raise
            return
        self._runs[config.id] = run
        self._metrics.cluster_handovers.labels("started").inc()
        log.info("cluster: node %s runs stream %s (%s)", self.node_id, config.id, redact(config.url))

    def _start_retiring(self, sid: str, *, release: bool = True) -> None:
        if sid not in self._retiring:
            task = asyncio.create_task(self._retire(sid, release=release), name=f"retire-{sid}")
            self._retiring[sid] = task
            if release:
                self._handing.add(sid)

            def done(_: object) -> None:
                self._retiring.pop(sid, None)
                self._handing.discard(sid)

            task.add_done_callback(done)

    async def _retire(self, sid: str, *, release: bool) -> None:
        """Stop a stream here; then (``release``) hand its lease back so its next owner starts it now."""
        with contextlib.suppress(StreamNotFound):
            await self._manager.remove(sid, MOVING if sid in self.registry else STREAM_REMOVED)
        run = self._runs.pop(sid, None)
        if run is not None:
            stopped = time.time()
            self.history.append(run.model_copy(update={"stopped_at": stopped}))
            log.info("cluster: node %s stopped stream %s after %.1fs here", self.node_id, sid, stopped - run.started_at)
        if release:
            with contextlib.suppress(ClusterUnavailable):
                await self._store.release(self.node_id, [sid])
                if sid not in self.registry:
                    await self._store.drop_info([sid])

    async def _publish_infos(self) -> None:
        """Descriptions of the streams here: at once when a state changes, else every ``INFO_EVERY_S``
        (they are most of Redis' write traffic: ~600 bytes per stream)."""
        now = time.monotonic()
        rows = {}
        for worker in self._manager.list():
            info = worker.describe()
            key = (info.state, info.triton)
            last = self._written.get(worker.id)
            if last is None or last[0] != key or now - last[1] >= INFO_EVERY_S:
                rows[worker.id] = info.model_copy(update={"owner": self.node_id}).model_dump_json()
                self._written[worker.id] = (key, now)
        for sid in [s for s in self._written if self._manager.broadcaster_of(s) is None]:
            del self._written[sid]
        await self._store.put_info(rows)

    async def _share_frames(self) -> None:
        """``frame.jpg`` asked on another gateway: the streams here that someone watches elsewhere
        put their latest JPEG in Redis, once a tick (encoded at most once per interval, as locally)."""
        wanted = await self._store.frames_wanted(sorted(w.id for w in self._manager.list()))
        frames = {}
        for sid in wanted:
            with contextlib.suppress(FrameNotReady, StreamNotFound):
                jpeg = await self._manager.get(sid).snapshot.jpeg()
                frames[sid] = (jpeg.data, jpeg.frame, jpeg.captured_at)
        await self._store.put_frames(frames, FRAME_TTL_MS)

    async def frame(self, sid: str) -> Jpeg:
        """``frame.jpg`` of a stream another gateway runs: what its owner shared through Redis
        (refreshed once a tick while someone asks)."""
        shared = await self._store.want_frame(sid, FRAME_TTL_MS)
        if shared is None:
            raise FrameNotReady(f"stream {sid!r}: its gateway has not shared a frame yet; ask again in a second")
        return Jpeg(*shared)

    async def _feed_statuses(self) -> None:
        """``GET /events`` in cluster mode: every stream's status changes, read from Redis each tick."""
        for stored in await self._store.statuses():
            envelope = envelope_of(stored)
            sid = envelope.event.stream
            if self._feed_seen.get(sid) != stored.id:
                self._feed_seen[sid] = stored.id
                self._manager.feed.publish(envelope)

    # --- the API's view -------------------------------------------------------------------------

    @property
    def hub(self) -> EventHub:
        return self._hub

    def health(self) -> ClusterHealth:
        down = self.state is NodeState.REDIS_DOWN
        settling = self._settle_until - time.monotonic() if self.state is NodeState.ACTIVE else 0.0
        return ClusterHealth(
            node_id=self.node_id,
            state=self.state.value,
            members=list(self.members),
            streams=len(self.registry),
            owned=len(self._manager.list()),
            redis_down_s=round(time.monotonic() - self._redis_ok_at, 3) if down else None,
            settling_s=round(settling, 3) if settling > 0 else None,
        )

    def stats(self) -> ClusterStats:
        return ClusterStats(
            members=len(self.members),
            streams=len(self.registry),
            owned=len(self._manager.list()),
            redis_up=self.state is NodeState.ACTIVE,
            events_written=self._log.written,
            events_dropped=self._log.dropped,
            events_pending=self._log.pending,
            events_read=self._hub.read_events,
            mirrors_subscribers=self._hub.subscribers,
        )

    def status(self) -> ClusterStatus:
        now = [r for r in self._runs.values()]
        return ClusterStatus(
            **self.health().model_dump(),
            running=sorted(w.id for w in self._manager.list()),
            history=[*self.history, *now],
        )

    async def create(self, stream: StreamCreate) -> StreamInfo:
        """``POST /streams`` in cluster mode: registered in Redis; its owner starts it within a tick."""
        config = await self._manager.admit(stream)
        registry = await self._store.streams()
        limit = self._settings.stream_policy.max_streams * max(1, len(self.members))
        if len(registry) >= limit:
            raise StreamLimit(
                f"the cluster runs {len(registry)} streams, its limit (stream_policy.max_streams x "
                f"{len(self.members)} gateways)"
            )
        if not await self._store.add(config):
            raise StreamConflict(f"stream {stream.id!r} already exists")
        self.registry[config.id] = config
        log.info("cluster: stream %s registered: %s", config.id, redact(config.url))
        return self._placeholder(config, ownership.owner(config.id, self.members))

    async def delete(self, sid: str) -> None:
        """``DELETE /streams/{id}`` in cluster mode: unregistered; its owner stops it within a tick."""
        if not await self._store.remove(sid):
            raise StreamNotFound(f"no stream {sid!r}")
        self.registry.pop(sid, None)
        log.info("cluster: stream %s removed", sid)

    async def exists(self, sid: str) -> bool:
        try:
            registry = await self._store.streams()
        except ClusterUnavailable:
            return sid in self.registry
        return sid in registry

    async def streams(self) -> list[StreamInfo]:
        """Every registered stream with its owner (``GET /streams``); while Redis is down, the last view."""
        try:
            registry = await self._store.streams()
            infos = await self._store.infos()
            holders = await self._store.holders(sorted(registry))
        except ClusterUnavailable:
            local = {w.id: w.describe().model_copy(update={"owner": self.node_id}) for w in self._manager.list()}
            return [
                local.get(sid) or self._infos.get(sid) or self._placeholder(c, None)
                for sid, c in sorted(self.registry.items())
            ]
        out = []
        for sid, config in sorted(registry.items()):
            holder = holders.get(sid)
            info = None
            raw = infos.get(sid)
            if raw is not None:
                with contextlib.suppress(ValidationError):
                    info = StreamInfo.model_validate_json(raw)
            if info is None or info.owner != holder:
                info = self._placeholder(config, holder)
            out.append(info.model_copy(update={"subscribers": self._hub.subscribers_of(sid)}))
        self._infos = {i.id: i for i in out}
        return out

    def _placeholder(self, config: StreamConfig, owner: str | None) -> StreamInfo:
        """A stream nobody has described yet (just registered, or between two owners)."""
        return StreamInfo(
            id=config.id,
            url=redact(config.url),
            model=config.model or self._settings.model,
            state=StreamState.CONNECTING,
            sample_fps=config.sample_fps or self._settings.frame_sample_fps,
            measured_fps=0.0,
            last_frame_age_s=None,
            reconnects=0,
            stalls=0,
            decode_errors=0,
            frames_read=0,
            frames_sampled=0,
            frames_skipped=0,
            frames_dropped=0,
            inferences=0,
            predictions=0,
            inference_errors=0,
            subscribers=self._hub.subscribers_of(config.id),
            events_dropped=0,
            transitions={},
            triton="available",
            owner=owner,
        )
