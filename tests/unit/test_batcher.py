"""The frame batcher with the Triton client patched: which frames share a request, when it is
sent (full, the window out, or every recent stream already in), and what each frame gets
back when the request fails or its stream stops."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any
from unittest.mock import AsyncMock

import numpy as np
import pytest

from gateway.config import Settings
from gateway.errors import InferenceFailed, InferenceTimeout, InferenceUnavailable
from gateway.inference.batcher import FrameBatcher
from gateway.inference.catalog import ModelCatalog
from gateway.inference.client import TritonClient
from gateway.inference.model import Detections, ModelInfo
from gateway.inference.predictor import Predictor, Workers
from gateway.schema import ClassificationResult, ClassScore
from harness.helpers import CLASSIFIER_INFO as CLASSIFIER
from harness.helpers import DETECTOR_INFO as DETECTOR
from harness.helpers import blocking_twins

pytestmark = pytest.mark.timeout(30)


def frame(mark: int, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A one-frame batch whose first value names it (the patched client answers with it)."""
    t = np.zeros((1, 3, *shape), np.uint8)
    t[0, 0, 0, 0] = mark
    return t


def patched_client(delay_s: float = 0.0) -> tuple[AsyncMock, list[tuple[str, list[int]]]]:
    """A client answering each frame with its own mark; ``sent`` records every request's model and
    marks.  ``delay_s``: how long it takes to answer, except a request of mark-0 frames (at once)."""
    sent: list[tuple[str, list[int]]] = []
    client = AsyncMock(spec=TritonClient)

    async def classify(info: ModelInfo, batch: np.ndarray, top_k: int) -> tuple[list[list[ClassScore]], str]:
        sent.append((info.name, [int(m) for m in batch[:, 0, 0, 0]]))
        if batch[:, 0, 0, 0].any():
            await asyncio.sleep(delay_s)
        rows = [[ClassScore(index=int(m), label=str(m), probability=1.0)] * top_k for m in batch[:, 0, 0, 0]]
        return rows, "1"

    async def detect(info: ModelInfo, batch: np.ndarray) -> tuple[list[Detections], str]:
        sent.append((info.name, [int(m) for m in batch[:, 0, 0, 0]]))
        empty = np.zeros((0,), np.float32)
        return [Detections(np.full((1, 4), m, np.float32), empty, empty) for m in batch[:, 0, 0, 0]], "1"

    client.classify.side_effect = classify
    client.detect.side_effect = detect
    blocking_twins(client)
    return client, sent


async def gather(*calls: Any) -> list[Any]:
    return list(await asyncio.gather(*calls))


async def known(
    batcher: FrameBatcher, info: ModelInfo, *streams: str, top_k: int = 1, shape: tuple[int, int] = (4, 4)
) -> None:
    """``streams`` have sent ``info``'s model a (mark 0) frame of ``shape`` for ``top_k``: the batcher
    counts them as streams that may send the next such frame, so the others' frames wait for them."""
    if info.task == "detection":
        await gather(*(batcher.detect(info, frame(0, shape), stream=s) for s in streams))
    else:
        await gather(*(batcher.classify(info, frame(0, shape), top_k, stream=s) for s in streams))


def test_frames_within_the_window_share_one_request_and_each_gets_its_own_row() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=50, max_size=8)

    async def run() -> list[Any]:
        await known(batcher, CLASSIFIER, "idle", top_k=2)  # a fourth stream, whose next frame may come
        sent.clear()
        first = asyncio.ensure_future(batcher.classify(CLASSIFIER, frame(1), 2, stream="a"))
        await asyncio.sleep(0.01)  # a second stream's frame, later but within the window
        return await gather(
            first,
            batcher.classify(CLASSIFIER, frame(2), 2, stream="b"),
            batcher.classify(CLASSIFIER, frame(3), 2, stream="c"),
        )

    answers = asyncio.run(run())
    assert sent == [("mobilenet_v3_small", [1, 2, 3])], "one request carries the three frames"
    assert [a.row[0].index for a in answers] == [1, 2, 3], "each frame gets the row of its own image"
    assert all(len(a.row) == 2 and a.size == 3 and a.version == "1" for a in answers)
    assert answers[0].queued_ms >= 40, f"the first frame waited the window: {answers[0].queued_ms:.1f} ms"
    assert answers[2].queued_ms < answers[0].queued_ms, "later frames wait less"


