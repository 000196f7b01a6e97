"""Inference capture without servers: the policy, complete local files, a full queue."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.capture import Capturer, should_capture
from gateway.config import CaptureSettings
from gateway.schema import ClassificationResult, ClassScore, DetectionCapture, ImageSize
from harness.helpers import detection_event

DETECTION = detection_event("lobby", 1, person=True)
NOBODY = detection_event("lobby", 1)


def frame(i: int) -> np.ndarray:
    return np.full((90, 160, 3), i % 256, dtype=np.uint8)


def settings(root: Path, **kw: Any) -> CaptureSettings:
    return CaptureSettings(enabled=True, root=str(root), **kw)


def classified(probability: float) -> ClassificationResult:
    top = [ClassScore(index=1, label="x", probability=probability)]
    return ClassificationResult(model="m", model_version="1", image=ImageSize(width=4, height=4), predictions=top)


def test_policy() -> None:
    s = CaptureSettings(enabled=True, every_nth=5, on_person=True, below_confidence=0.3)
    assert should_capture(s, 10, NOBODY) == "every_nth"
    assert should_capture(s, 11, DETECTION) == "person"
    assert should_capture(s, 11, NOBODY) is None
    low, high = classified(0.2), classified(0.9)
    assert should_capture(s, 11, low) == "low_confidence" and should_capture(s, 11, high) is None


def test_local_captures_are_complete_files_in_dated_stream_folders(tmp_path: Path) -> None:
    cap = Capturer(settings(tmp_path / "cap", every_nth=1))
    cap.start()
    now = time.time()
    for i in range(1, 4):
        assert cap.offer(detection_event("lobby", i, person=True, at=now), frame(i))
    cap.stop()
    t = time.gmtime(now)
    folder = tmp_path / "cap" / f"{t.tm_year:04d}" / f"{t.tm_mon:02d}" / f"{t.tm_mday:02d}" / "lobby"
    metas = sorted(folder.glob("*.json"))
    assert len(metas) == 3 and len(list(folder.glob("*.jpg"))) == 3
    assert not list(folder.glob(".*")), "no temp files left"
    meta = DetectionCapture.model_validate_json(metas[0].read_text())  # the record is the typed contract
    assert meta.model == "person_detector" and meta.model_version == "1" and meta.capture_reason == "every_nth"
    assert (folder / meta.file.name).read_bytes()[:3] == b"\xff\xd8\xff"
    assert (meta.file.width, meta.file.height) == (160, 90) and meta.image.width == 640, "file vs source size"
    assert cap.stats.captured == 3


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    cap = Capturer(settings(tmp_path / "cap", every_nth=1, queue_size=2))
    release = threading.Event()
    real_write = cap._write
    cap._write = lambda c: (release.wait(10), real_write(c))[1]  # type: ignore[method-assign]
    cap.start()
    t0 = time.perf_counter()
    results = [cap.offer(detection_event("s", i), frame(i)) for i in range(1, 11)]
    assert time.perf_counter() - t0 < 0.5, "offer never waits for the writer"
    release.set()
    cap.stop()
    assert results.count(True) <= 3 and cap.stats.dropped_queue_full == results.count(False) >= 7
