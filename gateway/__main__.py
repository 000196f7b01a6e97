"""``python -m gateway``: load the settings (fail fast), then serve with uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from gateway.api.transport import TransportAwareProtocol
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.main import LOG_FORMAT, create_app


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    level = settings.server.log_level.upper()
    logging.basicConfig(level=level, format=LOG_FORMAT)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=settings.server.graceful_shutdown_s,
        http=TransportAwareProtocol,  # the SSE guard reads each subscriber's TCP state
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
