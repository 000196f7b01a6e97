"""Fixtures shared by every tier: an exported test model with deterministic weights."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from torchvision.models import mobilenet_v3_small

from tests.helpers import PYTHON, ROOT

MODEL = "mobilenet_v3_small"


def synthetic_checkpoint(path: Path, seed: int = 0) -> Path:
    """Pretrained weights cannot be downloaded here.  A seeded random backbone whose
    classifier head has a large spread gives distinct, well-separated logits, so
    top-k and probabilities are meaningful to compare (torchvision's own random
    init gives near-uniform probabilities, i.e. ties)."""
    torch.manual_seed(seed)
    model = mobilenet_v3_small(weights=None)
    with torch.no_grad():
        head = model.classifier[3]
        assert isinstance(head, torch.nn.Linear)
        head.weight.normal_(0.0, 0.5)
        head.bias.normal_(0.0, 1.0)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "synthetic.pth")


@pytest.fixture(scope="session")
def exported_repo(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """A model repository written by the real export CLI from the synthetic checkpoint."""
    repo = tmp_path_factory.mktemp("model_repository")
    result = subprocess.run(  # noqa: PLW1510 - the test asserts on returncode
        [PYTHON, "-m", "export", MODEL, "--weights", str(checkpoint), "--repo", str(repo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"export failed:\n{result.stdout}\n{result.stderr}"
    return repo


@pytest.fixture(scope="session")
def onnx_path(exported_repo: Path) -> Path:
    return exported_repo / MODEL / "1" / "model.onnx"
