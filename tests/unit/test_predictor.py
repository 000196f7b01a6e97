"""The predictor (the thin orchestrator) with the Triton client patched: decode → facts →
preprocess → Triton → post-processing, and what it does when Triton refuses."""

from __future__ import annotations

import asyncio
import threading
from unittest.mock import AsyncMock

import numpy as np
import pytest

from gateway.config import Settings
from gateway.errors import BadImage, BadRequest, InferenceFailed, InferenceUnavailable, ModelDegraded
from gateway.inference.catalog import ModelCatalog
from gateway.inference.client import TritonClient
from gateway.inference.model import Detections
from gateway.inference.predictor import Predictor, Workers
from gateway.schema import ClassificationResult, ClassScore, DetectionResult
from harness.helpers import CLASSIFIER_INFO as CLASSIFIER
from harness.helpers import DETECTOR_INFO as DETECTOR
from harness.helpers import blocking_twins, encode, scene

JPEG = encode(scene(640, 480), "JPEG")


def rig(**settings: object) -> tuple[Predictor, AsyncMock, ModelCatalog]:
    client = AsyncMock(spec=TritonClient)
    client.model_info.side_effect = lambda name, version="": {"person_detector": DETECTOR}.get(name, CLASSIFIER)
    client.classify.return_value = ([[ClassScore(index=3, label="c", probability=0.9)]], "1")
    client.detect.return_value = (
        [Detections(np.array([[64, 48, 128, 96]], np.float32), np.array([0.8], np.float32), np.array([1]))],
        "1",
    )
    blocking_twins(client)
    s = Settings(**settings)  # type: ignore[arg-type]
    catalog = ModelCatalog(s, client)
    return Predictor(s, client, catalog, Workers(s)), client, catalog


def test_an_upload_is_classified_with_the_models_own_input() -> None:
    predictor, client, _ = rig()
    out = asyncio.run(predictor.predict(JPEG, top_k=1))
    assert isinstance(out.result, ClassificationResult) and out.result.predictions[0].label == "c"
    assert (out.result.image.width, out.result.image.height) == (640, 480)
    (_, batch, k), _ = client.classify.call_args
    assert batch.shape == (1, 3, 224, 224) and batch.dtype == np.uint8 and k == 1
    assert out.decode_ms > 0 and out.preprocess_ms > 0


def test_a_detector_upload_gets_boxes_in_the_client_image() -> None:
    predictor, client, _ = rig()
    out = asyncio.run(predictor.predict(JPEG, model="person_detector"))
    assert isinstance(out.result, DetectionResult) and out.result.label == "person"
    (_, batch), _ = client.detect.call_args
    assert batch.shape == (1, 3, 360, 640), "letterboxed into frame_width x frame_height"
    box = out.result.boxes[0]
    assert (box.x1, box.y1, box.x2, box.y2) == (85.33, 64, 170.67, 128), "640x480 -> 480x360: boxes x 4/3"


def test_an_upload_of_a_known_model_is_decoded_prepared_and_sent_from_one_worker_thread() -> None:
    predictor, client, _ = rig()
    asyncio.run(predictor.predict(JPEG))  # the first: the model's facts are read on the event loop
    assert client.classify_blocking.call_count == 0 and client.classify.await_count == 1
    threads: list[str] = []
    original = client.classify_blocking.side_effect

    def from_thread(*a: object) -> object:
        threads.append(threading.current_thread().name)
        return original(*a)

    client.classify_blocking.side_effect = from_thread
    for model in ("mobilenet_v3_small", "person_detector", "mobilenet_v3_small"):
        asyncio.run(predictor.predict(JPEG, model=model))
    assert client.classify_blocking.call_count == 2 and threads and all(t.startswith("upload") for t in threads)
    assert client.detect.await_count == 1, "the detector's first upload: its facts read, then asked on the loop"
    out = asyncio.run(predictor.predict(JPEG, model="person_detector"))
    assert client.detect_blocking.call_count == 1 and isinstance(out.result, DetectionResult)
    assert out.inference_ms > 0 and out.decode_ms > 0 and out.preprocess_ms > 0


def test_a_bad_image_is_refused_before_triton_is_asked() -> None:
    predictor, client, _ = rig()
    with pytest.raises(BadImage):
        asyncio.run(predictor.predict(b"not an image"))
    client.model_info.assert_not_called()
    with pytest.raises(BadRequest, match="exceeds the 10 classes"):
        asyncio.run(predictor.predict(JPEG, top_k=11))


