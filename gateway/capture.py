"""Inference capture: keep the frames people need to improve their models.

``Capturer`` decides by policy (every Nth frame, a person detected, top-1 confidence
below a threshold) and hands the frame to its own writer thread through a bounded
queue: a full queue drops the capture and counts it, inference never waits.  The
writer encodes a JPEG and its record (``schema.CaptureRecord``: the prediction event
plus the reason and the file) under ``root/YYYY/MM/DD/<stream>/``, each
written to a temp file and renamed, with names it generates (time, frame index, a
random suffix); a client's text never becomes a path (stream ids are validated as
``[A-Za-z0-9_-]{1,64}`` by the settings).

With S3 configured, ``root`` is a spool: ``S3Uploader`` drains it in the background,
image before metadata, under deterministic keys (the path relative to the spool),
so a retry overwrites instead of duplicating; a capture leaves the spool only once
both objects are stored.  boto3 runs in ``standard`` retry mode with explicit
timeouts, and the uploader adds its own capped backoff between passes while S3 is
down.  The spool is capped: past ``spool_max_captures`` the oldest are deleted and
counted.  Nothing here imports FastAPI.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from gateway.config import CaptureSettings
from gateway.schema import (
    CapturedFile,
    CaptureReason,
    ClassificationEvent,
    ClassificationResult,
    DetectionEvent,
    DetectionResult,
    capture_record,
)

log = logging.getLogger(__name__)


@dataclass
class CaptureStats:
    offered: int = 0  # predictions checked against the policy
    captured: int = 0  # written to disk
    dropped_queue_full: int = 0
    write_errors: int = 0
    uploaded: int = 0  # captures (image + metadata) stored in S3
    upload_errors: int = 0
    spool_dropped: int = 0  # oldest captures deleted by the spool cap
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


@dataclass(frozen=True)
class Capture:
    event: ClassificationEvent | DetectionEvent
    reason: CaptureReason
    image_bgr: np.ndarray


def should_capture(
    settings: CaptureSettings, frame_index: int, result: ClassificationResult | DetectionResult
) -> CaptureReason | None:
    """The policy that matched, or None."""
    if settings.every_nth and frame_index % settings.every_nth == 0:
        return "every_nth"
    if settings.on_person and isinstance(result, DetectionResult) and result.label == "person":
        return "person"
    threshold = settings.below_confidence
    top = result.predictions[0] if isinstance(result, ClassificationResult) and result.predictions else None
    if threshold is not None and top is not None and top.probability < threshold:
        return "low_confidence"
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class Capturer:
    """Owns the capture queue and its writer thread.  ``stop()`` is idempotent."""

    def __init__(self, settings: CaptureSettings) -> None:
        self.settings = settings
        self.root = Path(settings.root)
        self.stats = CaptureStats()
        self._queue: queue.Queue[Capture | None] = queue.Queue(maxsize=settings.queue_size)
        self._thread: threading.Thread | None = None
        self._uploader: S3Uploader | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
        self._thread.start()
        if self.settings.s3.bucket:
            self._uploader = S3Uploader(self.settings, self.root, self.stats)
            self._uploader.start()
        log.info("capture on: %s%s", self.root, f" -> s3://{self.settings.s3.bucket}" if self._uploader else "")

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)  # the poison pill: written captures are flushed first
            thread.join(10)
        uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.stop()

    def offer(self, event: ClassificationEvent | DetectionEvent, image_bgr: np.ndarray) -> bool:
        """Called from the inference loop with a finished prediction event and its frame; never blocks."""
        if self._thread is None:
            return False
        self.stats.add("offered")
        reason = should_capture(self.settings, event.frame, event)
        if reason is None:
            return False
        try:
            self._queue.put_nowait(Capture(event, reason, image_bgr))
        except queue.Full:
            self.stats.add("dropped_queue_full")
            return False
        return True

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write(item)
                self.stats.add("captured")
            except (OSError, ValueError, cv2.error):
                self.stats.add("write_errors")
                log.exception("capture of %s frame %d failed", item.event.stream, item.event.frame)

    def _write(self, c: Capture) -> None:
        e = c.event
        t = time.gmtime(e.captured_at)
        folder = self.root / f"{t.tm_year:04d}" / f"{t.tm_mon:02d}" / f"{t.tm_mday:02d}" / e.stream
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{int(e.captured_at * 1000)}-{e.frame:08d}-{secrets.token_hex(4)}"
        ok, jpeg = cv2.imencode(".jpg", c.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        height, width = c.image_bgr.shape[:2]
        record = capture_record(e, c.reason, CapturedFile(name=f"{stem}.jpg", width=width, height=height))
        _atomic_write(folder / f"{stem}.jpg", jpeg.tobytes())
        _atomic_write(folder / f"{stem}.json", record.model_dump_json().encode())  # last: the capture is complete


class S3Uploader:
    """Drains the spool into S3 on its own thread.  ``stop()`` is idempotent."""

    def __init__(self, settings: CaptureSettings, root: Path, stats: CaptureStats) -> None:
        import boto3
        from botocore.config import Config

        s3 = settings.s3
        self.settings, self.root, self.stats = settings, root, stats
        self.bucket, self.prefix = s3.bucket, s3.prefix
        self._client = boto3.client(
            "s3",
            endpoint_url=s3.endpoint_url,
            region_name=s3.region,
            config=Config(
                retries={"mode": "standard", "max_attempts": s3.max_attempts},
                connect_timeout=s3.connect_timeout_s,
                read_timeout=s3.read_timeout_s,
            ),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="capture-uploader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(30)

    def pending(self) -> list[Path]:
        """Complete captures (their metadata written last), oldest first."""
        return sorted((p for p in self.root.rglob("*.json") if not p.name.startswith(".")), key=lambda p: p.name)

    def _enforce_cap(self, pending: list[Path]) -> list[Path]:
        excess = len(pending) - self.settings.s3.spool_max_captures
        if excess <= 0:
            return pending
        for meta in pending[:excess]:
            meta.with_suffix(".jpg").unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
        self.stats.add("spool_dropped", excess)
        log.warning(
            "capture spool over %d captures: dropped the %d oldest", self.settings.s3.spool_max_captures, excess
        )
        return pending[excess:]

    def key(self, path: Path) -> str:
        return self.prefix + path.relative_to(self.root).as_posix()

    def _upload(self, meta: Path) -> None:
        image = meta.with_suffix(".jpg")
        self._client.put_object(
            Bucket=self.bucket, Key=self.key(image), Body=image.read_bytes(), ContentType="image/jpeg"
        )
        self._client.put_object(
            Bucket=self.bucket, Key=self.key(meta), Body=meta.read_bytes(), ContentType="application/json"
        )
        image.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)

    def _loop(self) -> None:
        s3 = self.settings.s3
        backoff = s3.backoff_initial_s
        while not self._stop.is_set():
            pending = self._enforce_cap(self.pending())
            failed = False
            for meta in pending:
                if self._stop.is_set():
                    return
                try:
                    self._upload(meta)
                    self.stats.add("uploaded")
                except Exception as e:  # noqa: BLE001 - botocore's many errors: retried next pass
                    self.stats.add("upload_errors")
                    log.warning("capture upload failed (%s); retrying in %.1fs", type(e).__name__, backoff)
                    failed = True
                    break
            if failed:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, s3.backoff_max_s)
            else:
                backoff = s3.backoff_initial_s
                self._stop.wait(s3.poll_s)
