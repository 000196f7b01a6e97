"""Every Faster R-CNN variant the exporter offers exports to the same contract.

Random weights (pretrained ones cannot be downloaded here): every box scores about
1/91, so onnxruntime's detections tie and are checked for the contract only;
TorchScript runs the same torch kernels as eager torch and must equal it exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.detector import build_detector, export_onnx, export_torchscript
from export.parity import Detections, eager_detections, scenes

K = 20
VARIANTS = ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch", VARIANTS)
def test_variant_exports_the_contract(arch: str, tmp_path: Path) -> None:
    import torchvision  # noqa: F401 - registers the ops the TorchScript file calls

    built = build_detector(arch, "random", score_thresh=0.0, max_detections=K)
    assert built.min_size == 800, "the full-size variants resize the shorter side to 800 inside the model"
    export_torchscript(built.module, tmp_path / "model.pt")
    export_onnx(built.module, tmp_path / "model.onnx", height=180, width=320)
    x = scenes(2, 150, 200, seed=1)  # another size than the traced one
    want = eager_detections(built.reference, x)
    scripted = torch.jit.load(str(tmp_path / "model.pt"))  # type: ignore[no-untyped-call]
    with torch.no_grad():
        boxes, scores, labels, num = (t.numpy() for t in scripted(torch.from_numpy(x)))
    assert boxes.shape == (2, K, 4) and scores.shape == (2, K) and labels.shape == (2, K) and num.shape == (2,)
    for i in range(2):
        got = Detections.from_padded(boxes[i], scores[i], labels[i], num[i])
        assert np.array_equal(got.boxes, want[i].boxes[:K]) and np.array_equal(got.scores, want[i].scores[:K])
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    b, s, c, n = session.run(None, {"images": x[:1]})
    assert b.shape == (1, K, 4) and s.shape == (1, K) and c.dtype == np.int64 and n.shape == (1,)
    assert int(n[0]) == min(K, len(want[0].scores)), "as many detections as eager torch"
    assert (b[0, : int(n[0]), 2] <= 200 + 1e-3).all() and (b[0, : int(n[0]), 3] <= 150 + 1e-3).all()
