"""Export torchvision models into a Triton model repository (ONNX, dynamic batch)."""
