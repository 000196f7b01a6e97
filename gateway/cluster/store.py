"""Every Redis command of cluster mode, in one place: the keys, the Lua scripts, the
translation of redis-py's errors into ``ClusterUnavailable``.

Keys (``<p>`` is ``cluster.key_prefix``); a single Redis primary, not Redis Cluster
(the scripts touch several keys):

- ``<p>:members``          hash  node id -> lease expiry (Redis server time, ms)
- ``<p>:epoch``            string  set once per Redis dataset: a new one means Redis lost its data
- ``<p>:streams``          hash  stream id -> its ``StreamConfig`` as JSON (the registry)
- ``<p>:streams:v``        counter  bumped by every registry change (nodes re-read the hash then)
- ``<p>:lease:<stream>``   string  the owner's node id, with a TTL of ``lease_s``
- ``<p>:info``             hash  stream id -> ``StreamInfo`` JSON, written by the owner every tick
- ``<p>:status``           hash  stream id -> the stream's last status event (id and JSON)
- ``<p>:events:<stream>``  Redis Stream  the stream's events, entry id = SSE event id (``<run>-<seq>``)

Times that decide ownership (member and lease expiry) are Redis' own clock (``TIME``,
``PX``), so the gateways' clocks never have to agree.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway.config import ClusterSettings, StreamConfig
from gateway.errors import ClusterUnavailable

T = TypeVar("T")

# Heartbeat: renew this node's membership, drop expired members, and read what every tick needs
# (server time, the registry version, the dataset epoch) in one round trip.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > now then table.insert(live, all[i]) else redis.call('HDEL', KEYS[1], all[i]) end
end
local version = redis.call('GET', KEYS[2]) or ''
local epoch = redis.call('GET', KEYS[3])
if not epoch then epoch = ARGV[3]; redis.call('SET', KEYS[3], epoch) end
return {now, version, epoch, live}
"""

# Claim (acquire or renew) leases: held by us -> renewed; free -> taken; another's -> refused.
_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2]); out[i] = 1
  elseif not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2]); out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# Release leases we hold (a stream handed over, or the node leaving).
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key); n = n + 1 end
end
return n
"""

# Registry: add one stream unless its id exists; remove one; add many unless they exist (re-seeding).
_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1
"""
_REMOVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""
_SEED = """
local added = 0
for i = 1, #ARGV, 2 do added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
if added > 0 then redis.call('INCR', KEYS[2]) end
return added
"""


@dataclass(frozen=True)
class Beat:
    """What one heartbeat read."""

    now_ms: int  # Redis' clock
    version: str  # the registry's version ('' before the first change)
    epoch: str  # the dataset's id: a new one means Redis restarted without its data
    members: tuple[str, ...]


@dataclass(frozen=True)
class StoredEvent:
    id: str  # '<run>-<seq>', the Redis Stream entry id
    kind: str  # 'prediction' or 'status'
    data: str  # the event as JSON


