"""The person detector served by the real embedded Triton, directly and through the gateway.

The served model is the synthetic checkpoint exported with ``box_score_thresh=0``
(K = 100 detections per image).  Triton runs the same ONNX file as onnxruntime in
process, so served detections must equal it; against stock eager torchvision they
must match by the parity criteria (labels equal, boxes within 1 px or IoU >= 0.99,
scores within 1e-3) for detections scoring >= 0.2.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from embedded_triton import EmbeddedTriton
from export.detector import DEFAULT_ARCH, BuiltDetector, build_detector
from export.parity import Detections, compare_detections, eager_detections, scenes
from gateway.preprocess import letterbox
from harness.helpers import GatewayProcess, encode, gateway, predictions, sse, stream_info, wait_until
from harness.peers.clips import write_clip
from tests.conftest import DETECTOR, DETECTOR_K

pytestmark = pytest.mark.integration
ONNX_FLOOR = 0.2  # below it, ORT and torch may pick a different marginal proposal (see export/parity.py)


class OrtDetector:
    """onnxruntime in process on the served ONNX file, one image at a time, as Triton runs it."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, chw: np.ndarray) -> Detections:
        boxes, scores, labels, num = self.session.run(None, {"images": chw[np.newaxis]})
        return Detections.from_padded(boxes[0], scores[0], labels[0], num[0])


@pytest.fixture(scope="module")
def ort_detector(exported_repo: Path) -> OrtDetector:
    return OrtDetector(exported_repo / DETECTOR / "1" / "model.onnx")


@pytest.fixture(scope="module")
def eager(detector_checkpoint: Path) -> BuiltDetector:
    return build_detector(DEFAULT_ARCH, str(detector_checkpoint), score_thresh=0.0, max_detections=DETECTOR_K)


def infer(client: grpcclient.InferenceServerClient, batch: np.ndarray) -> list[Detections]:
    inp = grpcclient.InferInput("images", list(batch.shape), "UINT8")
    inp.set_data_from_numpy(batch)
    r = client.infer(DETECTOR, [inp], client_timeout=60)
    boxes, scores, labels, num = (r.as_numpy(n) for n in ("boxes", "scores", "labels", "num_detections"))
    assert boxes is not None and scores is not None and labels is not None and num is not None
    assert boxes.shape == (batch.shape[0], DETECTOR_K, 4) and num.shape[0] == batch.shape[0]
    return [Detections.from_padded(boxes[i], scores[i], labels[i], num[i]) for i in range(batch.shape[0])]


def identical(a: Detections, b: Detections) -> bool:
    return (
        np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores) and np.array_equal(a.labels, b.labels)
    )


def stats(client: grpcclient.InferenceServerClient) -> tuple[int, int]:
    s = client.get_inference_statistics(DETECTOR).model_stats[0]
    return int(s.inference_count), int(s.execution_count)


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_triton_batches_equal_onnxruntime_and_match_eager_torchvision(
    triton: EmbeddedTriton, ort_detector: OrtDetector, eager: BuiltDetector, batch: int
) -> None:
    # given images of a size the graph was not traced at (it was traced at 640x360)
    x = scenes(batch, 384, 512, seed=100 + batch)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    # when Triton detects them in one request
    served = infer(client, x)
    # then each image equals onnxruntime on that image, and matches stock eager torchvision
    want = eager_detections(eager.reference, x)
    for i, got in enumerate(served):
        assert identical(got, ort_detector(x[i])), f"image {i}: Triton differs from onnxruntime in process"
        ref = Detections(want[i].boxes[:DETECTOR_K], want[i].scores[:DETECTOR_K], want[i].labels[:DETECTOR_K])
        diff = compare_detections(ref, got, max_detections=DETECTOR_K, min_score=ONNX_FLOOR)
        assert diff.ok and diff.matched >= 20, f"image {i} vs eager torchvision: {diff}"


