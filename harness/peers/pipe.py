"""A camera behind a pipe: an MPEG-TS H.264 stream written into a FIFO at its own frame
rate, by a writer that can pause (the source goes silent without closing) and resume.

The gateway reads the FIFO as a file source.  No decoder timeout covers a pipe: a
paused writer leaves the reader blocked in ``read()``, which only the watchdog notices.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path


class PipeCamera:
    """``start()``, ``pause()``, ``resume()``, ``stop()``; the stream loops until stopped."""

    def __init__(self, fifo: Path, ts: bytes, seconds: float, *, chunks_per_s: int = 10) -> None:
        self.fifo = fifo
        self._ts = ts
        self._chunk = max(188, len(ts) // max(1, int(seconds * chunks_per_s)))  # whole TS packets
        self._chunk -= self._chunk % 188
        self._period = 1.0 / chunks_per_s
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipe-camera", daemon=True)
        self.bytes_written = 0
        os.mkfifo(fifo)

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(10)
        self.fifo.unlink(missing_ok=True)

    def _open(self) -> int | None:
        """The write end, once a reader has opened the FIFO (polled, so stop() is never stuck)."""
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                time.sleep(0.05)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _run(self) -> None:
        fd = self._open()
        if fd is None:
            return
        try:
            while not self._stop.is_set():
                for i in range(0, len(self._ts), self._chunk):
                    self._running.wait()
                    if self._stop.is_set():
                        return
                    os.write(fd, self._ts[i : i + self._chunk])
                    self.bytes_written += len(self._ts[i : i + self._chunk])
                    self._stop.wait(self._period)
        except BrokenPipeError:
            pass  # the reader went away
        finally:
            os.close(fd)
