"""``python -m training.capture``: frames from a real file and a real RTSP server into an
ImageFolder tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import pytest

from harness.helpers import PYTHON, ROOT
from harness.peers.clips import write_clip
from harness.peers.rtsp import RtspServer

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the tests assert on returncode
        [PYTHON, "-m", "training.capture", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_file_frames_land_in_the_label_folder(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", seconds=2.0, width=320, height=180)
    r = run(str(clip), "--label", "cat", "--out", str(tmp_path / "data"), "--fps", "5", "--count", "6",
            "--width", "160", "--height", "90")  # fmt: skip
    assert r.returncode == 0, r.stderr
    images = sorted((tmp_path / "data" / "cat").glob("*.jpg"))
    assert len(images) == 6 and not list((tmp_path / "data" / "cat").glob(".*"))
    image = cv2.imread(str(images[0]))
    assert image is not None and image.shape == (90, 160, 3)
    assert "6/6" in r.stderr, "a progress bar"


def test_rtsp_frames(tmp_path: Path) -> None:
    server = RtspServer()
    try:
        r = run(server.url, "--label", "dog", "--out", str(tmp_path / "data"), "--fps", "4", "--count", "3")
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "data" / "dog").glob("*.jpg"))) == 3


def test_short_source_and_bad_label_are_reported(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "short.mp4", seconds=0.4)
    r = run(str(clip), "--label", "x", "--out", str(tmp_path / "data"), "--fps", "25", "--count", "50")
    assert r.returncode == 1 and "stopped after" in r.stderr and "of 50 frames" in r.stderr
    bad = run(str(clip), "--label", "../escape", "--out", str(tmp_path / "data"))
    assert bad.returncode == 2 and "label" in bad.stderr
    assert not (tmp_path / "escape").exists()