def test_a_refusal_from_triton_drops_the_cached_facts() -> None:
    predictor, client, catalog = rig()
    asyncio.run(predictor.predict(JPEG))
    assert catalog.cached("mobilenet_v3_small") is CLASSIFIER
    client.classify.side_effect = InferenceFailed("input shape changed")
    with pytest.raises(InferenceFailed):
        asyncio.run(predictor.predict(JPEG))
    assert catalog.cached("mobilenet_v3_small") is None, "the next request reads the facts again"
    client.classify.side_effect = InferenceUnavailable("down")
    asyncio.run(catalog.get("mobilenet_v3_small"))
    with pytest.raises(InferenceUnavailable):
        asyncio.run(predictor.predict(JPEG))
    assert catalog.cached("mobilenet_v3_small") is CLASSIFIER, "Triton being down is no reason to forget"


def test_a_stream_frame_reports_the_camera_size() -> None:
    predictor, _, _ = rig()
    out = asyncio.run(predictor.predict_frame(np.zeros((360, 640, 3), np.uint8), stream="s", source_size=(1920, 1080)))
    assert (out.result.image.width, out.result.image.height) == (1920, 1080) and out.decode_ms == 0


def test_a_stream_frame_is_prepared_on_its_readers_thread_once_the_models_facts_are_known() -> None:
    predictor, client, catalog = rig()
    frame = np.asarray(scene(640, 360))[:, :, ::-1].copy()  # BGR, as ingest gives it
    assert predictor.prepare_frame_here(frame, (1280, 720)) is None, "facts not known yet: a worker prepares it"
    asyncio.run(catalog.get("mobilenet_v3_small"))
    prepared = predictor.prepare_frame_here(frame, (1280, 720))
    assert prepared is not None and prepared.info is CLASSIFIER and prepared.preprocess_ms > 0
    slots = predictor._workers.cpu
    for _ in range(2):  # preprocess.workers: every slot taken (uploads, or other readers)
        slots.acquire()
    assert predictor.prepare_frame_here(frame, (1280, 720)) is None, "a reader never waits for a slot"
    for _ in range(2):
        slots.release()
    # the same tensor a worker would make
    worker = asyncio.run(predictor.predict_frame(frame, stream="s", source_size=(1280, 720)))
    (_, from_worker, _), _ = client.classify.call_args
    assert np.array_equal(prepared.batch, from_worker) and worker.queue_ms >= 0
    # sent as prepared: no worker touches it
    predictor._workers.preprocess.shutdown()  # a worker would now raise
    out = asyncio.run(predictor.predict_frame(frame, stream="s", source_size=(1280, 720), prepared=prepared))
    (_, sent, _), _ = client.classify.call_args
    assert sent is prepared.batch and out.preprocess_ms == prepared.preprocess_ms and out.queue_ms == 0
    assert (out.result.image.width, out.result.image.height) == (1280, 720)


def test_a_frame_prepared_for_facts_that_changed_is_prepared_again() -> None:
    predictor, client, catalog = rig()
    frame = np.zeros((360, 640, 3), np.uint8)
    asyncio.run(catalog.get("mobilenet_v3_small"))
    prepared = predictor.prepare_frame_here(frame, (640, 360))
    assert prepared is not None
    catalog.invalidate(CLASSIFIER)  # a new version may take another input
    asyncio.run(predictor.predict_frame(frame, stream="s", prepared=prepared))
    (_, sent, _), _ = client.classify.call_args
    assert sent is not prepared.batch and np.array_equal(sent, prepared.batch), "prepared again, for the facts read"


def test_a_degraded_model_is_marked_until_an_inference_succeeds() -> None:
    # given a model whose inference meets a crashed instance on the retry too
    predictor, client, catalog = rig()
    client.classify.side_effect = ModelDegraded("model mobilenet_v3_small is degraded: an instance crashed")
    with pytest.raises(ModelDegraded):
        asyncio.run(predictor.predict(JPEG))
    assert catalog.degraded("mobilenet_v3_small"), "readiness must see the model as degraded"
    # when the probe (readiness) succeeds, the mark is gone
    client.classify.side_effect = None
    asyncio.run(predictor.probe("mobilenet_v3_small"))
    assert catalog.degraded("mobilenet_v3_small") is None
    sent = client.classify.call_args.args[1]
    assert sent.shape == (1, 3, 224, 224) and sent.dtype == np.uint8, "the probe sends the model's own input"
