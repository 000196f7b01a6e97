"""Ingest: video sources and one reader thread per source.  No FastAPI here."""

from gateway.ingest.reader import Frame, ReaderConfig, ReaderStats, StateChange, StreamReader, StreamState
from gateway.ingest.sources import SourceKind, SourceSpec, parse_source, redact

__all__ = [
    "Frame",
    "ReaderConfig",
    "ReaderStats",
    "SourceKind",
    "SourceSpec",
    "StateChange",
    "StreamReader",
    "StreamState",
    "parse_source",
    "redact",
]
