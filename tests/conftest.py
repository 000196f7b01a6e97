"""Fixtures shared by every tier: an exported test model (random weights, seeded)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT

MODEL = "mobilenet_v3_small"


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository exported by the real CLI: committed config, random weights (seed 0)."""
    repo = tmp_path_factory.mktemp("model_repository")
    result = subprocess.run(
        [PYTHON, "-m", "export", MODEL, "--weights", "random", "--seed", "0", "--repo", str(repo)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"export failed:\n{result.stdout}\n{result.stderr}"
    return repo


@pytest.fixture(scope="session")
def onnx_path(exported_repo: Path) -> Path:
    return exported_repo / MODEL / "1" / "model.onnx"
