"""Writing an ONNX file the one way both models need: legacy (TorchScript-based) exporter,
opset 17, constant folding, and a temp file renamed into place, never half-written."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def write_onnx(
    module: nn.Module,
    dummy: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(
            module,
            (dummy,),
            str(tmp),
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(path)
