"""Peers for tests and benchmarks: real servers on loopback (RTSP, S3) and H.264 clips."""