def test_concurrent_requests_are_batched_and_each_gets_its_own(
    triton: EmbeddedTriton, ort_detector: OrtDetector
) -> None:
    # given 12 different images sent at once, one per request
    x = scenes(12, 360, 640, seed=7)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    before = stats(client)
    results: dict[int, Detections] = {}

    def send(i: int) -> None:
        c = grpcclient.InferenceServerClient(triton.grpc_url)
        results[i] = infer(c, x[i : i + 1])[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(x))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # then every request got the detections of its own image
    assert sorted(results) == list(range(len(x)))
    for i, got in results.items():
        assert identical(got, ort_detector(x[i])), f"request {i} got another image's detections"
    # and Triton ran them in fewer executions than requests: the dynamic batcher joined them
    inferences, executions = (a - b for a, b in zip(stats(client), before, strict=True))
    assert inferences == len(x)
    assert executions < inferences, f"{executions} executions for {inferences} requests: no batching"


# --- through the gateway -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def still() -> np.ndarray:
    return np.asarray(Image.fromarray(scenes(1, 360, 640, seed=42)[0].transpose(1, 2, 0)))


@pytest.fixture(scope="module")
def detector_gateway(
    triton: EmbeddedTriton, still: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("detector")
    clip = write_clip(tmp / "still.mp4", seconds=2.0, still=still)
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "20",
        "APP_FRAME_SAMPLE_FPS": "2",
        "APP_DETECTOR__SCORE_THRESHOLD": "0.3",
        # the camera is 640x360; ingest resizes to 320x180 for the detector; boxes come back in 640x360
        "APP_STREAMS": json.dumps(
            [{"id": "cam", "url": str(clip), "loop": True, "model": DETECTOR, "width": 320, "height": 180}]
        ),
    }
    with gateway(env, tmp / "gateway.log") as gw:
        wait_until(lambda: stream_info(gw, "cam")["state"] == "running", 30, what="detector stream running")
        yield gw


def post(gw: GatewayProcess, image: np.ndarray, **params: Any) -> httpx.Response:
    body = encode(Image.fromarray(image), "PNG")
    return httpx.post(
        f"{gw.url}/predict",
        params={"model": DETECTOR, **params},
        content=body,
        headers={"content-type": "image/png"},
        timeout=60,
    )


def by_name(d: Detections, names: list[str]) -> Detections:
    """Labels as the first index of their name: COCO's list repeats "N/A" for unused ids."""
    return Detections(d.boxes, d.scores, np.array([names.index(names[c]) for c in d.labels], dtype=np.int64))


def as_detections(boxes: list[dict[str, Any]], names: list[str]) -> Detections:
    return Detections(
        np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], dtype=np.float32).reshape(-1, 4),
        np.array([b["score"] for b in boxes], dtype=np.float32),
        np.array([names.index(b["label"]) for b in boxes], dtype=np.int64),
    )


def unmatched(want: Detections, got: Detections) -> str:
    """For failure messages: boxes of each side with no near-identical box on the other."""
    lines = []
    for name, a, b in (("expected only", want, got), ("served only", got, want)):
        for i in range(len(a.scores)):
            same = (b.labels == a.labels[i]) & (np.abs(b.scores - a.scores[i]) <= 1e-3)
            if not (np.abs(b.boxes[same] - a.boxes[i]).max(axis=1, initial=0.0) <= 1).any():
                lines.append(
                    f"  {name}: {np.round(a.boxes[i], 2).tolist()} score {a.scores[i]:.5f} label {a.labels[i]}"
                )
    return "\n".join(lines)


def above(d: Detections, threshold: float, size: tuple[int, int], sx: float = 1.0, sy: float = 1.0) -> Detections:
    """What the gateway must answer: boxes at or above ``threshold``, mapped back into the
    client's ``size`` (w, h), clipped to it, none wholly in the letterbox padding."""
    w, h = size
    boxes = np.clip(d.boxes / np.array([sx, sy, sx, sy], dtype=np.float32), 0, [w, h, w, h])
    keep = (d.scores >= threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[keep], d.scores[keep], d.labels[keep])


@pytest.fixture(scope="module")
def coco(exported_repo: Path) -> list[str]:
    return (exported_repo / DETECTOR / "labels.txt").read_text().splitlines()