@dataclass(frozen=True)
class Outgoing:
    """One event for its stream's Redis Stream (status events also update ``<p>:status``)."""

    stream: str
    id: str
    kind: str
    data: str


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RedisStore:
    """One ``redis.asyncio`` client (a connection pool) for the life of the app."""

    def __init__(self, settings: ClusterSettings) -> None:
        assert settings.redis_url is not None
        self._settings = settings
        p = settings.key_prefix
        self.k_members, self.k_epoch = f"{p}:members", f"{p}:epoch"
        self.k_streams, self.k_version = f"{p}:streams", f"{p}:streams:v"
        self.k_info, self.k_status = f"{p}:info", f"{p}:status"
        self._p = p
        timeout = settings.op_timeout_s
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=64,
        )
        # Blocking reads (XREAD BLOCK) get their own pool: they must not starve the commands.
        self._blocking: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=timeout + self.block_ms / 1000,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            max_connections=4,
        )
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._add = self._redis.register_script(_ADD)
        self._remove = self._redis.register_script(_REMOVE)
        self._seed = self._redis.register_script(_SEED)

    @property
    def block_ms(self) -> int:
        """How long one XREAD waits for new events."""
        return int(min(500, self._settings.op_timeout_s * 500))

    def lease_key(self, sid: str) -> str:
        return f"{self._p}:lease:{sid}"

    def events_key(self, sid: str) -> str:
        return f"{self._p}:events:{sid}"

    async def close(self) -> None:
        await self._redis.aclose()
        await self._blocking.aclose()

    async def _do(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except RedisError as e:  # connection refused or reset, timeout, a server error
            raise ClusterUnavailable(f"Redis did not answer ({what}): {type(e).__name__}: {e}") from e
        except OSError as e:
            raise ClusterUnavailable(f"Redis did not answer ({what}): {e}") from e

    # --- membership ---------------------------------------------------------------------------

    async def heartbeat(self, node: str, lease_ms: int) -> Beat:
        keys = [self.k_members, self.k_version, self.k_epoch]
        # a fresh candidate every time: a Redis that comes back empty gets a new epoch, whoever sets it
        candidate = secrets.token_hex(8)
        now, version, epoch, live = await self._do(
            "heartbeat", self._heartbeat(keys=keys, args=[node, lease_ms, candidate])
        )
        return Beat(int(now), _text(version), _text(epoch), tuple(sorted(_text(m) for m in live)))

    async def leave(self, node: str) -> None:
        await self._do("leave", self._redis.hdel(self.k_members, node))

    # --- leases -------------------------------------------------------------------------------

    async def claim(self, node: str, sids: Sequence[str], lease_ms: int) -> dict[str, bool]:
        """Acquire or renew the leases of ``sids``: which ones this node holds now."""
        if not sids:
            return {}
        held = await self._do("lease", self._claim(keys=[self.lease_key(s) for s in sids], args=[node, lease_ms]))
        return {sid: bool(int(h)) for sid, h in zip(sids, held, strict=True)}

    async def release(self, node: str, sids: Iterable[str]) -> int:
        keys = [self.lease_key(s) for s in sids]
        if not keys:
            return 0
        return int(await self._do("release", self._release(keys=keys, args=[node])))

    async def holders(self, sids: Sequence[str]) -> dict[str, str | None]:
        if not sids:
            return {}
        values = await self._do("leases", self._redis.mget([self.lease_key(s) for s in sids]))
        return {sid: None if v is None else _text(v) for sid, v in zip(sids, values, strict=True)}

    # --- registry -----------------------------------------------------------------------------

    async def streams(self) -> dict[str, StreamConfig]:
        raw = await self._do("registry", self._redis.hgetall(self.k_streams))
        return {_text(k): StreamConfig.model_validate_json(v) for k, v in raw.items()}

    async def add(self, config: StreamConfig) -> bool:
        """False if a stream with that id is registered already."""
        keys = [self.k_streams, self.k_version]
        return bool(await self._do("add stream", self._add(keys=keys, args=[config.id, config.model_dump_json()])))

    async def remove(self, sid: str) -> bool:
        keys = [self.k_streams, self.k_version, self.k_info, self.k_status]
        removed = bool(await self._do("remove stream", self._remove(keys=keys, args=[sid])))
        if removed:  # its events stay for resume_s-like grace, then go
            await self._do("expire events", self._redis.expire(self.events_key(sid), 3600))
        return removed

    async def seed(self, configs: Iterable[StreamConfig]) -> int:
        """Register every stream not registered yet (start-up, or Redis came back without its data)."""
        args: list[str] = []
        for c in configs:
            args += [c.id, c.model_dump_json()]
        if not args:
            return 0
        return int(await self._do("seed registry", self._seed(keys=[self.k_streams, self.k_version], args=args)))

    # --- stream descriptions --------------------------------------------------------------------

    async def put_info(self, rows: Mapping[str, str]) -> None:
        if rows:
            mapping: Any = dict(rows)
            await self._do("stream info", self._redis.hset(self.k_info, mapping=mapping))

    async def drop_info(self, sids: Iterable[str]) -> None:
        sids = list(sids)
        if sids:
            await self._do("stream info", self._redis.hdel(self.k_info, *sids))

    async def infos(self) -> dict[str, str]:
        raw = await self._do("stream info", self._redis.hgetall(self.k_info))
        return {_text(k): _text(v) for k, v in raw.items()}

    # --- frames for viewers on other gateways --------------------------------------------------

    def _frame_key(self, sid: str) -> str:
        return f"{self._p}:frame:{sid}"

    def _wanted_key(self, sid: str) -> str:
        return f"{self._p}:frame-wanted:{sid}"

    async def want_frame(self, sid: str, ttl_ms: int) -> tuple[bytes, int, float] | None:
        """Ask the stream's owner for its frames for ``ttl_ms``; the latest one it shared, if any."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._wanted_key(sid), b"1", px=ttl_ms)
        pipe.hgetall(self._frame_key(sid))
        _, raw = await self._do("frame", pipe.execute())
        if not raw or b"d" not in raw:
            return None
        return bytes(raw[b"d"]), int(raw[b"f"]), float(raw[b"t"])

    async def frames_wanted(self, sids: Sequence[str]) -> list[str]:
        if not sids:
            return []
        flags = await self._do("frames wanted", self._redis.mget([self._wanted_key(s) for s in sids]))
        return [sid for sid, flag in zip(sids, flags, strict=True) if flag is not None]

    async def put_frames(self, frames: Mapping[str, tuple[bytes, int, float]], ttl_ms: int) -> None:
        if not frames:
            return
        pipe = self._redis.pipeline(transaction=False)
        for sid, (data, frame, at) in frames.items():
            mapping: Any = {"d": data, "f": frame, "t": repr(at)}
            pipe.hset(self._frame_key(sid), mapping=mapping)
            pipe.pexpire(self._frame_key(sid), ttl_ms)
        await self._do("share frames", pipe.execute())

    # --- events ---------------------------------------------------------------------------------

    async def append(self, events: Sequence[Outgoing], maxlen: int) -> list[bool]:
        """XADD each event with its own id (one round trip).  False for an event Redis refused
        (an id not above the stream's last: a stale owner); a connection error raises."""
        pipe = self._redis.pipeline(transaction=False)
        for e in events:
            pipe.xadd(self.events_key(e.stream), {"k": e.kind, "d": e.data}, id=e.id, maxlen=maxlen, approximate=True)
            if e.kind == "status":
                pipe.hset(self.k_status, e.stream, f"{e.id}\n{e.data}")  # an id has no newline
        results = await self._do("append events", pipe.execute(raise_on_error=False))
        out: list[bool] = []
        i = 0
        for e in events:
            r = results[i]
            if isinstance(r, ResponseError):
                out.append(False)
            elif isinstance(r, Exception):
                raise ClusterUnavailable(f"Redis did not answer (append events): {r}") from r
            else:
                out.append(True)
            i += 2 if e.kind == "status" else 1
        return out

    async def last_event_id(self, sid: str) -> str | None:
        rows = await self._do("last event", self._redis.xrevrange(self.events_key(sid), count=1))
        return _text(rows[0][0]) if rows else None

    async def first_event_id(self, sid: str) -> str | None:
        rows = await self._do("first event", self._redis.xrange(self.events_key(sid), count=1))
        return _text(rows[0][0]) if rows else None

    async def events_after(self, sid: str, after: str, count: int) -> list[StoredEvent]:
        rows: Any = await self._do(
            "read events", self._redis.xrange(self.events_key(sid), min=f"({after}", count=count)
        )
        return [_stored(i, f) for i, f in rows]

    async def status_of(self, sid: str) -> StoredEvent | None:
        raw = await self._do("status", self._redis.hget(self.k_status, sid))
        return None if raw is None else _status(raw)

    async def statuses(self) -> list[StoredEvent]:
        raw = await self._do("statuses", self._redis.hgetall(self.k_status))
        return [_status(v) for v in raw.values()]

    async def read(self, positions: Mapping[str, str], count: int) -> dict[str, list[StoredEvent]]:
        """XREAD BLOCK: new events of these streams after their positions (waits up to ``block_ms``)."""
        if not positions:
            return {}
        keys: Any = {self.events_key(sid): pos for sid, pos in positions.items()}
        prefix = len(self._p) + len(":events:")
        rows: Any = await self._do("read events", self._blocking.xread(keys, count=count, block=self.block_ms))
        return {_text(key)[prefix:]: [_stored(i, f) for i, f in entries] for key, entries in rows or []}


def _status(raw: Any) -> StoredEvent:
    ident, _, data = _text(raw).partition("\n")
    return StoredEvent(ident, "status", data)


def _stored(ident: Any, fields: Mapping[Any, Any]) -> StoredEvent:
    kind = fields.get(b"k", fields.get("k", b"prediction"))
    data = fields.get(b"d", fields.get("d", b""))
    return StoredEvent(_text(ident), _text(kind), _text(data))
