"""The model catalog's reads, version switches and invalidation, with the Triton client patched."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from unittest.mock import AsyncMock

import pytest

from gateway.config import Settings
from gateway.errors import InferenceFailed, InferenceUnavailable, ModelNotFound
from gateway.inference.catalog import ModelCatalog
from gateway.inference.client import TritonClient
from gateway.inference.model import ModelInfo

V1 = ModelInfo(
    name="m",
    version="1",
    task="classification",
    input_name="input",
    input_datatype="UINT8",
    input_shape=(3, 224, 224),
    output_name="probabilities",
    num_classes=1000,
    max_batch_size=16,
    instance_kinds=("CPU",),
)
V2 = replace(V1, version="2", num_classes=3)


def patched(facts: Callable[[str, str], ModelInfo], delay: float = 0.0) -> AsyncMock:
    """A TritonClient whose model_info answers ``facts(name, version)`` after ``delay`` seconds."""
    client = AsyncMock(spec=TritonClient)

    async def model_info(name: str, version: str = "") -> ModelInfo:
        await asyncio.sleep(delay)
        return facts(name, version)

    client.model_info.side_effect = model_info
    return client


def catalog(client: AsyncMock, **settings: Any) -> ModelCatalog:
    return ModelCatalog(Settings(**settings), client)


def test_concurrent_reads_share_one_call_to_triton() -> None:
    client = patched(lambda n, v: V1, delay=0.05)
    c = catalog(client)

    async def run() -> list[ModelInfo]:
        return await asyncio.gather(*(c.get("m") for _ in range(20)))

    assert asyncio.run(run()) == [V1] * 20
    assert client.model_info.await_count == 1, "twenty callers, one read"
    assert c.cached("m") is V1


def test_a_failed_read_is_not_cached() -> None:
    answers: list[Any] = [InferenceUnavailable("down"), V1]

    def facts(name: str, version: str) -> ModelInfo:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    c = catalog(patched(facts))
    with pytest.raises(InferenceUnavailable):
        asyncio.run(c.get("m"))
    assert c.cached("m") is None
    assert asyncio.run(c.get("m")) is V1, "the next call reads again"


def test_a_new_version_is_read_once_cached_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    # given v1 cached, when Triton starts answering from v2
    current = {"v": V1}
    client = patched(lambda n, v: {"1": V1, "2": V2}[v] if v else current["v"], delay=0.02)
    c = catalog(client)

    async def run() -> list[ModelInfo]:
        await c.get("m")
        current["v"] = V2
        client.model_info.reset_mock()
        return await asyncio.gather(*(c.served_by(V1, "2") for _ in range(10)))

    caplog.set_level(logging.INFO, logger="gateway.inference.catalog")
    served = asyncio.run(run())
    # then every answer is interpreted with v2's facts, read once through the shared path, and logged
    assert served == [V2] * 10
    assert client.model_info.await_count == 1
    assert c.cached("m") is V2
    assert "now serving version 2 (was 1): 3 classes" in caplog.text


def test_a_late_answer_from_the_retired_version_leaves_the_cache_alone() -> None:
    # given v2 current and cached, when an answer from v1 arrives late
    client = patched(lambda n, v: {"1": V1, "2": V2}[v] if v else V2)
    c = catalog(client)
    asyncio.run(c.get("m"))
    got = asyncio.run(c.served_by(V2, "1"))
    # then it is read with v1's own facts, and v2 stays cached
    assert got == V1 and c.cached("m") is V2


def test_a_rollback_is_cached_like_any_switch() -> None:
    current = {"v": V2}
    client = patched(lambda n, v: {"1": V1, "2": V2}[v] if v else current["v"])
    c = catalog(client)
    asyncio.run(c.get("m"))
    current["v"] = V1
    assert asyncio.run(c.served_by(V2, "1")) is V1
    client.model_info.reset_mock()
    assert asyncio.run(c.served_by(V1, "1")) is V1
    assert client.model_info.await_count == 0, "once switched back, no read per answer"


def test_facts_triton_cannot_give_leave_the_answer_standing() -> None:
    def facts(name: str, version: str) -> ModelInfo:
        if version == "3":
            raise ModelNotFound("version 3 is gone")
        return V1

    c = catalog(patched(facts))
    asyncio.run(c.get("m"))
    assert asyncio.run(c.served_by(V1, "3")) is V1


def test_invalidate_drops_only_the_entry_it_names() -> None:
    current = {"v": V1}
    c = catalog(patched(lambda n, v: current["v"]))
    asyncio.run(c.get("m"))
    current["v"] = V2
    asyncio.run(c.refresh("m"))
    c.invalidate(V1)  # a request sent with v1 was refused: v2 was read since, and stays
    assert c.cached("m") is V2
    c.invalidate(V2)
    assert c.cached("m") is None


def test_refresh_joins_a_read_in_flight() -> None:
    client = patched(lambda n, v: V1, delay=0.05)
    c = catalog(client)

    async def run() -> None:
        await asyncio.gather(c.get("m"), c.refresh("m"), c.refresh("m"))

    asyncio.run(run())
    assert client.model_info.await_count == 1, "readiness shares the requests' read"


def test_facts_the_settings_cannot_feed_are_an_error() -> None:
    c = catalog(patched(lambda n, v: V1), preprocess={"resize_size": 200})
    with pytest.raises(InferenceFailed, match="resize_size 200"):
        asyncio.run(c.get("m"))
    detector = replace(V1, task="detection", class_names=("bicycle", "car"), input_shape=(3, -1, -1))
    c = catalog(patched(lambda n, v: detector))
    with pytest.raises(InferenceFailed, match="no class 'person'"):
        asyncio.run(c.get("m"))


def test_warm_waits_for_readiness_then_reads() -> None:
    client = patched(lambda n, v: V1)
    client.wait_ready.return_value = False
    c = catalog(client)
    assert asyncio.run(c.warm("m", 0.1)) is False and client.model_info.await_count == 0
    client.wait_ready.return_value = True
    assert asyncio.run(c.warm("m", 0.1)) is True and c.cached("m") is V1