@pytest.mark.parametrize(
    ("case", "size"),
    [("frame size", (640, 360)), ("2x larger, downscaled exactly", (1280, 720)), ("shorter, padded", (640, 300))],
)
def test_predict_detector_boxes_come_back_in_the_client_image(
    detector_gateway: GatewayProcess, ort_detector: OrtDetector, coco: list[str], case: str, size: tuple[int, int]
) -> None:
    # given an image the gateway letterboxes into its 640x360 frame (one the graph was not traced at, but for one case)
    w, h = size
    base = scenes(1, 360, 640, seed=11)[0].transpose(1, 2, 0)
    image = np.ascontiguousarray(base.repeat(2, axis=0).repeat(2, axis=1) if w == 1280 else base[:h, :w])
    # when it is posted with every class at or above 0.2
    r = post(detector_gateway, image, threshold=0.2, all_classes="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "detection" and body["image"] == {"width": w, "height": h}, case
    # then the boxes are onnxruntime's on the tensor the gateway sent, mapped back into the image sent
    chw, sx, sy = letterbox(image, 640, 360)
    want = by_name(above(ort_detector(chw), 0.2, (w, h), sx, sy), coco)
    got = as_detections(body["boxes"], coco)
    diff = compare_detections(want, got, max_detections=DETECTOR_K, score_thresh=0.2)
    assert diff.ok and diff.matched == len(want.scores) > 0, f"{case}: {diff}\n{unmatched(want, got)}"
    assert (got.boxes[:, [0, 2]] <= w).all() and (got.boxes[:, [1, 3]] <= h).all(), "boxes inside the image"


def test_person_or_no_person_follows_the_threshold(
    detector_gateway: GatewayProcess, ort_detector: OrtDetector, coco: list[str]
) -> None:
    image = scenes(1, 360, 640, seed=4)[0].transpose(1, 2, 0).copy()
    ref = ort_detector(letterbox(image, 640, 360)[0])
    person_scores = np.sort(ref.scores[ref.labels == coco.index("person")])[::-1]
    assert person_scores.size >= 2, "the synthetic model should propose some person boxes"
    threshold = float(person_scores[1])  # exactly two person boxes at or above it
    body = post(detector_gateway, image, threshold=threshold).json()
    assert body["label"] == "person" and body["person_count"] == 2, body
    assert [b["label"] for b in body["boxes"]] == ["person", "person"], "persons only by default"
    none = post(detector_gateway, image, threshold=1.0).json()
    assert none["label"] == "no_person" and none["person_count"] == 0 and none["boxes"] == []


def test_readiness_covers_the_models_of_configured_streams(detector_gateway: GatewayProcess) -> None:
    body = httpx.get(f"{detector_gateway.url}/health/ready", timeout=10).json()
    assert body["ready"] is True, body
    assert set(body["components"]["models"]) == {"mobilenet_v3_small", DETECTOR}, "the default model and the stream's"


def test_unknown_model_is_404_and_names_it(detector_gateway: GatewayProcess) -> None:
    r = httpx.post(
        f"{detector_gateway.url}/predict?model=yolo_v99",
        content=encode(Image.new("RGB", (64, 48)), "PNG"),
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "yolo_v99" in message and DETECTOR in message, message


def test_stream_with_the_detector_sends_boxes_in_camera_coordinates(
    detector_gateway: GatewayProcess, ort_detector: OrtDetector, coco: list[str], still: np.ndarray, tmp_path: Path
) -> None:
    # given a 640x360 camera showing one still scene, ingested at 320x180 for the detector
    events = predictions(sse(f"{detector_gateway.url}/streams/cam/events", 20.0, stop_after=3))
    assert len(events) >= 2
    # then each prediction event has the /predict structure, in the camera's 640x360 coordinates
    clip = tmp_path / "decoded.mp4"
    write_clip(clip, seconds=0.2, still=still)
    cap = cv2.VideoCapture(str(clip))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    frame = cv2.resize(bgr, (320, 180), interpolation=cv2.INTER_AREA)  # what ingest does
    chw = np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).transpose(2, 0, 1))
    want = above(ort_detector(chw), 0.3, (640, 360), 0.5, 0.5)
    person = coco.index("person")
    want = Detections(
        want.boxes[want.labels == person], want.scores[want.labels == person], want.labels[want.labels == person]
    )
    for e in events:
        assert e["task"] == "detection" and e["model"] == DETECTOR and e["image"] == {"width": 640, "height": 360}
        assert e["label"] == ("person" if len(want.scores) else "no_person") and e["person_count"] == len(want.scores)
        got = as_detections(e["boxes"], coco)
        diff = compare_detections(want, got, max_detections=DETECTOR_K, score_thresh=0.3)
        assert diff.ok and diff.matched == len(want.scores), f"frame {e['frame']}: {diff}"
