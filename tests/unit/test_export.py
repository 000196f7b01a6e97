"""The export CLI: ONNX parity with eager torch, weights handling, config and labels."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

from export.classifier import build_mobilenet_v3_small
from export.parity import OutputDiff
from export.repository import ClassifierLayout, classifier_config
from gateway.preprocess import classifier_input
from harness.helpers import PYTHON, ROOT, free_port, scene
from tests.conftest import MODEL


def run_export(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the test asserts on returncode
        [PYTHON, "-m", "export", MODEL, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def images(n: int) -> np.ndarray:
    return np.stack(
        [classifier_input(scene(320 + 40 * i, 240, seed=i), resize_size=256, crop_hw=(224, 224)) for i in range(n)]
    )


def ort_outputs(path: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probabilities"], {"input": batch})
    return logits, probs


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_matches_eager_torch_at_any_batch(onnx_path: Path, checkpoint: Path, batch: int) -> None:
    # given the exported graph and the same checkpoint in eager torch
    eager = build_mobilenet_v3_small(str(checkpoint)).module
    x = images(batch)
    # when both run the same preprocessed images
    logits, probs = ort_outputs(onnx_path, x)
    with torch.no_grad():
        want_logits, want_probs = eager(torch.from_numpy(x))
    # then they agree (the dynamic batch axis works)
    assert logits.shape == (batch, 1000)
    assert np.abs(logits - want_logits.numpy()).max() < 1e-4
    assert np.abs(probs - want_probs.numpy()).max() < 1e-6


def test_folded_normalization_equals_torchvision_preset(onnx_path: Path, checkpoint: Path) -> None:
    # the uint8 graph must equal torchvision's float pipeline followed by the plain model
    plain = mobilenet_v3_small(weights=None).eval()
    plain.load_state_dict(torch.load(checkpoint, weights_only=True))
    preset = MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms()
    x = images(2)
    from torchvision.transforms import functional as F

    ref_in = F.normalize(F.convert_image_dtype(torch.from_numpy(x), torch.float), preset.mean, preset.std)
    with torch.no_grad():
        want = plain(ref_in).numpy()
    logits, _ = ort_outputs(onnx_path, x)
    assert np.abs(logits - want).max() < 1e-4


def test_cli_reports_parity_and_writes_repository(tmp_path: Path) -> None:
    result = run_export("--weights", "random", "--repo", str(tmp_path))
    assert result.returncode == 0, result.stderr
    diffs = [float(m) for m in re.findall(r"max abs diff ([0-9.e+-]+)", result.stdout)]
    assert len(diffs) == 2 and max(diffs) <= 1e-4, result.stdout
    model_dir = tmp_path / MODEL
    assert (model_dir / "1" / "model.onnx").is_file()
    labels = (model_dir / "labels.txt").read_text().splitlines()
    assert labels == list(MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"])


def test_checkpoint_weights_are_loaded(tmp_path: Path) -> None:
    # given a fine-tuned state dict (here: another seed), saved with torch.save
    torch.manual_seed(123)
    model = mobilenet_v3_small(weights=None).eval()
    ckpt = tmp_path / "finetuned.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    # when it is exported
    result = run_export("--weights", str(ckpt), "--repo", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    # then the served graph computes that model, not another
    x = images(2)
    logits, _ = ort_outputs(tmp_path / "repo" / MODEL / "1" / "model.onnx", x)
    from torchvision.transforms import functional as F

    preset = MobileNet_V3_Small_Weights.IMAGENET1K_V1.transforms()
    with torch.no_grad():
        want = model(F.normalize(F.convert_image_dtype(torch.from_numpy(x), torch.float), preset.mean, preset.std))
    assert np.abs(logits - want.numpy()).max() < 1e-4


def test_checkpoint_with_own_classes_needs_and_writes_labels(tmp_path: Path) -> None:
    model = mobilenet_v3_small(weights=None, num_classes=3).eval()
    ckpt = tmp_path / "three.pt"
    torch.save(model.state_dict(), ckpt)
    missing = run_export("--weights", str(ckpt), "--repo", str(tmp_path / "repo"))
    assert missing.returncode == 1 and "--labels" in missing.stderr, missing.stderr
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    ok = run_export("--weights", str(ckpt), "--labels", str(labels), "--repo", str(tmp_path / "repo"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "repo" / MODEL / "labels.txt").read_text() == "cat\ndog\nbird\n"
    assert "dims: [ 3 ]" in (tmp_path / "repo" / MODEL / "config.pbtxt").read_text()


def test_default_weights_offline_fail_with_the_alternatives(tmp_path: Path) -> None:
    # given no route to the weights (a proxy on a closed loopback port) and an empty torch cache
    dead = f"http://127.0.0.1:{free_port()}"
    env = {
        "HTTPS_PROXY": dead,
        "https_proxy": dead,
        "HTTP_PROXY": dead,
        "http_proxy": dead,
        "NO_PROXY": "",
        "no_proxy": "",
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    result = run_export("--weights", "default", "--repo", str(tmp_path / "repo"), env=env)
    assert result.returncode == 1
    assert "--weights random" in result.stderr and "--weights PATH" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "repo" / MODEL / "1" / "model.onnx").exists()


def test_bad_checkpoint_path_is_reported(tmp_path: Path) -> None:
    result = run_export("--weights", str(tmp_path / "missing.pth"), "--repo", str(tmp_path / "repo"))
    assert result.returncode == 1 and "no such file" in result.stderr


def test_incompatible_committed_config_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / MODEL
    model_dir.mkdir()
    layout = ClassifierLayout(name=MODEL, num_classes=10, input_dims=(3, 224, 224), input_dtype="TYPE_UINT8")
    (model_dir / "config.pbtxt").write_text(classifier_config(layout))
    result = run_export("--weights", "random", "--repo", str(tmp_path))
    assert result.returncode == 1 and "does not describe the exported model" in result.stderr, result.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.pbtxt"], "refused before anything is written"


def test_next_version_publishes_a_new_directory_with_its_labels(tmp_path: Path, checkpoint: Path) -> None:
    repo = tmp_path / "repo"
    assert run_export("--weights", str(checkpoint), "--repo", str(repo)).returncode == 0
    three = mobilenet_v3_small(weights=None, num_classes=3).eval()
    ckpt = tmp_path / "three.pt"
    torch.save(three.state_dict(), ckpt)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    args = ("--weights", str(ckpt), "--labels", str(labels), "--repo", str(repo), "--version", "next")
    refused = run_export(*args)  # 3 classes against a 1000-class config: only with --write-config
    assert refused.returncode == 1 and "--write-config" in refused.stderr
    assert sorted(p.name for p in (repo / MODEL).iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    ok = run_export(*args, "--write-config")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (repo / MODEL).iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert (repo / MODEL / "2" / "labels.txt").read_text() == "cat\ndog\nbird\n"
    assert (repo / MODEL / "labels.txt").read_text() == "cat\ndog\nbird\n"
    assert "dims: [ 3 ]" in (repo / MODEL / "config.pbtxt").read_text()
    assert (repo / MODEL / "2").stat().st_mode & 0o777 == 0o755
    third = run_export(*args, "--write-config")
    assert third.returncode == 0 and (repo / MODEL / "3" / "model.onnx").is_file()


def test_a_failed_export_publishes_no_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_export("--weights", "random", "--repo", str(repo)).returncode == 0
    before = (repo / MODEL / "1" / "model.onnx").read_bytes()
    failed = run_export("--weights", "random", "--seed", "3", "--repo", str(repo), "--tolerance", "-1")
    assert failed.returncode == 1 and "differs from eager torch" in failed.stderr
    again = run_export("--weights", "random", "--repo", str(repo), "--version", "next", "--tolerance", "-1")
    assert again.returncode == 1
    assert sorted(p.name for p in (repo / MODEL).iterdir()) == ["1", "config.pbtxt", "labels.txt"], "no staging left"
    assert (repo / MODEL / "1" / "model.onnx").read_bytes() == before, "version 1 untouched"


def test_parity_tolerance_scales_with_large_outputs() -> None:
    assert OutputDiff(5e-5, 0.9).within(1e-4)
    assert not OutputDiff(2e-4, 0.9).within(1e-4)
    assert OutputDiff(4e-4, 198.0).within(1e-4)  # a fine-tuned head's logits: float32 rounding scales
    assert not OutputDiff(float("nan"), 1.0).within(1e-4)


def test_committed_repository_is_what_export_writes() -> None:
    # the committed config.pbtxt and labels.txt must not drift from the exporter
    layout = ClassifierLayout(name=MODEL, num_classes=1000, input_dims=(3, 224, 224), input_dtype="TYPE_UINT8")
    committed = ROOT / "model_repository" / MODEL
    assert (committed / "config.pbtxt").read_text() == classifier_config(layout)
    assert (committed / "labels.txt").read_text().splitlines() == list(
        MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"]
    )
