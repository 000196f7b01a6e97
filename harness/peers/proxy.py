"""A TCP relay on loopback that can cut every connection through it, to take a real client's
network away from a real server (the browser's connection to the gateway) and give it back.

``cut()`` resets every open connection and refuses new ones (accepted, then reset) until
``restore()``.  The server behind it never notices anything but its clients leaving.
``delay_s`` holds what the server sends back that long, from the first reply that contains
``delay_after`` on (from the start if empty): a network with a known delay, e.g. an RTSP
camera whose frames and RTCP reports arrive late once it plays (``delay_after=b"RTP-Info"``,
so that the setup is not slowed as well).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv() on it (close alone would not)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    def __init__(
        self, target_port: int, host: str = "127.0.0.1", *, delay_s: float = 0.0, delay_after: bytes = b""
    ) -> None:
        self._target = (host, target_port)
        self._delay_s = delay_s
        self._delay_after = delay_after
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refusing = False
        self._stopped = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        with self._lock:
            self._refusing = True
            sockets, self._open = self._open, set()
        for s in sockets:
            _reset(s)

    def restore(self) -> None:
        with self._lock:
            self._refusing = False

    def stop(self) -> None:
        self._stopped.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                refusing = self._refusing  # cut() may have run while this one was connecting
                if not refusing:
                    self._open.update((client, upstream))
                    self.accepted += 1
            if refusing:
                _reset(client)
                _reset(upstream)
                continue
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            back = self._delayed_pump if self._delay_s > 0 else self._pump
            threading.Thread(target=back, args=(upstream, client), daemon=True).start()

    def _delayed_pump(self, src: socket.socket, dst: socket.socket) -> None:
        """``_pump`` through a queue: each chunk is sent ``delay_s`` after it was received."""
        chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def send() -> None:
            while True:
                due, data = chunks.get()
                if not data:
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    dst.sendall(data)
                except OSError:
                    return

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        delaying = not self._delay_after
        try:
            while data := src.recv(65536):
                chunks.put((time.monotonic() + (self._delay_s if delaying else 0.0), data))
                delaying = delaying or self._delay_after in data
        except OSError:
            pass
        chunks.put((0.0, b""))
        sender.join(self._delay_s + 5)
        self._pump_closed(src, dst)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._pump_closed(src, dst)

    def _pump_closed(self, src: socket.socket, dst: socket.socket) -> None:
        with self._lock:
            self._open.discard(src)
            self._open.discard(dst)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
