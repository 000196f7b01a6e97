"""Post-processing, as pure functions: Triton's raw answer → the contract's result.

A classifier's top-k arrives ready (Triton's classification extension); a
detector's padded boxes are mapped back into the client's image or the camera's
frame (``Geometry``), clipped, stripped of boxes that lie wholly in the letterbox
padding, and decided as person / no_person at the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.inference.model import Detections, ModelInfo
from gateway.preprocess import Geometry
from gateway.schema import Box, ClassificationResult, ClassScore, DetectionResult, ImageSize


@dataclass(frozen=True)
class DetectOptions:
    threshold: float
    all_classes: bool


def classification(info: ModelInfo, classes: list[ClassScore], geometry: Geometry) -> ClassificationResult:
    return ClassificationResult(
        model=info.name,
        model_version=info.version,
        image=ImageSize(width=geometry.width, height=geometry.height),
        predictions=classes,
    )


def detection(
    info: ModelInfo, found: Detections, geometry: Geometry, options: DetectOptions, person_class: str
) -> DetectionResult:
    g = geometry
    person = info.class_names.index(person_class)
    scale = np.array([g.sx, g.sy, g.sx, g.sy], dtype=np.float32)
    limit = np.array([g.width, g.height, g.width, g.height], dtype=np.float32)
    boxes = np.clip(found.boxes / scale, 0, limit)  # back into the client's image
    inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # not wholly in the letterbox padding
    above = found.scores >= options.threshold
    persons = inside & above & (found.labels == person)
    keep = inside & above if options.all_classes else persons
    names = info.class_names
    out = [
        Box(
            x1=round(float(b[0]), 2),
            y1=round(float(b[1]), 2),
            x2=round(float(b[2]), 2),
            y2=round(float(b[3]), 2),
            score=round(min(1.0, max(0.0, float(s))), 5),
            label=names[int(c)] if 0 <= int(c) < len(names) else str(int(c)),
        )
        for b, s, c in zip(boxes[keep], found.scores[keep], found.labels[keep], strict=True)
    ]
    count = int(np.count_nonzero(persons))
    return DetectionResult(
        model=info.name,
        model_version=info.version,
        image=ImageSize(width=g.width, height=g.height),
        label="person" if count else "no_person",
        person_count=count,
        threshold=options.threshold,
        boxes=out,
    )
