"""Python-backend model that runs an ONNX file with onnxruntime.

Copied as ``<model>/<version>/model.py`` into the embedded repository.  The dynamic
batcher hands ``execute`` several requests at once: their inputs are stacked into
one onnxruntime call and the outputs split back per request.  Only the outputs a
request asked for are returned.
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

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            arrays = {
                name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                for name in self.input_names
            }
            sizes = [a.shape[0] for a in arrays[self.input_names[0]]]
            feeds = {name: (parts[0] if len(parts) == 1 else np.concatenate(parts)) for name, parts in arrays.items()}
            outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
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
