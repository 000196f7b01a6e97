"""moto's S3 server (``moto[server]``) in this process on a loopback port: a real S3
endpoint for the capture tests and the capture benchmark."""

from __future__ import annotations

import logging

from moto.server import ThreadedMotoServer

from harness.helpers import free_port


class S3Server:
    """stop() and start() keep its buckets and objects (moto's state is in-process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
