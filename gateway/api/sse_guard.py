"""Drop SSE subscribers that stopped reading, within seconds, from the socket's TCP state.

A client that connects and never reads is invisible to the application: its events
are written into the kernel, which ACKs them into the client's receive buffer and
then queues them in the server's send buffer (``tcp_wmem`` up to 4 MiB here).  At
~1.2 KB/s of events that absorbs close to an hour before a send blocks and the SSE
send timeout can fire (measured: 20 frozen clients of 200 were all still subscribed
after 40 s, one alone still after 90 s with 98,901 bytes queued).

The guard reads ``TCP_INFO`` of each subscriber's socket once a second: the bytes
written to it (``bytes_sent - bytes_retrans + notsent_bytes``, plus what the event loop
still buffers), the bytes its kernel acknowledged (``bytes_acked``), and the receive
window it advertises (``snd_wnd``), which shrinks as data sits unread in its buffer
and reopens when the client reads (Linux never moves a window's right edge back).
Over the last ``max_lag_s``, a reader that keeps up leaves at most its last event
unread; a frozen one leaves everything: first its window shrinks, then, once it is
shut, our send queue grows.  A subscriber that left unread at least ``BEHIND_SHARE``
of what was written to it over ``max_lag_s`` (and more than ``slack`` bytes now) is
aborted: the connection is reset, the response ends, the subscription goes, and
``streamml_sse_dropped_total{reason="frozen"}`` counts it.  Kernels before 5.4 lack
``snd_wnd`` in ``TCP_INFO``; there, and for servers that do not pass the transport
(``gateway.api.transport``), only the SSE send timeout applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from gateway.metrics import Metrics

log = logging.getLogger(__name__)

# struct tcp_info (linux/tcp.h) offsets, stable since they were appended
_BYTES_ACKED = 120  # u64, 4.1
_NOTSENT = 144  # u32, 4.6
_BYTES_SENT = 200  # u64, 4.19
_BYTES_RETRANS = 208  # u64, 4.19
_SND_WND = 228  # u32, 5.4
_TCP_INFO_LEN = 232
BEHIND_SHARE = 0.4  # of the bytes written over the last max_lag_s, left unread: the client stopped reading
TRANSPORT_KEY = "stream_ml.transport"  # scope["extensions"] entry set by gateway.api.transport


@dataclass(frozen=True)
class TcpProgress:
    written: int  # bytes the kernel took from the application
    acked: int  # bytes the client's kernel acknowledged
    window: int  # the client's advertised receive window now


def tcp_progress(sock: Any) -> TcpProgress | None:
    """The counters of a connected TCP socket, or None where the kernel lacks them."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_LEN:
        return None
    (acked,) = struct.unpack_from("Q", raw, _BYTES_ACKED)
    (notsent,) = struct.unpack_from("I", raw, _NOTSENT)
    sent, retrans = struct.unpack_from("QQ", raw, _BYTES_SENT)
    (window,) = struct.unpack_from("I", raw, _SND_WND)
    return TcpProgress(written=sent - retrans + notsent, acked=acked, window=window)


@dataclass(frozen=True)
class _Sample:
    at: float
    written: int  # bytes the application wrote (the kernel's and the event loop's)
    queued: int  # written but not acknowledged: in our send queue
    deficit: int  # how far the client's advertised window has shrunk: unread in its receive buffer


@dataclass(eq=False)
class Watched:
    transport: asyncio.WriteTransport
    stream: str
    history: deque[_Sample] = field(default_factory=deque)
    max_window: int = 0
    dropped: bool = False

    def falling_behind(self, now: float, progress: TcpProgress, lag_s: float, slack: int) -> bool:
        """Whether, over the last ``lag_s``, the client left unread more than ``BEHIND_SHARE`` of
        what was written to it (and more than ``slack`` bytes are unread now).  A reader that
        keeps up leaves at most its last event unread whatever the rate; a frozen one leaves
        everything (its window shrinks by ~0.65 of each byte on Linux, the rest is kernel
        overhead), and once its window is shut, our send queue grows instead."""
        written = progress.written + self.transport.get_write_buffer_size()
        self.max_window = max(self.max_window, progress.window)
        now_sample = _Sample(now, written, written - progress.acked, self.max_window - progress.window)
        self.history.append(now_sample)
        while len(self.history) > 1 and self.history[1].at <= now - lag_s:
            self.history.popleft()
        old = self.history[0]
        if old.at > now - lag_s:
            return False  # not watched for lag_s yet
        sent = written - old.written
        behind = (now_sample.deficit - old.deficit) + (now_sample.queued - old.queued)
        return sent > 0 and behind >= BEHIND_SHARE * sent and now_sample.deficit + now_sample.queued > slack


class SseGuard:
    """Owned by the lifespan: ``watch`` each SSE response's transport, ``run`` checks them."""

    def __init__(self, metrics: Metrics, max_lag_s: float, *, poll_s: float = 1.0, slack: int = 2048) -> None:
        self._metrics = metrics
        self.max_lag_s = max_lag_s
        self.poll_s = poll_s
        self.slack = slack
        self._watched: set[Watched] = set()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, scope: MutableMapping[str, Any], stream: str) -> Watched | None:
        transport = scope.get("extensions", {}).get(TRANSPORT_KEY)
        if transport is None or tcp_progress(transport.get_extra_info("socket")) is None:
            return None
        watched = Watched(transport, stream)
        self._watched.add(watched)
        return watched

    def unwatch(self, watched: Watched | None) -> None:
        if watched is not None:
            self._watched.discard(watched)

    def check(self, now: float | None = None) -> int:
        """One round: abort every subscriber that fell ``max_lag_s`` behind; how many."""
        now = time.monotonic() if now is None else now
        dropped = 0
        for w in list(self._watched):
            sock = w.transport.get_extra_info("socket")
            progress = tcp_progress(sock) if sock is not None and not w.transport.is_closing() else None
            if progress is None:
                self._watched.discard(w)
                continue
            if w.falling_behind(now, progress, self.max_lag_s, self.slack):
                peer = w.transport.get_extra_info("peername")
                log.warning(
                    "SSE subscriber %s of stream %s left most of the last %gs unread: dropped",
                    peer,
                    w.stream,
                    self.max_lag_s,
                )
                w.dropped = True
                self._watched.discard(w)
                self._metrics.sse_dropped.labels("frozen").inc()
                w.transport.abort()
                dropped += 1
        return dropped

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                self.check()
            except Exception:  # never let the guard die: log, go on
                log.exception("SSE guard round failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sse-guard")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watched.clear()
