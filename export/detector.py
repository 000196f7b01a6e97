"""Faster R-CNN (COCO) as a batched, padded, tensor-in / tensor-out detector.

torchvision's detectors take a list of float images and return a list of dicts
with a different number of boxes per image.  Triton's dynamic batcher needs one
tensor in and fixed-shape tensors out, so ``BatchedDetector`` wraps the model:

- in: ``images [B, 3, H, W]`` uint8 (any H, W; torchvision's own transform
  resizes and normalizes inside the graph, as it does in eager mode);
- out: ``boxes [B, K, 4]`` float32 (x1, y1, x2, y2 in input pixels),
  ``scores [B, K]`` float32, ``labels [B, K]`` int64 (COCO category index,
  -1 in padding) and ``num_detections [B]`` int64, best first.

The same module is scripted for TorchScript (any batch size: the per-image loop
is compiled) and traced for ONNX at batch 1 (tracing unrolls the per-image loop,
so the ONNX graph takes one image; the serving side loops, see
``embedded_triton/onnx_model.py``).

Image-size traps, and what the parity tests found with torch 2.14 / torchvision 0.29:

- Baked-in sizes: the tracer warns that torchvision's box clipping and rescaling
  turn the image size into constants.  Tested at 360x640, 400x400, 480x640 and
  720x1280 against a graph traced at 360x640: they do not (the sizes stay graph
  values); the parity tests keep checking other sizes.
- Size rounding: scripted and traced torchvision compute the resize scale in
  float32, eager torchvision in float64.  At 400x400, ``400 * float32(320/400)``
  floors to 319 rows where eager makes 320: different detections.  The wrapper
  swaps in ``ExactResizeTransform``, which computes the size as eager does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.models import WeightsEnum
from torchvision.models import detection as det

from export.errors import WeightsUnavailable
from export.onnx_file import write_onnx
from export.scriptable import BatchedDetector, with_exact_resize
from export.weights import load_checkpoint, load_pretrained

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
DEFAULT_ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"
ARCHS: dict[str, tuple[Callable[..., det.FasterRCNN], WeightsEnum]] = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (
        det.fasterrcnn_mobilenet_v3_large_320_fpn,
        det.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1,
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": (
        det.fasterrcnn_mobilenet_v3_large_fpn,
        det.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1,
    ),
    "fasterrcnn_resnet50_fpn": (det.fasterrcnn_resnet50_fpn, det.FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
    "fasterrcnn_resnet50_fpn_v2": (det.fasterrcnn_resnet50_fpn_v2, det.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1),
}


@dataclass(frozen=True)
class BuiltDetector:
    module: BatchedDetector  # what is exported
    reference: det.FasterRCNN  # stock torchvision, eager: what every format must reproduce
    labels: list[str]
    weights_desc: str
    arch: str
    min_size: int
    max_size: int


def _read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def build_detector(
    arch: str,
    weights: str,
    *,
    labels_file: Path | None = None,
    score_thresh: float = 0.05,
    max_detections: int = 100,
    seed: int = 0,
) -> BuiltDetector:
    """The eval-mode wrapper from ``default`` (COCO), ``random`` or a checkpoint path."""
    if arch not in ARCHS:
        raise WeightsUnavailable(f"unknown detector {arch!r}; choose one of {', '.join(ARCHS)}")
    builder, preset = ARCHS[arch]
    labels = list(preset.meta["categories"])  # COCO's 91 indices, shipped with torchvision: no download
    kwargs: dict[str, Any] = {"box_score_thresh": score_thresh, "box_detections_per_img": max_detections}
    if weights == "default":
        model = builder(weights=None, weights_backbone=None, **kwargs)
        model.load_state_dict(load_pretrained(preset, model_name=arch))
        desc = str(preset)
    elif weights == "random":
        torch.manual_seed(seed)
        model = builder(weights=None, weights_backbone=None, **kwargs)
        desc = f"random (seed {seed})"
    else:
        path = Path(weights)
        state = load_checkpoint(path)
        head = state.get("roi_heads.box_predictor.cls_score.weight")
        if head is None:
            raise WeightsUnavailable(f"--weights {path}: not a Faster R-CNN state dict (no box predictor)")
        num_classes = int(head.shape[0])
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsUnavailable(f"--weights {path}: does not fit {arch}: {e}") from e
        if labels_file is not None:
            labels = _read_labels(labels_file)
        if len(labels) != num_classes:
            raise WeightsUnavailable(
                f"--weights {path} has {num_classes} classes but {len(labels)} labels; pass --labels FILE "
                "with one class name per line (index 0 is the background)"
            )
        desc = f"checkpoint {path}"
    if labels_file is not None and weights in ("default", "random"):
        raise WeightsUnavailable("--labels only applies to a checkpoint (--weights PATH)")
    if "person" not in labels:
        raise WeightsUnavailable(f"the detector's labels have no 'person' class: {labels[:8]}...")
    model.eval()
    transform = model.transform
    return BuiltDetector(
        BatchedDetector(with_exact_resize(model), max_detections).eval(),
        model,
        labels,
        desc,
        arch,
        min_size=int(transform.min_size[0]),
        max_size=int(transform.max_size),
    )


# --- writers ------------------------------------------------------------------------------------


def export_torchscript(module: BatchedDetector, path: Path) -> None:
    """Script (not trace) the wrapper: any batch size, sizes computed at run time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="RCNN always returns a")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)  # "torch.jit.script is deprecated"
        scripted = torch.jit.script(module)
    scripted.save(str(tmp))  # type: ignore[no-untyped-call]
    tmp.replace(path)


def export_onnx(module: BatchedDetector, path: Path, *, height: int, width: int) -> None:
    """Trace at batch 1 with dynamic height and width (opset 17, legacy exporter)."""
    dummy = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dynamic = {INPUT_NAME: {2: "height", 3: "width"}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        write_onnx(module, dummy, path, input_name=INPUT_NAME, output_names=OUTPUT_NAMES, dynamic_axes=dynamic)
