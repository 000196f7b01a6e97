"""The compose exporter's job (python -m export.prepare): fill a model repository, and refuse one
the target Triton could not load, run with the torch of the target (.venv-ngc: torch 2.5.1, the
LibTorch of NGC 24.10, as in deploy/exporter/Dockerfile) and with the developers' torch 2.14."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.helpers import PYTHON, ROOT

NGC_PYTHON = ROOT / ".venv-ngc" / "bin" / "python"
FAST = ["--weights", "random", "--detector-weights", "random"]


def prepare(python: Path | str, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "export.prepare", "--repo", str(repo), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A deployment's repository before the exporter ran: the committed configs and labels only."""
    out = tmp_path / "models"
    for model in ("mobilenet_v3_small", "person_detector"):
        (out / model).mkdir(parents=True)
        for name in ("config.pbtxt", "labels.txt"):
            shutil.copy(ROOT / "model_repository" / model / name, out / model / name)
    return out


def test_a_torchscript_from_a_newer_torch_is_refused_then_fixed_by_the_exporter(repo: Path) -> None:
    # given a repository filled by the developers' torch (2.14): `make model`
    done = prepare(PYTHON, repo, *FAST, "--libtorch", "2.14")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (repo / "person_detector" / "1" / "model.pt").is_file() and "exported: mobilenet_v3_small" in done.stdout
    # when the exporter, with the target's torch 2.5.1, checks it
    refused = prepare(NGC_PYTHON, repo, *FAST)
    # then it refuses, with the error LibTorch 2.5 would give at Triton's start
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "person_detector/1/model.pt: LibTorch 2.5 cannot run it: Unknown builtin op" in refused.stderr
    # and exporting again with it makes a repository the target loads
    fixed = prepare(NGC_PYTHON, repo, *FAST, "--force")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "ok: " in fixed.stdout and str(repo / "person_detector" / "1" / "model.pt") in fixed.stdout


def test_a_check_with_another_torch_than_the_targets_proves_nothing_and_says_so(repo: Path) -> None:
    done = prepare(PYTHON, repo, *FAST)  # torch 2.14 here, target LibTorch 2.5 (the default)
    assert done.returncode == 1 and "a load check here proves nothing" in done.stderr, done.stderr[-2000:]


def test_a_broken_config_and_an_opset_too_new_are_refused(repo: Path) -> None:
    assert prepare(PYTHON, repo, *FAST, "--libtorch", "2.14").returncode == 0
    (repo / "mobilenet_v3_small" / "config.pbtxt").write_text(
        'name: "mobilenet_v3_small"\nplatform: "tensorflow_savedmodel"\n'
    )
    done = prepare(PYTHON, repo, *FAST, "--libtorch", "2.14", "--max-opset", "9")
    assert done.returncode == 1
    assert "backend 'tensorflow_savedmodel' is not one the target serves" in done.stderr
    assert "mobilenet_v3_small/1/model.onnx: opset" in done.stderr and "> 9" in done.stderr
