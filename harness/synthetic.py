"""Deterministic test models: pretrained weights cannot be downloaded here, and
torchvision's random init gives ties everywhere (near-uniform probabilities, every
box scoring 1/91).  These seeded checkpoints give distinct, well-separated outputs
that can be compared across runtimes.  Used by the tests and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models import mobilenet_v3_small
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

from export.parity import scenes


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


def synthetic_detector_checkpoint(path: Path, seed: int = 0) -> Path:
    """A seeded Faster R-CNN whose activations and scores are well scaled, so detections
    are distinct and can be matched across runtimes.

    torchvision's random init is unusable for that: BatchNorm in eval mode with fresh
    statistics makes activations vanish, the FPN then outputs values in the thousands,
    objectness saturates at 1.0 and every box scores 1/91 -- ties everywhere, and a tie
    is decided by rounding noise.  Here BatchNorm statistics come from one pass over
    random images, and each later layer is rescaled in turn (LSUV-style) to a target
    output spread: unit features, objectness and class logits with std 1, small box
    regressions.  Deterministic for a seed."""
    torch.manual_seed(seed)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative: the statistics of exactly the batch below
    model.backbone.body.train()
    with torch.no_grad():  # statistics of photo-like scenes, the kind of image the tests send
        model.backbone.body(torch.from_numpy(scenes(16, 320, 320, seed=seed)).float() / 255.0)
    model.eval()
    fpn, rpn, roi = model.backbone.fpn, model.rpn.head, model.roi_heads
    targets: list[tuple[torch.nn.Module, float]] = [
        *((blk, 1.0) for blk in fpn.inner_blocks),
        *((blk, 1.0) for blk in fpn.layer_blocks),
        (rpn.conv, 1.0),
        (rpn.cls_logits, 1.0),
        (rpn.bbox_pred, 0.2),
        (roi.box_head.fc6, 1.0),
        (roi.box_head.fc7, 1.0),
        (roi.box_predictor.cls_score, 1.0),
        (roi.box_predictor.bbox_pred, 0.2),
    ]
    images = [
        torch.from_numpy(x).float() / 255.0
        for x in (scenes(1, 320, 480, seed=seed + 1)[0], scenes(1, 360, 640, seed=seed + 2)[0])
    ]
    for module, std in targets:
        outputs: list[torch.Tensor] = []

        def keep(_m: torch.nn.Module, _i: object, out: object, outputs: list[torch.Tensor] = outputs) -> None:
            outputs.extend(out if isinstance(out, list) else [out])  # type: ignore[list-item]

        hook = module.register_forward_hook(keep)
        with torch.no_grad():
            model(images)
        hook.remove()
        spread = torch.cat([o.flatten() for o in outputs]).std()
        layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        with torch.no_grad():
            for layer in layers:  # one conv or linear per target
                layer.weight.mul_(std / spread)
                if layer.bias is not None:
                    layer.bias.zero_()
    # Persons among the top detections, so person / no_person has something to decide: lift the
    # person logit to the level of the class that wins most boxes.
    logits: list[torch.Tensor] = []
    hook = roi.box_predictor.cls_score.register_forward_hook(lambda _m, _i, out: logits.append(out))
    with torch.no_grad():
        model(images)
        hook.remove()
        mean = torch.cat(logits).mean(dim=0)
        roi.box_predictor.cls_score.bias[1] = mean.max() - mean[1]
    torch.save(model.state_dict(), path)
    return path


PATTERNS = ("horizontal", "vertical", "checker")


def pattern_image(kind: str, rng: np.random.Generator, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A two-colour pattern with a random period, phase, colours and noise: horizontal
    stripes, vertical stripes, or a checkerboard (classes a small CNN can learn in
    minutes from random weights, and that no colour statistic alone separates)."""
    width, height = size
    period = int(rng.integers(10, 28))
    dy, dx = rng.integers(0, period, size=2)
    ys = (np.arange(height)[:, None] + dy) // (period // 2) % 2
    xs = (np.arange(width)[None, :] + dx) // (period // 2) % 2
    mask = {"horizontal": ys + 0 * xs, "vertical": xs + 0 * ys, "checker": (xs + ys) % 2}[kind].astype(bool)
    a, b = rng.integers(0, 256, size=(2, 3))
    while np.abs(a.astype(int) - b).sum() < 150:  # enough contrast to see the pattern
        a, b = rng.integers(0, 256, size=(2, 3))
    rgb = np.where(mask[..., None], a, b).astype(np.float32) + rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def pattern_dataset(
    root: Path, per_class: int, *, seed: int, kinds: tuple[str, ...] = PATTERNS, names: tuple[str, ...] = ()
) -> Path:
    """``root/<name>/<i>.jpg``: an ImageFolder tree of ``pattern_image``s, one folder per
    kind, named after the kind or after ``names`` (same order)."""
    rng = np.random.default_rng(seed)
    for kind, name in zip(kinds, names or kinds, strict=True):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pattern_image(kind, rng).save(root / name / f"{i:04d}.jpg", quality=90)
    return root
