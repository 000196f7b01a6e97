"""The scripted and traced code of the detector export (no ``from __future__ import
annotations`` here: TorchScript reads real annotations).

- ``ExactResizeTransform``: torchvision's transform with a resize that gives eager
  torchvision's size in eager, scripted and traced runs alike.
- ``BatchedDetector``: ``images [B,3,H,W]`` uint8 in, padded ``boxes, scores,
  labels, num_detections`` out.
"""

import copy
import math

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import detection as det
from torchvision.models.detection.transform import GeneralizedRCNNTransform


def _source_index(in_size: Tensor, out_size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torch's bilinear sampling (align_corners=False) along one axis, as graph ops:
    source indices and weights for every output index."""
    scale = in_size.to(torch.float32) / out_size.to(torch.float32)
    dst = torch.arange(out_size, dtype=torch.float32)
    src = torch.clamp((dst + 0.5) * scale - 0.5, min=0.0)
    last = in_size - 1
    i0 = torch.min(src.floor().to(torch.int64), last)
    i1 = torch.min(i0 + 1, last)
    w1 = torch.clamp(src - i0.to(torch.float32), 0.0, 1.0)
    return i0, i1, 1.0 - w1, w1


@torch.jit.unused
def _traced_resize(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Bilinear resize of ``[C, H, W]`` for tracing, with the output size computed in float64
    as eager Python does.  The sampling is spelled out with gathers, in torch's own
    formula: ONNX ``Resize`` derives positions from its own float scale and lands up to
    2.6e-4 (normalized units) away from torch at 360x640, the gathers within 1.3e-4."""
    shape = torch._shape_as_tensor(image)[-2:]
    size_f = shape.to(torch.float64)
    # 1-element, not 0-dim: the exporter turns 0-dim constants into float32 scalars and
    # casts the division down to float32 with them
    lo = torch.full((1,), float(min_size), dtype=torch.float64)
    hi = torch.full((1,), float(max_size), dtype=torch.float64)
    out = torch.floor(size_f * torch.min(lo / size_f.min(), hi / size_f.max())).to(torch.int64)
    y0, y1, wy0, wy1 = _source_index(shape[0], out[0])
    x0, x1, wx0, wx1 = _source_index(shape[1], out[1])
    rows = image.index_select(1, y0) * wy0[:, None] + image.index_select(1, y1) * wy1[:, None]
    return (rows.index_select(2, x0) * wx0 + rows.index_select(2, x1) * wx1)[None]


class ExactResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform with a resize that gives eager torchvision's size in every mode.

    Eager torchvision computes the scale in Python floats (float64): 400x400 → 320x320.
    Its TorchScript and ONNX paths compute it in float32, where 320 / 400 rounds down and
    ``floor(400 * 0.79999995)`` makes 319 rows: a different image, different detections.
    (Found by the parity tests: scripted torchvision disagreed with eager at 400x400.)"""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.training or target is not None or self.fixed_size is not None:
            raise RuntimeError("ExactResizeTransform is for inference only")
        size = self.min_size[-1]
        if torchvision._is_tracing():
            resized = _traced_resize(image, size, self.max_size)
        else:
            h, w = image.shape[-2], image.shape[-1]
            scale = min(float(size) / float(min(h, w)), float(self.max_size) / float(max(h, w)))
            out_hw = [math.floor(h * scale), math.floor(w * scale)]
            resized = torch.nn.functional.interpolate(image[None], size=out_hw, mode="bilinear", align_corners=False)
        return resized[0], target


def with_exact_resize(model: det.FasterRCNN) -> det.FasterRCNN:
    """A copy of ``model`` (weights shared) whose transform is ``ExactResizeTransform``."""
    t = model.transform
    out = copy.copy(model)
    out._modules = dict(model._modules)
    out.transform = ExactResizeTransform(
        min_size=t.min_size,
        max_size=t.max_size,
        image_mean=t.image_mean,
        image_std=t.image_std,
        size_divisible=t.size_divisible,
        fixed_size=t.fixed_size,
    )
    return out.eval()


class BatchedDetector(nn.Module):
    """``images [B,3,H,W]`` uint8 → padded ``boxes, scores, labels, num_detections``."""

    def __init__(self, model: det.FasterRCNN, max_detections: int) -> None:
        super().__init__()
        self.model = model
        self.max_detections = max_detections

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = images.to(torch.float32) / 255.0  # torchvision's detection presets: ToTensor, nothing else
        batch: list[Tensor] = [x[i] for i in range(x.shape[0])]
        if torch.jit.is_scripting():  # noqa: SIM108 - TorchScript special-cases this `if`, not a ternary
            detections = self.model(batch)[1]  # scripted R-CNNs return (losses, detections)
        else:
            detections = self.model(batch)
        k = self.max_detections
        boxes: list[Tensor] = []
        scores: list[Tensor] = []
        labels: list[Tensor] = []
        counts: list[Tensor] = []
        for d in detections:
            # Pad by concatenation, not by a data-dependent count: traces and scripts alike.
            b, s, c = d["boxes"], d["scores"], d["labels"]
            boxes.append(torch.cat([b, torch.zeros((k, 4), dtype=b.dtype, device=b.device)])[:k])
            scores.append(torch.cat([s, torch.zeros((k,), dtype=s.dtype, device=s.device)])[:k])
            labels.append(torch.cat([c, torch.full((k,), -1, dtype=c.dtype, device=c.device)])[:k])
            valid = torch.cat([torch.ones_like(c), torch.zeros((k,), dtype=c.dtype, device=c.device)])[:k]
            counts.append(valid.sum())
        return torch.stack(boxes), torch.stack(scores), torch.stack(labels), torch.stack(counts)
