"""The retraining loop, for real: a synthetic three-class dataset → ``python -m
training.train`` (MobileNetV3-Small from random weights, on the CPU) → ``python -m
export --version next`` into the repository a running embedded Triton serves → the
running gateway classifies held-out images with the new labels.  Nothing restarts,
and requests sent all through the switch are all answered."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from harness.helpers import PYTHON, ROOT, gateway, wait_until
from harness.synthetic import PATTERNS, pattern_dataset
from tests.integration.conftest import new_triton

pytestmark = pytest.mark.integration

MODEL = "mobilenet_v3_small"


def run(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the tests assert on returncode
        [PYTHON, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def predict(client: httpx.Client, url: str, image: Path) -> dict[str, object]:
    r = client.post(f"{url}/predict", files={"image": (image.name, image.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


@pytest.mark.timeout(600)
def test_train_export_and_serve_a_new_version(exported_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo / MODEL, repo / MODEL)  # version 1: the 1000-class test model
    data = pattern_dataset(tmp_path / "data", 70, seed=11)
    held_out = pattern_dataset(tmp_path / "held_out", 20, seed=12)
    images = sorted(held_out.rglob("*.jpg"))

    triton = new_triton(repo, tmp_path / "triton")
    triton.watch_s = 1.0
    with triton, gateway({"APP_TRITON__URL": triton.grpc_url}, tmp_path / "gateway.log") as gw:
        assert gw.proc is not None
        pid = gw.proc.pid
        with httpx.Client(timeout=30) as client:
            before = predict(client, gw.url, images[0])
            assert before["model_version"] == "1" and len(before["predictions"]) == 5  # type: ignore[arg-type]

            trained = run(
                "training.train", str(data), "--out", str(tmp_path / "run"), "--weights", "random",
                "--epochs", "12", "--batch-size", "16", "--workers", "1", timeout=600,
            )  # fmt: skip
            assert trained.returncode == 0, trained.stderr[-3000:]
            assert "validation accuracy:" in trained.stdout and "train:" in trained.stderr  # a progress bar
            report = json.loads((tmp_path / "run" / "train.json").read_text())
            assert report["classes"] == sorted(PATTERNS) and len(report["epochs"]) == 12
            labels = (tmp_path / "run" / "labels.txt").read_text().split()
            assert labels == sorted(PATTERNS)

            # Requests keep flowing while the new version is exported and loaded.
            stop = threading.Event()
            answered: Counter[tuple[int, str]] = Counter()

            def traffic() -> None:
                with httpx.Client(timeout=30) as c:
                    while not stop.is_set():
                        r = c.post(
                            f"{gw.url}/predict", files={"image": ("a.jpg", images[0].read_bytes(), "image/jpeg")}
                        )
                        key = r.json()["model_version"] if r.status_code == 200 else r.text[:300]
                        answered[(r.status_code, key)] += 1

            thread = threading.Thread(target=traffic, daemon=True)
            thread.start()
            try:
                exported = run(
                    "export", MODEL, "--weights", str(tmp_path / "run" / "model.pt"),
                    "--labels", str(tmp_path / "run" / "labels.txt"), "--repo", str(repo),
                    "--version", "next", "--write-config", timeout=300,
                )  # fmt: skip
                assert exported.returncode == 0, exported.stderr[-3000:]
                assert (repo / MODEL / "2" / "model.onnx").is_file()
                assert (repo / MODEL / "2" / "labels.txt").read_text().split() == labels
                assert (repo / MODEL / "labels.txt").read_text().split() == labels
                wait_until(lambda: answered[(200, "2")] >= 3, 120, what="answers from version 2")
            finally:
                stop.set()
                thread.join(30)
            assert set(answered) <= {(200, "1"), (200, "2")}, f"a request failed during the switch: {answered}"
            assert answered[(200, "1")] > 0, "traffic started before the switch"

            right = 0
            for image in images:
                body = predict(client, gw.url, image)
                assert body["model_version"] == "2"
                top = body["predictions"]
                assert isinstance(top, list) and len(top) == 3  # the default top-5, cut to 3 classes
                assert {p["label"] for p in top} == set(labels)
                right += top[0]["label"] == image.parent.name
            accuracy = right / len(images)
            assert accuracy >= 0.9, f"held-out accuracy {accuracy:.3f} (train.json: {report['final_val_accuracy']})"

            ready = client.get(f"{gw.url}/health/ready").json()
            assert ready["components"]["models"][MODEL]["version"] == "2"
        assert gw.proc is not None and gw.proc.pid == pid and gw.proc.poll() is None, "the gateway kept running"
    assert "now serving version 2 (was 1): 3 classes" in gw.log_path.read_text()
