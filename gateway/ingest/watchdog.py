"""The watchdog owns one thread that checks every watched reader, frigate-style:
``while not stop.wait(interval)``.

A running reader whose source delivered no frame for longer than its read
timeout is marked ``stalled`` (a status event, a counted stall).  If the stall
lasts another read timeout, the reader is restarted on a fresh thread.  This covers
what no decoder timeout does: a pipe whose writer paused, a webcam driver that
stopped answering, a decoder wedged for any reason.  A network source's own read
timeout fails its read at about the same moment, and the reader reconnects by
itself, so the restart is for readers that cannot.  A pipe is never reopened (see
``StreamReader``): it stays ``stalled`` until its writer resumes, then ``running``.

One thread for all streams, not one per camera: a gateway runs hundreds.
"""

from __future__ import annotations

import logging
import threading
import time

from gateway.ingest.reader import StreamReader, StreamState

log = logging.getLogger(__name__)


class Watchdog:
    """``start()`` / ``stop()`` (idempotent); ``watch`` and ``unwatch`` at any time."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._readers: dict[int, StreamReader] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, reader: StreamReader) -> None:
        with self._lock:
            self._readers[id(reader)] = reader

    def unwatch(self, reader: StreamReader) -> None:
        with self._lock:
            self._readers.pop(id(reader), None)

    def start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)

    def check(self, now: float | None = None) -> None:
        """One pass over every reader (the thread calls it every ``interval_s``)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            readers = list(self._readers.values())
        for reader in readers:
            try:
                self._check(reader, now)
            except Exception:  # one reader's trouble never stops the watchdog
                log.exception("watchdog: checking stream %s failed", reader.stream_id)

    def _check(self, reader: StreamReader, now: float) -> None:
        silence = reader.stats.silence(now)
        limit = reader.config.read_timeout_s
        if silence is None or silence <= limit:
            return
        reason = f"no frame for {silence:.1f}s (read timeout {limit:g}s)"
        if reader.state is StreamState.RUNNING:
            if reader.mark_stalled(reason) and not reader.spec.reopenable:
                log.warning("stream %s: stalled; a pipe is not reopened, waiting for its writer", reader.stream_id)
        elif reader.state is StreamState.STALLED and silence > 2 * limit:
            reader.restart(f"still {reason}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()
