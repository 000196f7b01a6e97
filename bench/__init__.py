"""Benchmarks: onnxruntime in process vs Triton over gRPC vs the gateway (``python -m bench``)."""
