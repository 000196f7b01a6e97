"""Fixtures shared by every tier: an exported test model with deterministic weights."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.helpers import PYTHON, ROOT
from harness.synthetic import synthetic_checkpoint, synthetic_detector_checkpoint

MODEL = "mobilenet_v3_small"
DETECTOR = "person_detector"
DETECTOR_K = 100
EXPORT_FRAME = (640, 360)  # width, height the detector is traced at; tests use other sizes too


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "synthetic.pth")


@pytest.fixture(scope="session")
def detector_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_detector_checkpoint(tmp_path_factory.mktemp("ckpt") / "detector.pth")


def run_export(*args: str) -> str:
    result = subprocess.run(  # noqa: PLW1510 - the test asserts on returncode
        [PYTHON, "-m", "export", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"export failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, detector_checkpoint: Path) -> Path:
    """A model repository written by the real export CLI from the synthetic checkpoints:
    the classifier, and the detector with ``box_score_thresh=0`` (K boxes per image to compare)."""
    repo = tmp_path_factory.mktemp("model_repository")
    run_export(MODEL, "--weights", str(checkpoint), "--repo", str(repo))
    w, h = EXPORT_FRAME
    run_export(
        DETECTOR, "--weights", str(detector_checkpoint), "--repo", str(repo), "--score-thresh", "0",
        "--frame-size", f"{w}x{h}", "--max-detections", str(DETECTOR_K),
    )  # fmt: skip
    return repo


@pytest.fixture(scope="session")
def onnx_path(exported_repo: Path) -> Path:
    return exported_repo / MODEL / "1" / "model.onnx"
