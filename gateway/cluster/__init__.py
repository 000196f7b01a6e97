"""Cluster mode (``cluster.redis_url``): several gateways share the cameras through Redis.

- ``store``: every Redis command, key and Lua script;
- ``ownership``: rendezvous hashing, who should run a stream;
- ``node``: membership, the stream registry, leases, which streams run here;
- ``events``: events through Redis Streams, written by a stream's owner, read by any gateway.

Absent ``cluster.redis_url`` none of this is created and the gateway runs on its own.
"""

from __future__ import annotations

from gateway.cluster.events import EventHub, EventLog
from gateway.cluster.node import ClusterNode, NodeState
from gateway.cluster.store import RedisStore
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.schema import SHUTTING_DOWN
from gateway.streams.manager import StreamManager


class Cluster:
    """The cluster's parts, created in the lifespan and stopped in reverse order."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.store = RedisStore(settings.cluster)
        self.log = EventLog(self.store, settings.cluster.events_maxlen)
        self._node: ClusterNode | None = None
        self._hub: EventHub | None = None

    def attach(self, manager: StreamManager) -> ClusterNode:
        """Bind to the stream manager (which was given ``self.log.append``); the node the API uses."""
        self._hub = EventHub(
            self.store,
            queue_size=self._settings.ingest.subscriber_queue,
            resume_limit=self._settings.cluster.events_maxlen,
            local=manager.broadcaster_of,
        )
        self._node = ClusterNode(
            self._settings, self.store, manager, log_=self.log, hub=self._hub, metrics=self._metrics
        )
        self._metrics.watch_cluster(self._node.stats)
        return self._node

    @property
    def node(self) -> ClusterNode:
        assert self._node is not None, "attach() first"
        return self._node

    @property
    def hub(self) -> EventHub:
        assert self._hub is not None, "attach() first"
        return self._hub

    async def start(self) -> None:
        self.log.start()
        self.hub.start()
        await self.node.start()

    def drain(self) -> None:
        """SIGTERM: the streams run here announce that they move; this gateway's subscribers get a
        last ``shutting_down`` status and the end of their responses (they reconnect elsewhere)."""
        self.node.drain()
        self.hub.drain(SHUTTING_DOWN)

    async def stop(self) -> None:
        """Idempotent: the node leaves (its streams stop, their leases go back), then the reader,
        then the writer sends what is queued, then the connections close."""
        if self._node is not None:
            await self._node.stop()
        if self._hub is not None:
            await self._hub.stop()
        await self.log.stop()
        await self.store.close()


__all__ = ["Cluster", "ClusterNode", "EventHub", "EventLog", "NodeState", "RedisStore"]
