"""Admission control of POST /predict: a bounded number in flight, a bounded queue, fast 503s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import MutableMapping
from typing import Any

from gateway.api.admission import Admission
from gateway.config import AdmissionSettings
from gateway.metrics import Metrics


def scope(path: str = "/predict", method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": method, "headers": [], "query_string": b""}


async def call(gate: Admission, s: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any], float]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    t0 = time.monotonic()
    await gate(s, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, json.loads(body) if body else {}, time.monotonic() - t0


async def settle() -> None:
    """Let every task run until it blocks (no clock involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


def gate(hold: asyncio.Event, **settings: Any) -> tuple[Admission, list[int]]:
    running: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        running.append(1)
        await hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return Admission(app, AdmissionSettings(**settings), Metrics()), running


def test_beyond_slots_and_queue_requests_are_refused_at_once() -> None:
    async def run() -> list[tuple[int, dict[str, str], dict[str, Any], float]]:
        hold = asyncio.Event()
        admission, running = gate(hold, max_in_flight=2, max_queue=1, queue_timeout_s=5, retry_after_s=3)
        tasks = [asyncio.create_task(call(admission, scope())) for _ in range(5)]
        await settle()
        assert len(running) == 2, "two slots: two requests run"
        refused = [t for t in tasks if t.done()]
        assert len(refused) == 2, "two over slots + queue are answered without waiting"
        assert admission.in_flight == 2 and admission.queued == 1
        hold.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    codes = sorted(r[0] for r in results)
    assert codes == [200, 200, 200, 503, 503], codes
    for status, headers, body, elapsed in results:
        if status == 503:
            assert headers["retry-after"] == "3" and body["error"]["code"] == "overloaded"
            assert elapsed < 0.5


def test_a_request_that_waits_past_the_queue_timeout_is_refused() -> None:
    async def run() -> tuple[int, dict[str, str], dict[str, Any], float]:
        hold = asyncio.Event()
        admission, running = gate(hold, max_in_flight=1, max_queue=4, queue_timeout_s=0.2)
        first = asyncio.create_task(call(admission, scope()))
        await settle()
        assert running
        late = await call(admission, scope())
        hold.set()
        await first
        assert admission.queued == 0 and admission.in_flight == 0, "the counts return to zero"
        return late

    status, _, body, elapsed = asyncio.run(run())
    assert status == 503 and body["error"]["code"] == "overloaded"
    assert 0.2 <= elapsed < 1.0, f"refused after {elapsed:.2f}s; queue_timeout_s is 0.2"


def test_other_routes_are_not_admitted() -> None:
    async def run() -> int:
        hold = asyncio.Event()
        hold.set()
        admission, _ = gate(hold, max_in_flight=1, max_queue=0)
        return (await call(admission, scope("/health", "GET")))[0]

    assert asyncio.run(run()) == 200
