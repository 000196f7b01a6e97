"""Graceful shutdown: notice the server's exit signal before it waits for open connections.

On SIGTERM uvicorn stops accepting connections, then waits (``server.graceful_shutdown_s``)
for the open ones to finish before the lifespan's shutdown runs.  SSE responses never
finish on their own, so the gateway must end them first, cleanly: ``watch`` sees the
signal (sse-starlette's flag, which it sets from uvicorn's exit handler, or uvicorn's
own ``should_exit`` found through its signal handler) and calls ``on_exit`` once, which
turns readiness to 503 and gives every SSE subscriber a final ``status`` event
(``shutting_down``) and the end of its response.  Requests in flight finish.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from sse_starlette.sse import AppStatus


def exit_requested() -> bool:
    if AppStatus.should_exit:
        return True
    handler = signal.getsignal(signal.SIGTERM)  # uvicorn's handle_exit, a bound method of its Server
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


async def watch(on_exit: Callable[[], None], poll_s: float = 0.05) -> None:
    """Call ``on_exit`` once the server is asked to exit; cancelled at the end of the lifespan."""
    while not exit_requested():  # noqa: ASYNC110 - a flag set by a signal handler, not an event to await
        await asyncio.sleep(poll_s)
    on_exit()
