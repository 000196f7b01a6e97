"""MobileNetV3-Small (ImageNet top-k) as a uint8-in, logits/probabilities-out graph.

The ImageNet normalization of torchvision's preset (x/255, minus mean, divided by
std) is folded into the graph, so clients send the resized, center-cropped uint8
pixels: four times fewer bytes on the wire than float32, and the exact float ops
torchvision runs happen inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models import MobileNet_V3_Small_Weights

from export.errors import WeightsUnavailable
from export.onnx_file import write_onnx
from export.weights import load_checkpoint, load_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")


class NormalizedClassifier(nn.Module):
    """Tensor-in wrapper: ``[B, 3, H, W]`` uint8 (or already normalized float32) in,
    ``logits [B, C]`` and ``probabilities [B, C]`` out."""

    def __init__(self, model: nn.Module, *, normalize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images
        if self.normalize:
            # The same ops, in the same order, as torchvision's ImageClassification preset.
            x = x.to(torch.float32).div(255.0).sub(self.mean).div(self.std)
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class BuiltClassifier:
    module: NormalizedClassifier
    labels: list[str]
    weights_desc: str


def load_mobilenet_v3_small(weights: str, *, seed: int = 0) -> tuple[models.MobileNetV3, str]:
    """torchvision's MobileNetV3-Small from ``default`` (ImageNet), ``random`` or a
    checkpoint path (its head keeps the checkpoint's class count), and a description."""
    if weights == "default":
        preset = MobileNet_V3_Small_Weights.IMAGENET1K_V1
        model = models.mobilenet_v3_small(weights=None)
        model.load_state_dict(load_pretrained(preset, model_name="mobilenet_v3_small"))
        return model, str(preset)
    if weights == "random":
        torch.manual_seed(seed)
        return models.mobilenet_v3_small(weights=None), f"random (seed {seed})"
    path = Path(weights)
    state = load_checkpoint(path)
    head = state.get("classifier.3.weight")
    if head is None:
        raise WeightsUnavailable(f"--weights {path}: not a MobileNetV3-Small state dict (no classifier.3.weight)")
    model = models.mobilenet_v3_small(weights=None, num_classes=int(head.shape[0]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsUnavailable(f"--weights {path}: does not fit MobileNetV3-Small: {e}") from e
    return model, f"checkpoint {path}"


def build_mobilenet_v3_small(
    weights: str, *, labels_file: Path | None = None, seed: int = 0, normalize: bool = True
) -> BuiltClassifier:
    """Build the eval-mode wrapper from ``default``, ``random`` or a checkpoint path."""
    if labels_file is not None and weights in ("default", "random"):
        raise WeightsUnavailable("--labels only applies to a checkpoint (--weights PATH)")
    model, desc = load_mobilenet_v3_small(weights, seed=seed)
    labels = list(MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta["categories"])  # shipped with torchvision
    if weights not in ("default", "random"):
        num_classes = num_outputs(model)
        if labels_file is not None:
            labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
        if len(labels) != num_classes:
            raise WeightsUnavailable(
                f"--weights {weights} has {num_classes} classes but {len(labels)} labels; pass --labels FILE "
                "with one class name per line"
            )
    model.eval()
    return BuiltClassifier(NormalizedClassifier(model, normalize=normalize).eval(), labels, desc)


def num_outputs(model: models.MobileNetV3) -> int:
    head = model.classifier[3]
    assert isinstance(head, nn.Linear)
    return head.out_features


def export_onnx(module: nn.Module, path: Path, *, input_shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    """Export with a dynamic batch axis; written to a temp file and renamed, never half-written."""
    dummy = torch.zeros((2, *input_shape), dtype=dtype)
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    write_onnx(module, dummy, path, input_name=INPUT_NAME, output_names=OUTPUT_NAMES, dynamic_axes=dynamic)
