"""A real Triton Inference Server (2.51, = NGC 24.10) on a CPU-only machine.

The ``tritonserver`` binary comes from the nvidia-pytriton wheel; its only backend
is ``python``, so each committed ONNX model is served by a python-backend model
that runs onnxruntime.  The runtime repository is derived from the committed
``model_repository/`` at start-up.
"""

from embedded_triton.server import EmbeddedTriton, TritonPorts

__all__ = ["EmbeddedTriton", "TritonPorts"]
