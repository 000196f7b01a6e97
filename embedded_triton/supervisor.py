"""Supervise the embedded ``tritonserver`` and the command that uses it (``make run``).

A server that exits on its own is started again, after a backoff that doubles, as
long as the restart budget allows (``max_restarts`` within ``window_s``); the
command (the gateway) keeps running throughout and sees Triton as unavailable,
then back.  Only an exhausted budget, the command's exit, or SIGINT/SIGTERM/SIGHUP
ends the loop, and every ending stops both.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from embedded_triton.server import EmbeddedTriton, TritonStartError, die_with_parent

log = logging.getLogger(__name__)


@dataclass
class RestartBudget:
    """At most ``max_restarts`` restarts in any ``window_s``; the delay before each one doubles
    from ``backoff_initial_s`` up to ``backoff_max_s``, and starts over once the server has run
    for ``window_s`` without a restart."""

    max_restarts: int = 5
    window_s: float = 300.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    _times: deque[float] = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0 or self.backoff_initial_s < 0:
            raise ValueError("max_restarts >= 0, window_s > 0 and backoff_initial_s >= 0 are required")

    def next_delay(self, now: float) -> float | None:
        """Record a restart at ``now`` and return how long to wait before it; None when the
        budget is spent (more than ``max_restarts`` in the window)."""
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return None
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** len(self._times))
        self._times.append(now)
        return delay

    @property
    def recent(self) -> int:
        return len(self._times)


def _terminate(child: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
    return child.wait()


def _exit_status(code: int) -> int:
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


class Supervisor:
    """Owns the server's restarts and the command's process; ``run()`` blocks until the end."""

    def __init__(
        self,
        server: EmbeddedTriton,
        ready_timeout: float,
        command: list[str] | None = None,
        budget: RestartBudget | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.server = server
        self.ready_timeout = ready_timeout
        self.command = command or []
        self.budget = budget or RestartBudget()
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def _announce(self) -> None:
        s = self.server
        print(
            f"triton ready: grpc {s.grpc_url}  http {s.http_url}  metrics {s.metrics_url}  (log: {s.log_path})",
            flush=True,
        )

    def _start_command(self) -> None:
        env = dict(os.environ)
        env.setdefault("APP_TRITON__URL", self.server.grpc_url)
        self.child = subprocess.Popen(self.command, env=env, preexec_fn=die_with_parent)  # noqa: PLW1509

    def _recover(self, code: int) -> int | None:
        """Restart a server that exited with ``code``; an exit status for ``run`` when it cannot."""
        while not self.stop_event.is_set():
            delay = self.budget.next_delay(time.monotonic())
            if delay is None:
                print(
                    f"tritonserver exited (code {code}) and the restart budget is spent "
                    f"({self.budget.max_restarts} restarts in {self.budget.window_s:g}s); giving up:\n"
                    f"{self.server.log_tail()}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            log.warning(
                "tritonserver exited unexpectedly (code %s); restart %d of %d allowed in %gs, in %.1fs",
                code,
                self.budget.recent,
                self.budget.max_restarts,
                self.budget.window_s,
                delay,
            )
            if self.stop_event.wait(delay):
                return None
            self.server.restart()
            try:
                if not self.server.wait_ready(self.ready_timeout, cancel=self.stop_event):
                    return None  # asked to stop meanwhile
            except TritonStartError as e:
                log.error("restarted tritonserver did not become ready: %s", str(e).splitlines()[0])
                code = self.server.exit_code() or -1
                continue
            log.warning("tritonserver is back after restart %d", self.server.restarts)
            self._announce()
            return None
        return None

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: self.stop_event.set())
        try:
            self.server.start()
            if not self.server.wait_ready(self.ready_timeout, cancel=self.stop_event):
                return 0
            self._announce()
            if self.command:
                self._start_command()
            while not self.stop_event.wait(self.poll_s):
                if self.child is not None and self.child.poll() is not None:
                    return _exit_status(self.child.returncode)
                code = self.server.exit_code()
                if code is not None:
                    status = self._recover(code)
                    if status is not None:
                        return status
            return 0  # asked to stop (Ctrl-C, SIGTERM): a clean exit
        except TritonStartError as e:
            print(f"embedded triton failed: {e}", file=sys.stderr)
            return 1
        finally:
            # The command first (the gateway drains its clients while Triton still answers), then Triton.
            if self.child is not None:
                _terminate(self.child)
            self.server.stop()


def main_loop(
    server: EmbeddedTriton, ready_timeout: float, command: list[str] | None = None, budget: RestartBudget | None = None
) -> int:
    """Run until SIGINT/SIGTERM, the command exits, or the server's restart budget is spent."""
    return Supervisor(server, ready_timeout, command, budget).run()
