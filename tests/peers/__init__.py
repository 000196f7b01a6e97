"""Real protocol peers the tests start: an RTSP server (GStreamer), H.264 clips (PyAV)."""
