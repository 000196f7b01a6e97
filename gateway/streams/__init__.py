"""Live streams: one worker (reader, inference loop, broadcaster) per camera, and the
manager that owns them."""
