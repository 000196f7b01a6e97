"""The person detector export: TorchScript and ONNX against stock eager torchvision.

Parity runs on images of sizes other than the one the ONNX graph was traced at
(640x360), at batch sizes 1 to 4, with the synthetic checkpoint exported with
``box_score_thresh=0`` (K = 100 detections per image to compare).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.detector import DEFAULT_ARCH, BuiltDetector, build_detector, export_onnx
from export.parity import Detections, check_detector, compare_detections, eager_detections, scenes
from export.repository import DetectorLayout, detector_config
from harness.helpers import ROOT
from tests.conftest import DETECTOR, DETECTOR_K, run_export

OTHER_SIZES = [(400, 400), (384, 512)]  # H, W: neither is the 360x640 the graph was traced at
# Fixed images.  Over 128 other scenes, onnxruntime matched eager torch on every detection
# of every image; one scene out of ~150 tried showed two overlapping boxes of one class
# with equal scores (to 1e-5) where NMS kept a different one of the pair.
SEED = 1


@pytest.fixture(scope="module")
def built(detector_checkpoint: Path) -> BuiltDetector:
    return build_detector(DEFAULT_ARCH, str(detector_checkpoint), score_thresh=0.0, max_detections=DETECTOR_K)


def version_dir(repo: Path) -> Path:
    return repo / DETECTOR / "1"


@pytest.mark.parametrize("fmt", ["wrapper", "torchscript", "onnx"])
def test_every_format_matches_eager_torchvision_at_other_sizes_and_batches(
    built: BuiltDetector, exported_repo: Path, fmt: str
) -> None:
    # given the exported files and stock torchvision (eager) with the same weights
    v = version_dir(exported_repo)
    checks = check_detector(
        built.reference,
        built.module,
        torchscript=v / "model.pt" if fmt == "torchscript" else None,
        onnx=v / "model.onnx" if fmt == "onnx" else None,
        sizes=OTHER_SIZES,
        batches=(1, 2, 3, 4),
        max_detections=DETECTOR_K,
        score_thresh=0.0,
        seed=SEED,
    )
    # then every image's detections match: labels equal, boxes within 1 px or IoU >= 0.99, scores within 1e-3
    mine = [c for c in checks if c.fmt == fmt]
    assert len(mine) == len(OTHER_SIZES) * 4
    for c in mine:
        for i, d in enumerate(c.diffs):
            assert d.ok, f"{fmt} batch {c.batch} image {i} at {c.width}x{c.height}: {d}"
            assert d.matched >= 20, f"too few detections compared ({d.matched}): the test would prove little"
            assert d.max_score <= 1e-3 and (d.max_box_px <= 1.0 or d.min_iou >= 0.99)
    if fmt != "onnx":  # torch against torch: bit-identical
        assert all(d.max_box_px == 0 and d.max_score == 0 for c in mine for d in c.diffs)


def test_onnx_takes_one_image_of_any_size(exported_repo: Path) -> None:
    session = ort.InferenceSession(str(version_dir(exported_repo) / "model.onnx"), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert shape[0] == 1 and isinstance(shape[2], str) and isinstance(shape[3], str), shape
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "num_detections"]


def test_torchscript_runs_any_batch_size(exported_repo: Path) -> None:
    import torchvision  # noqa: F401 - registers the ops the TorchScript file calls

    model = torch.jit.load(str(version_dir(exported_repo) / "model.pt"))  # type: ignore[no-untyped-call]
    for b in (1, 3, 5):
        boxes, scores, labels, num = model(torch.from_numpy(scenes(b, 300, 500, seed=b)))
        assert boxes.shape == (b, DETECTOR_K, 4) and scores.shape == (b, DETECTOR_K)
        assert labels.dtype == torch.int64 and num.shape == (b,)
        assert bool((labels[0, int(num[0]) :] == -1).all()), "padding is labelled -1"


def test_stock_transform_is_caught_by_parity_at_400x400(built: BuiltDetector, tmp_path: Path) -> None:
    # given an ONNX graph traced with torchvision's own transform (float32 resize scale)
    built.module.model.transform, exact = built.reference.transform, built.module.model.transform
    try:
        export_onnx(built.module, tmp_path / "stock.onnx", height=360, width=640)
    finally:
        built.module.model.transform = exact
    checks = check_detector(
        built.reference,
        built.module,
        torchscript=None,
        onnx=tmp_path / "stock.onnx",
        sizes=[(400, 400)],
        batches=(1,),
        max_detections=DETECTOR_K,
        score_thresh=0.0,
    )
    # then 400 * float32(320/400) = 319 rows instead of eager's 320, and the parity check fails
    onnx = next(c for c in checks if c.fmt == "onnx")
    assert not onnx.ok, "the parity check must catch the float32 resize rounding"


def test_matcher_ignores_order_and_catches_a_shifted_box() -> None:
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.uniform(0, 300, (5, 4)).astype(np.float32).reshape(5, 2, 2), axis=1).reshape(5, 4)
    ref = Detections(boxes, np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32), np.array([1, 1, 3, 1, 5]))
    perm = np.array([2, 0, 4, 1, 3])
    same = Detections(ref.boxes[perm] + 0.4, ref.scores[perm] + 5e-4, ref.labels[perm])
    assert compare_detections(ref, same, max_detections=100).ok
    shifted = Detections(ref.boxes.copy(), ref.scores, ref.labels)
    shifted.boxes[2] += np.array([3, 0, 3, 0], np.float32)
    assert compare_detections(ref, shifted, max_detections=100).missing == 2  # once each way
    relabelled = Detections(ref.boxes, ref.scores, np.array([1, 1, 3, 1, 6]))
    assert not compare_detections(ref, relabelled, max_detections=100).ok


def test_eager_reference_is_stock_torchvision(built: BuiltDetector) -> None:
    # the wrapper's exact-size transform gives stock eager torchvision's detections, bit for bit
    x = scenes(2, 400, 400, seed=3)
    want = eager_detections(built.reference, x)
    with torch.no_grad():
        boxes, scores, labels, num = (t.numpy() for t in built.module(torch.from_numpy(x)))
    for i in range(2):
        got = Detections.from_padded(boxes[i], scores[i], labels[i], num[i])
        assert np.array_equal(got.boxes, want[i].boxes[:DETECTOR_K]) and np.array_equal(
            got.labels, want[i].labels[:DETECTOR_K]
        )


def test_cli_prints_parity_and_refuses_unknown_formats(detector_checkpoint: Path, tmp_path: Path) -> None:
    out = run_export(DETECTOR, "--weights", str(detector_checkpoint), "--repo", str(tmp_path), "--formats", "onnx")
    assert "parity onnx vs eager torch" in out and (tmp_path / DETECTOR / "1" / "model.onnx").is_file()
    assert not (tmp_path / DETECTOR / "1" / "model.pt").exists()


def test_committed_detector_config_is_what_export_writes() -> None:
    from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_320_FPN_Weights

    labels = tuple(FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1.meta["categories"])
    layout = DetectorLayout(
        name=DETECTOR, arch=DEFAULT_ARCH, labels=labels, max_detections=100, warmup_hw=(360, 640),
        min_size=320, max_size=640,
    )  # fmt: skip
    committed = ROOT / "model_repository" / DETECTOR
    assert (committed / "config.pbtxt").read_text() == detector_config(layout)
    assert tuple((committed / "labels.txt").read_text().splitlines()) == labels