def test_a_lone_stream_never_waits_for_frames_that_cannot_come() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=60_000, max_size=8)

    async def run() -> list[Any]:
        return [await batcher.classify(CLASSIFIER, frame(i), 1, stream="only") for i in range(1, 6)]

    t0 = time.monotonic()
    answers = asyncio.run(run())
    assert time.monotonic() - t0 < 5, "a minute-long window is not waited out by the only stream"
    assert [marks for _, marks in sent] == [[1], [2], [3], [4], [5]]
    assert all(a.queued_ms < 1000 for a in answers)


def test_once_every_recent_stream_has_a_frame_in_the_batch_goes_at_once() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=60_000, max_size=8)

    async def run() -> list[Any]:
        await known(batcher, CLASSIFIER, "a", "b", "c")
        sent.clear()
        return await gather(*(batcher.classify(CLASSIFIER, frame(i), 1, stream=s) for i, s in enumerate("abc", 1)))

    t0 = time.monotonic()
    answers = asyncio.run(run())
    assert time.monotonic() - t0 < 5, "nobody else can join: the window is not waited out"
    assert sent == [("mobilenet_v3_small", [1, 2, 3])]
    assert [a.size for a in answers] == [3, 3, 3]


def test_a_full_batch_goes_at_once_and_the_rest_start_the_next() -> None:
    client, sent = patched_client()
    sizes: list[tuple[str, int]] = []
    batcher = FrameBatcher(client, window_ms=60_000, max_size=3, on_batch=lambda m, n: sizes.append((m, n)))

    async def run() -> list[Any]:
        await known(batcher, CLASSIFIER, "idle")
        sent.clear()
        sizes.clear()
        t0 = time.monotonic()
        answers = await gather(*(batcher.classify(CLASSIFIER, frame(i), 1, stream=f"s{i}") for i in range(1, 7)))
        assert time.monotonic() - t0 < 5, "full batches do not wait out a minute-long window"
        return answers

    answers = asyncio.run(run())
    assert sent == [("mobilenet_v3_small", [1, 2, 3]), ("mobilenet_v3_small", [4, 5, 6])]
    assert sizes == [("mobilenet_v3_small", 3)] * 2, "each request's size is reported"
    assert [a.row[0].index for a in answers] == list(range(1, 7))


def test_a_batch_is_never_larger_than_the_model_allows() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=60_000, max_size=8)
    small = replace(CLASSIFIER, max_batch_size=2)
    unbatched = replace(CLASSIFIER, name="no_batching", max_batch_size=0)

    async def run() -> None:
        await known(batcher, small, "idle")
        sent.clear()
        await gather(*(batcher.classify(small, frame(i), 1, stream=f"s{i}") for i in range(1, 5)))
        await gather(*(batcher.classify(unbatched, frame(i), 1, stream=f"s{i}") for i in range(1, 3)))

    asyncio.run(run())
    assert [marks for _, marks in sent] == [[1, 2], [3, 4], [1], [2]], "max_batch_size 2, then 0: one at a time"


def test_frames_only_share_a_request_with_the_same_model_version_top_k_and_shape() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=30, max_size=8)
    v2 = replace(CLASSIFIER, version="2")

    async def run() -> list[Any]:
        await known(batcher, CLASSIFIER, "idle")
        await known(batcher, DETECTOR, "idle", shape=(8, 8))
        sent.clear()
        return await gather(
            batcher.classify(CLASSIFIER, frame(1), 1, stream="s1"),
            batcher.classify(CLASSIFIER, frame(2), 5, stream="s2"),
            batcher.classify(v2, frame(3), 1, stream="s3"),
            batcher.detect(DETECTOR, frame(4, (8, 8)), stream="s4"),
            batcher.detect(DETECTOR, frame(5, (6, 8)), stream="s5"),
            batcher.detect(DETECTOR, frame(6, (8, 8)), stream="s6"),
            batcher.classify(CLASSIFIER, frame(7), 1, stream="s7"),
        )

    answers = asyncio.run(run())
    assert sorted(marks for _, marks in sent) == [[1, 7], [2], [3], [4, 6], [5]], sent
    assert float(answers[3].row.boxes[0, 0]) == 4 and float(answers[5].row.boxes[0, 0]) == 6


