"""Closed-loop load: N workers (threads or coroutines) repeat one request until time is up.

Load runs without a pause from warm-up into the measured interval; only requests
started inside the interval count.  ``on_start`` runs when the interval begins
(CPU meters, Triton statistics), so every counter covers the same span.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Load:
    concurrency: int
    warmup: float  # seconds of load before the measured interval
    duration: float  # measured seconds


@dataclass
class LoopResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    elapsed: float = 0.0

    def record(self, started: float, t_start: float, ok: bool, error: BaseException | None) -> None:
        if started < t_start:
            return
        if ok:
            self.latencies.append(time.perf_counter() - started)
        else:
            self.errors += 1
            if self.first_error is None:
                self.first_error = repr(error)


def run_threads(work: Callable[[int], None], load: Load, on_start: Callable[[], None]) -> LoopResult:
    """``work(worker_index)`` in ``load.concurrency`` threads; exceptions count as errors."""
    result = LoopResult()
    lock = threading.Lock()
    t_start = time.perf_counter() + load.warmup
    t_end = t_start + load.duration

    def worker(i: int) -> None:
        while (started := time.perf_counter()) < t_end:
            error: BaseException | None = None
            try:
                work(i)
            except Exception as e:  # counted and reported
                error = e
            with lock:
                result.record(started, t_start, error is None, error)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(load.concurrency)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t_start - time.perf_counter()))
    on_start()
    for t in threads:
        t.join()
    result.elapsed = time.perf_counter() - t_start
    return result


async def run_async(work: Callable[[], Awaitable[object]], load: Load, on_start: Callable[[], None]) -> LoopResult:
    """``await work()`` in ``load.concurrency`` coroutines on the running loop."""
    result = LoopResult()
    t_start = time.perf_counter() + load.warmup
    t_end = t_start + load.duration

    async def worker() -> None:
        while (started := time.perf_counter()) < t_end:
            try:
                await work()
            except Exception as e:  # counted and reported
                result.record(started, t_start, False, e)
            else:
                result.record(started, t_start, True, None)

    tasks = [asyncio.create_task(worker()) for _ in range(load.concurrency)]
    await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
    on_start()
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - t_start
    return result
