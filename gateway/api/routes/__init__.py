"""The routes, one module per resource: predict, streams (SSE included), health, metrics."""