def test_a_failed_request_fails_each_of_its_frames() -> None:
    client, _ = patched_client()
    batcher = FrameBatcher(client, window_ms=20, max_size=8)

    async def run() -> list[Any]:
        await known(batcher, CLASSIFIER, "idle")
        client.classify.reset_mock()
        client.classify.side_effect = InferenceTimeout("Triton did not answer inference within 2s")
        calls = (batcher.classify(CLASSIFIER, frame(i), 1, stream=f"s{i}") for i in range(1, 4))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    errors = asyncio.run(run())
    assert client.classify.await_count == 1, "one request, retried (or not) by the client as one"
    assert all(isinstance(e, InferenceTimeout) for e in errors), errors


def test_a_frame_whose_stream_stopped_while_waiting_is_left_out() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=50, max_size=8)

    async def run() -> Any:
        await known(batcher, CLASSIFIER, "idle")
        sent.clear()
        gone = asyncio.ensure_future(batcher.classify(CLASSIFIER, frame(1), 1, stream="gone"))
        kept = asyncio.ensure_future(batcher.classify(CLASSIFIER, frame(2), 1, stream="kept"))
        await asyncio.sleep(0)
        gone.cancel()
        return await kept

    assert asyncio.run(run()).row[0].index == 2
    assert sent == [("mobilenet_v3_small", [2])]


def test_a_stream_stopping_while_its_request_is_in_flight_leaves_the_others_their_answers() -> None:
    client, sent = patched_client(delay_s=0.1)
    batcher = FrameBatcher(client, window_ms=10, max_size=8)

    async def run() -> Any:
        await known(batcher, CLASSIFIER, "idle")
        sent.clear()
        gone = asyncio.ensure_future(batcher.classify(CLASSIFIER, frame(1), 1, stream="gone"))
        kept = asyncio.ensure_future(batcher.classify(CLASSIFIER, frame(2), 1, stream="kept"))
        await asyncio.sleep(0.05)  # sent, not answered
        gone.cancel()
        return await kept

    assert asyncio.run(run()).row[0].index == 2
    assert sent == [("mobilenet_v3_small", [1, 2])]


def test_stop_fails_waiting_and_in_flight_frames_and_refuses_new_ones() -> None:
    client, sent = patched_client(delay_s=30)
    batcher = FrameBatcher(client, window_ms=10, max_size=8)

    async def run() -> list[Any]:
        v2 = replace(CLASSIFIER, version="2")
        await known(batcher, v2, "idle")  # "b"'s frame waits for it
        sent.clear()
        in_flight = asyncio.ensure_future(batcher.classify(CLASSIFIER, frame(1), 1, stream="a"))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.classify(v2, frame(2), 1, stream="b"))
        await asyncio.sleep(0)
        await batcher.stop()
        await batcher.stop()  # idempotent
        late = batcher.classify(CLASSIFIER, frame(3), 1, stream="c")
        return list(await asyncio.gather(in_flight, waiting, late, return_exceptions=True))

    outcomes = asyncio.run(run())
    assert all(isinstance(o, InferenceUnavailable) and "shutting down" in o.message for o in outcomes), outcomes
    assert [marks for _, marks in sent] == [[1]], "frame 2 was still waiting when the batcher stopped"


def test_a_zero_window_sends_each_frame_alone() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=0, max_size=8)
    assert not batcher.enabled

    async def run() -> None:
        await known(batcher, CLASSIFIER, "idle")
        sent.clear()
        await gather(*(batcher.classify(CLASSIFIER, frame(i), 1, stream=f"s{i}") for i in range(1, 4)))

    asyncio.run(run())
    assert [marks for _, marks in sent] == [[1], [2], [3]]


def predictor_with(batcher_window_ms: float) -> tuple[Predictor, AsyncMock, list[tuple[str, list[int]]]]:
    client, sent = patched_client()
    client.model_info.side_effect = lambda name, version="": CLASSIFIER
    s = Settings()
    batcher = FrameBatcher(client, window_ms=batcher_window_ms, max_size=8)
    return Predictor(s, client, ModelCatalog(s, client), Workers(s), batcher), client, sent


def test_stream_frames_go_through_the_batcher_and_report_their_wait() -> None:
    predictor, _, sent = predictor_with(batcher_window_ms=1_000)
    frames = [np.full((360, 640, 3), 10 * i, np.uint8) for i in range(3)]

    async def run() -> list[Any]:
        calls = (predictor.predict_frame(f, stream=f"s{i}", source_size=(640, 360)) for i, f in enumerate(frames))
        return await gather(*calls)

    asyncio.run(run())  # the streams' first frames: each stream becomes known
    sent.clear()
    outcomes = asyncio.run(run())
    assert len(sent) == 1 and len(sent[0][1]) == 3, f"the three streams' frames share one request: {sent}"
    assert all(isinstance(o.result, ClassificationResult) for o in outcomes)
    assert max(o.batch_ms for o in outcomes) > 0, [o.batch_ms for o in outcomes]
    assert max(o.batch_ms for o in outcomes) < 900, "the last stream's frame completed the batch: no window"


