"""stream-ml gateway: ingest, preprocessing, Triton client, fan-out and HTTP API."""
