"""Inference: the Triton client (the only tritonclient user), the model catalog, pure
post-processing and the predictor that runs one prediction through them."""