def test_uploads_are_never_held_back_for_a_batch() -> None:
    from harness.helpers import encode, scene

    predictor, client, sent = predictor_with(batcher_window_ms=60_000)
    for n in (1, 2):  # the first reads the model's facts; the second is sent from its worker thread
        out = asyncio.run(predictor.predict(encode(scene(320, 240), "JPEG")))
        assert out.batch_ms == 0 and len(sent) == n and client.classify.await_count == n
    assert client.classify_blocking.call_count == 1


def test_a_fast_stream_beside_a_slow_one_does_not_wait_for_it() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=200, max_size=8)

    async def run() -> float:
        await batcher.classify(CLASSIFIER, frame(1), 1, stream="slow")
        await asyncio.sleep(1.0)
        await batcher.classify(CLASSIFIER, frame(2), 1, stream="slow")  # a frame a second
        t0 = time.monotonic()
        for i in range(3, 8):  # the fast stream's frames, while the slow one's next is ~1 s away
            await batcher.classify(CLASSIFIER, frame(i), 1, stream="fast")
        return time.monotonic() - t0

    elapsed = asyncio.run(run())
    assert elapsed < 0.5, f"5 frames took {elapsed:.2f}s: they waited for the slow stream (window 0.2 s)"
    assert [marks for _, marks in sent] == [[1], [2], [3], [4], [5], [6], [7]]


def test_streams_of_other_frame_sizes_are_not_waited_for() -> None:
    client, sent = patched_client()
    batcher = FrameBatcher(client, window_ms=60_000, max_size=8)

    async def run() -> None:
        await batcher.detect(DETECTOR, frame(1, (8, 8)), stream="big")
        await batcher.detect(DETECTOR, frame(2, (6, 8)), stream="small")
        await batcher.detect(DETECTOR, frame(3, (8, 8)), stream="big")  # cannot share with "small"

    t0 = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - t0 < 5, "a frame waited for a stream whose frames are another size"
    assert [marks for _, marks in sent] == [[1], [2], [3]]


def test_a_refused_batch_is_sent_again_frame_by_frame() -> None:
    client, sent = patched_client()
    answer = client.classify.side_effect

    async def refuse_batches(info: ModelInfo, batch: np.ndarray, top_k: int) -> Any:
        if batch.shape[0] > 1:
            sent.append((info.name, [int(m) for m in batch[:, 0, 0, 0]]))
            raise InferenceFailed("batch size 3 exceeds the new version's max_batch_size 1")
        return await answer(info, batch, top_k)

    batcher = FrameBatcher(client, window_ms=60_000, max_size=8)

    async def run() -> list[Any]:
        await known(batcher, CLASSIFIER, "a", "b", "c")
        sent.clear()
        client.classify.side_effect = refuse_batches
        return await gather(*(batcher.classify(CLASSIFIER, frame(i), 1, stream=s) for i, s in enumerate("abc", 1)))

    answers = asyncio.run(run())
    assert sent[0] == ("mobilenet_v3_small", [1, 2, 3]) and sorted(sent[1:]) == [
        (CLASSIFIER.name, [i]) for i in (1, 2, 3)
    ]
    assert [a.row[0].index for a in answers] == [1, 2, 3] and all(a.size == 1 for a in answers)


def test_stop_fails_the_frames_of_a_request_not_yet_started() -> None:
    client, _ = patched_client()
    batcher = FrameBatcher(client, window_ms=60_000, max_size=2)

    async def run() -> list[Any]:
        await known(batcher, CLASSIFIER, "idle")
        frames = [asyncio.ensure_future(batcher.classify(CLASSIFIER, frame(i), 1, stream=f"s{i}")) for i in (1, 2)]
        await asyncio.sleep(0)  # both submitted: the batch is full, its request created but not started
        await batcher.stop()
        return list(await asyncio.wait_for(asyncio.gather(*frames, return_exceptions=True), 5))

    outcomes = asyncio.run(run())
    assert all(isinstance(o, InferenceUnavailable) for o in outcomes), outcomes
