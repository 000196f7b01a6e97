"""Pure stages around Triton: a stream frame's geometry (preprocess) and detections mapped
back into the client's image or the camera's frame (postprocess)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from gateway.config import PreprocessSettings
from gateway.inference import postprocess
from gateway.inference.model import Detections, ModelInfo
from gateway.inference.postprocess import DetectOptions
from gateway.preprocess import Geometry, prepare_frame, prepare_image
from gateway.schema import ClassScore

DETECTOR = ModelInfo(
    name="person_detector", version="1", task="detection", input_name="images", input_datatype="UINT8",
    input_shape=(3, -1, -1), output_name="", num_classes=3, max_batch_size=8, instance_kinds=("CPU",),
    class_names=("__background__", "person", "bicycle"),
)  # fmt: skip
CLASSIFIER = replace(DETECTOR, name="c", task="classification", input_shape=(3, 224, 224), class_names=())
PRE = PreprocessSettings()


def found(*rows: tuple[float, float, float, float, float, int]) -> Detections:
    a = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return Detections(a[:, :4], a[:, 4], a[:, 5].astype(np.int64))


def test_boxes_go_back_to_the_client_image_and_padding_is_dropped() -> None:
    # given a 1280x720 image letterboxed at scale 0.5 into 640x360 (no padding) ...
    g = Geometry(0.5, 0.5, 1280, 720)
    d = found(
        (10, 20, 110, 220, 0.9, 1),  # a person
        (600, 300, 700, 400, 0.8, 1),  # a person running off the image: clipped
        (10, 10, 50, 50, 0.3, 1),  # below the threshold
        (100, 100, 200, 200, 0.95, 2),  # a bicycle
    )
    r = postprocess.detection(DETECTOR, d, g, DetectOptions(threshold=0.5, all_classes=False), "person")
    # then persons above the threshold, in client pixels, clipped to the image
    assert r.label == "person" and r.person_count == 2
    assert [(b.x1, b.y1, b.x2, b.y2) for b in r.boxes] == [(20, 40, 220, 440), (1200, 600, 1280, 720)]
    assert (r.image.width, r.image.height) == (1280, 720) and r.threshold == 0.5
    every = postprocess.detection(DETECTOR, d, g, DetectOptions(threshold=0.5, all_classes=True), "person")
    assert [b.label for b in every.boxes] == ["person", "person", "bicycle"] and every.person_count == 2


def test_a_box_wholly_in_the_letterbox_padding_is_dropped() -> None:
    # given a 640x200 image in a 640x360 letterbox: rows 200..360 are padding
    g = Geometry(1.0, 1.0, 640, 200)
    d = found((10, 250, 100, 350, 0.99, 1), (10, 150, 100, 300, 0.9, 1))
    r = postprocess.detection(DETECTOR, d, g, DetectOptions(0.5, False), "person")
    assert [(b.y1, b.y2) for b in r.boxes] == [(150, 200)] and r.person_count == 1


def test_no_person_at_or_above_the_threshold_is_no_person() -> None:
    r = postprocess.detection(
        DETECTOR, found((1, 1, 9, 9, 0.49, 1)), Geometry(1, 1, 10, 10), DetectOptions(0.5, False), "person"
    )
    assert (r.label, r.person_count, r.boxes) == ("no_person", 0, [])


def test_classification_reports_the_image_it_was_given() -> None:
    top = [ClassScore(index=3, label="x", probability=0.7)]
    r = postprocess.classification(CLASSIFIER, top, Geometry(1, 1, 300, 200))
    assert r.predictions == top and (r.image.width, r.image.height) == (300, 200) and r.task == "classification"


@pytest.mark.parametrize("info", [DETECTOR, CLASSIFIER])
def test_stream_frames_report_the_camera_size(info: ModelInfo) -> None:
    # given a 1920x1080 camera frame that ingest resized to 640x360
    bgr = np.zeros((360, 640, 3), np.uint8)
    batch, g = prepare_frame(bgr, (1920, 1080), info, PRE)
    # then the result refers to the camera's own size, and boxes scale by 1/3
    assert (g.width, g.height) == (1920, 1080)
    assert g.sx == pytest.approx(1 / 3) and g.sy == pytest.approx(1 / 3)
    assert batch.shape == ((1, 3, 360, 640) if info is DETECTOR else (1, 3, 224, 224))


def test_a_fixed_size_detector_gets_the_frame_letterboxed() -> None:
    fixed = replace(DETECTOR, input_shape=(3, 320, 320))
    batch, g = prepare_frame(np.zeros((360, 640, 3), np.uint8), (1280, 720), fixed, PRE)
    assert batch.shape == (1, 3, 320, 320) and g.sx == pytest.approx(0.25) and (g.width, g.height) == (1280, 720)


def test_uploads_to_a_detector_are_letterboxed_into_the_frame_size() -> None:
    from PIL import Image

    batch, g = prepare_image(Image.new("RGB", (1280, 720)), DETECTOR, PRE, (640, 360))
    assert batch.shape == (1, 3, 360, 640) and (g.sx, g.sy, g.width, g.height) == (0.5, 0.5, 1280, 720)
