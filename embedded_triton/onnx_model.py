"""Python-backend model that runs an ONNX file with onnxruntime.

Copied as ``<model>/<version>/model.py`` into the embedded repository.  The dynamic
batcher hands ``execute`` several requests at once:

- a graph with a dynamic batch axis (the classifier) gets their inputs stacked into
  one onnxruntime call, and the outputs are split back per request;
- a graph whose batch axis is fixed at 1 (the detector: tracing unrolls its
  per-image loop, see ``export/detector.py``) runs image by image, and the outputs
  are stacked per request.  Triton still batches (and queues) for it; what is lost
  is batched compute, which a CPU gains little from for a detector.

Only the outputs a request asked for are returned.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads burn the cores the gRPC front-end needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "0"))
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        self.per_image = self.session.get_inputs()[0].shape[0] == 1

    def _run(self, requests: list[Any]) -> tuple[dict[str, np.ndarray], list[int]]:
        arrays = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.input_names
        }
        sizes = [a.shape[0] for a in arrays[self.input_names[0]]]
        if not self.per_image:
            feeds = {name: (parts[0] if len(parts) == 1 else np.concatenate(parts)) for name, parts in arrays.items()}
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True)), sizes
        rows: list[list[np.ndarray]] = []
        for r in range(len(requests)):  # requests may differ in image size: one image at a time
            for i in range(sizes[r]):
                feeds = {name: parts[r][i : i + 1] for name, parts in arrays.items()}
                rows.append(self.session.run(self.output_names, feeds))
        outputs = {name: np.concatenate([row[k] for row in rows]) for k, name in enumerate(self.output_names)}
        return outputs, sizes

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            outputs, sizes = self._run(requests)
        except Exception as e:  # noqa: BLE001 - every request must get an answer
            error = pb_utils.TritonError(f"onnxruntime failed: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for request, size in zip(requests, sizes, strict=True):
            wanted = request.requested_output_names() or self.output_names
            tensors = [pb_utils.Tensor(name, outputs[name][start : start + size]) for name in wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self) -> None:
        self.session = None
