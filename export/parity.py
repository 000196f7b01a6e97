"""Eager torch against onnxruntime on the same random batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn


def max_abs_diff(
    module: nn.Module, onnx_path: Path, *, input_shape: tuple[int, int, int], uint8: bool, batch: int = 4, seed: int = 0
) -> dict[str, float]:
    """Run ``batch`` random images through both; return the max abs difference per output."""
    rng = np.random.default_rng(seed)
    shape = (batch, *input_shape)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8) if uint8 else rng.standard_normal(shape, dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        want = module(torch.from_numpy(x))
    if isinstance(want, torch.Tensor):
        want = (want,)
    return {name: float(np.max(np.abs(g - w.numpy()))) for name, g, w in zip(names, got, want, strict=True)}
