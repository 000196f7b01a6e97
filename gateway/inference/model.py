"""What the gateway knows about a served model (``ModelInfo``) and a detector's raw output.

Both are read from or returned by Triton through ``client.py``; they carry no
tritonclient types, so preprocessing and post-processing can use them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

_NUMPY: dict[str, type[np.generic]] = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}
DATATYPES = frozenset(_NUMPY)


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to feed a model, read from Triton's metadata and config."""

    name: str
    version: str
    task: Literal["classification", "detection"]
    input_name: str
    input_datatype: str  # Triton name: UINT8, FP32
    input_shape: tuple[int, int, int]  # C, H, W, without the batch axis; -1: any (detectors)
    output_name: str  # the classifier's probabilities ("" for detectors)
    num_classes: int
    max_batch_size: int
    instance_kinds: tuple[str, ...]
    class_names: tuple[str, ...] = ()  # detectors: label index -> name
    instance_count: int = 1  # model instances Triton runs (every instance group's count)

    @property
    def input_dtype(self) -> type[np.generic]:
        return _NUMPY[self.input_datatype]

    @property
    def crop_hw(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(width, height) a detector's input is fixed to, or None when it takes any size."""
        _, h, w = self.input_shape
        return (w, h) if h > 0 and w > 0 else None


@dataclass(frozen=True)
class Detections:
    """One image's detections in the coordinates of the tensor sent, best first."""

    boxes: np.ndarray  # [n, 4] float32, x1 y1 x2 y2
    scores: np.ndarray  # [n] float32
    labels: np.ndarray  # [n] int64, index into ModelInfo.class_names
