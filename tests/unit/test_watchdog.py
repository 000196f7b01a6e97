"""The watchdog against a decoder that wedges: no timeout of its own ever returns.

No such decoder can be produced on purpose here (no webcam, and every network
source has a read timeout), so the OpenCV reader's ``_open`` is patched to hand out a
capture that blocks in ``grab()`` until released.  Real pipes and frozen RTSP
servers are covered by tests/integration/test_ingest.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from gateway.ingest import OpenCvReader, ReaderConfig, StateChange, StreamState, Watchdog, parse_source
from harness.helpers import wait_until

CONFIG = ReaderConfig(sample_fps=10, width=32, height=18, read_timeout_s=0.5, backoff_initial_s=0.05)


class FakeCapture:
    """A live source at 50 fps whose ``grab()`` blocks once ``wedged`` is set, until ``released``."""

    def __init__(self, wedged: threading.Event | None = None) -> None:
        self.wedged = wedged or threading.Event()
        self.released = threading.Event()
        self.grabs_after_release = 0
        self.closed = threading.Event()

    def isOpened(self) -> bool:
        return True

    def grab(self) -> bool:
        if self.wedged.is_set():
            self.released.wait(30)
            self.grabs_after_release += 1
        time.sleep(0.02)  # the source's own frame rate
        return True

    def retrieve(self) -> tuple[bool, np.ndarray]:
        return True, np.zeros((18, 32, 3), np.uint8)

    def get(self, prop: int) -> float:
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        return False

    def release(self) -> None:
        self.closed.set()


def test_a_wedged_decoder_is_stalled_then_restarted_on_a_fresh_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a reader whose first capture wedges after a while, and a second one that works
    first, second = FakeCapture(), FakeCapture()
    captures = iter([first, second])
    monkeypatch.setattr(OpenCvReader, "_open", lambda self: next(captures))
    changes: list[StateChange] = []
    reader = OpenCvReader("cam", parse_source("rtsp://cam.local/x"), CONFIG, on_state=changes.append)
    dog = Watchdog(interval_s=0.05)
    dog.watch(reader)
    dog.start()
    reader.start()
    try:
        wait_until(lambda: reader.stats.frames_sampled >= 3, 5, 0.02, what="frames")
        # when the decoder wedges (grab() never returns on its own)
        first.wedged.set()
        # then the stream is stalled, restarted on a fresh thread, and runs on the new capture
        wait_until(lambda: reader.generation == 1, 5, 0.02, what="a restart")
        wait_until(lambda: reader.state is StreamState.RUNNING, 5, 0.02, what="running on the new capture")
        states = [c.new for c in changes]
        assert states[-3:] == [StreamState.STALLED, StreamState.RECONNECTING, StreamState.RUNNING], states
        assert reader.stats.stalls == 1
        index = reader.stats.frames_sampled
        # and when the wedged call finally returns, the abandoned thread closes its capture and
        # leaves: it publishes nothing and changes no state
        first.released.set()
        wait_until(first.closed.is_set, 5, 0.02, what="the abandoned capture closed")
        assert first.grabs_after_release == 1
        wait_until(lambda: reader.stats.frames_sampled > index + 3, 5, 0.02, what="frames from the new capture")
        assert [c.new for c in changes][-1] is StreamState.RUNNING and reader.generation == 1
    finally:
        dog.stop()
        reader.stop()
        assert reader.join(5)
    assert second.closed.is_set() and [c.new for c in changes][-1] is StreamState.STOPPED


def test_the_watchdog_leaves_healthy_and_idle_readers_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    capture = FakeCapture()
    monkeypatch.setattr(OpenCvReader, "_open", lambda self: capture)
    reader = OpenCvReader("cam", parse_source("rtsp://cam.local/x"), CONFIG)
    dog = Watchdog(interval_s=0.05)
    dog.watch(reader)
    dog.check()  # not started yet: no frame, nothing to judge
    assert reader.state.value == "connecting"
    reader.start()
    try:
        wait_until(lambda: reader.stats.frames_read > 10, 5, 0.02, what="frames")
        for _ in range(20):  # a second of checks while frames flow
            dog.check()
            time.sleep(0.05)
        assert reader.state is StreamState.RUNNING and reader.stats.stalls == 0 and reader.generation == 0
    finally:
        reader.stop()
        reader.join(5)


def test_stop_is_idempotent_and_a_stopped_reader_is_not_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpenCvReader, "_open", lambda self: FakeCapture())
    reader = OpenCvReader("cam", parse_source("rtsp://cam.local/x"), CONFIG)
    dog = Watchdog()
    dog.start()
    dog.stop()
    dog.stop()
    reader.start()
    wait_until(lambda: reader.state is StreamState.RUNNING, 5, 0.02, what="running")
    reader.stop()
    assert reader.join(5)
    assert reader.restart("late") is False and reader.generation == 0


def test_a_pipe_is_never_reopened(tmp_path: Any) -> None:
    import os

    fifo = tmp_path / "cam.ts"
    os.mkfifo(fifo)
    spec = parse_source(str(fifo))
    assert spec.reopenable is False
    assert parse_source(str(tmp_path / "clip.mp4")).reopenable and parse_source("rtsp://h/x").reopenable
