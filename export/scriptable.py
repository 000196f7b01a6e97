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


@torch.jit.unused
def _traced_resize(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Resize with the output size as graph values, computed in float64 (a Python scalar
    would be exported as float32 and round the division down)."""
    shape = torch._shape_as_tensor(image)[-2:].to(torch.float64)
    lo = torch.tensor(float(min_size), dtype=torch.float64)
    hi = torch.tensor(float(max_size), dtype=torch.float64)
    size = torch.floor(shape * torch.min(lo / shape.min(), hi / shape.max())).to(torch.int64)
    out = [size[0], size[1]]
    return torch.nn.functional.interpolate(image[None], size=out, mode="bilinear", align_corners=False)  # type: ignore[arg-type]


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
