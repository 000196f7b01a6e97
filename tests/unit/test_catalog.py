"""The model catalog's reads, version switches and invalidation, with the Triton client patched;
and its facts per version, which keep it steady while several Tritons serve different versions."""

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
from gateway.inference.catalog import ROLLBACK_AFTER_S, UNREADABLE_RETRY_S, ModelCatalog, newer
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
    assert c.cached("m") is V1, "one Triton: its newest version says it was a rollback"
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


# --- several Tritons serving different versions (a roll-out) ------------------------------------


POOL = {"url": "ipv4:127.0.0.1:8001,127.0.0.1:8011"}  # two Tritons


def pooled(client: AsyncMock, clock: Callable[[], float] | None = None) -> ModelCatalog:
    """A catalog for two Tritons (``clock``: the monotonic clock it reads)."""
    settings = Settings(triton=POOL)
    return ModelCatalog(settings, client) if clock is None else ModelCatalog(settings, client, clock=clock)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def skewed(reads: list[str] | None = None) -> AsyncMock:
    """Two Tritons, one serving v1 and one v2: a read of a given version gets its facts (once
    the client found a Triton that has it), a read of the newest alternates between them as
    round-robin does.  ``reads`` records the version of each read ("" for the newest)."""
    newest = iter([V1, V2] * 100)

    def facts(name: str, version: str) -> ModelInfo:
        if reads is not None:
            reads.append(version)
        return {"1": V1, "2": V2}[version] if version else next(newest)

    return patched(facts)


def switches(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "now serving version" in r.getMessage()]


def test_a_roll_out_moves_the_current_version_up_once_and_reads_each_version_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given v1 read at start-up, and answers alternating between v1 and v2 (two Tritons, round-robin)
    reads: list[str] = []
    c = pooled(skewed(reads))
    caplog.set_level(logging.INFO, logger="gateway.inference.catalog")

    async def run() -> list[ModelInfo]:
        sent_with = await c.get("m")
        served = []
        for version in ["2", "1"] * 50:
            served.append(await c.served_by(sent_with, version))
            sent_with = c.cached("m") or sent_with
        return served

    served = asyncio.run(run())
    # then every answer is interpreted with its own version's facts
    assert served == [V2, V1] * 50
    # and each version's facts were read once: the newest at start-up, v2 when it first answered
    assert reads == ["", "2"], f"reads: {reads}"
    # and the current version moved up once, and stayed
    assert c.cached("m") is V2
    assert switches(caplog) == ["model m: now serving version 2 (was 1): 3 classes"]


def test_readiness_during_a_roll_out_does_not_flap(caplog: pytest.LogCaptureFixture) -> None:
    # given readiness reads that alternate between the two Tritons' newest versions
    c = pooled(skewed())
    caplog.set_level(logging.INFO, logger="gateway.inference.catalog")

    async def run() -> list[str]:
        return [(await c.refresh("m")).version for _ in range(10)]

    # then readiness reports v1 until it first saw v2, and v2 from then on
    assert asyncio.run(run()) == ["1"] + ["2"] * 9
    assert len(switches(caplog)) == 1


def test_concurrent_answers_from_a_new_version_share_one_read() -> None:
    reads: list[str] = []

    def facts(name: str, version: str) -> ModelInfo:
        reads.append(version)
        return {"1": V1, "2": V2}[version] if version else V1

    c = pooled(patched(facts, delay=0.02))

    async def run() -> list[ModelInfo]:
        await c.get("m")
        return await asyncio.gather(*(c.served_by(V1, v) for v in ["2", "1"] * 10))

    assert asyncio.run(run()) == [V2, V1] * 10
    assert reads == ["", "2"], "one read of v2 however many of its answers arrive at once"


def test_a_version_rolled_back_everywhere_stops_being_current_after_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given v2 current, then only v1 answering (v2 unloaded on every Triton)
    clock = Clock()
    c = pooled(skewed(), clock)
    caplog.set_level(logging.INFO, logger="gateway.inference.catalog")
    asyncio.run(c.get("m"))
    asyncio.run(c.served_by(V1, "2"))
    assert c.cached("m") is V2
    clock.now += ROLLBACK_AFTER_S / 2
    assert asyncio.run(c.served_by(V2, "1")) is V1
    assert c.cached("m") is V2, "an older version answering beside the current one changes nothing"
    # when v2 has not been seen for ROLLBACK_AFTER_S while v1 answers
    clock.now += ROLLBACK_AFTER_S / 2
    assert asyncio.run(c.served_by(V2, "1")) is V1
    # then v1 is current again, and the switch is logged as a rollback
    assert c.cached("m") is V1
    assert "now serving version 1 (was 2): 1000 classes, rolled back" in switches(caplog)[-1]


def test_a_version_that_keeps_answering_is_never_rolled_back() -> None:
    clock = Clock()
    c = pooled(skewed(), clock)
    asyncio.run(c.get("m"))
    asyncio.run(c.served_by(V1, "2"))
    for _ in range(10):  # ten minutes of a roll-out that stalls half-way: both versions keep answering
        clock.now += ROLLBACK_AFTER_S / 2
        asyncio.run(c.served_by(V2, "1"))
        asyncio.run(c.served_by(V2, "2"))
    assert c.cached("m") is V2


def test_a_version_whose_facts_cannot_be_read_is_not_asked_about_on_every_answer() -> None:
    # given a version no Triton asked would describe (the client tried a bounded number of times)
    clock = Clock()
    reads: list[str] = []

    def facts(name: str, version: str) -> ModelInfo:
        reads.append(version)
        if version == "3":
            raise ModelNotFound("version 3 is not found")
        return V1

    c = pooled(patched(facts), clock)
    asyncio.run(c.get("m"))
    # when it answers many requests, then the answers stand with the facts in hand, and it is asked once
    assert [asyncio.run(c.served_by(V1, "3")) for _ in range(20)] == [V1] * 20
    assert reads.count("3") == 1
    # and asked again once UNREADABLE_RETRY_S has passed
    clock.now += UNREADABLE_RETRY_S
    asyncio.run(c.served_by(V1, "3"))
    assert reads.count("3") == 2


def test_invalidate_forgets_that_versions_facts() -> None:
    reads: list[str] = []
    c = pooled(skewed(reads))
    asyncio.run(c.get("m"))
    asyncio.run(c.served_by(V1, "2"))
    c.invalidate(V2)  # Triton refused a request prepared with v2's facts
    assert c.cached("m") is None
    assert asyncio.run(c.served_by(V1, "2")) is V2 and reads == ["", "2", "2"], "v2's facts are read again"
    assert c.cached("m") is None, "an answer does not make a version current: the next request reads"
    assert asyncio.run(c.get("m")) is V2 and reads == ["", "2", "2", ""]


def test_an_answer_does_not_bring_back_invalidated_facts() -> None:
    c = catalog(patched(lambda n, v: V1))
    asyncio.run(c.get("m"))
    c.invalidate(V1)
    asyncio.run(c.served_by(V1, "1"))  # a request sent with V1 before the refusal answers late
    assert c.cached("m") is None, "only a read makes a version current again"


@pytest.mark.parametrize(("a", "b"), [("2", "1"), ("10", "9"), ("100", "99")])
def test_versions_compare_as_numbers(a: str, b: str) -> None:
    assert newer(a, b) and not newer(b, a) and not newer(a, a)
