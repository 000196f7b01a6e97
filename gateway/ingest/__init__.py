"""Ingest: video sources, one reader thread per source, and the watchdog.  No FastAPI here."""

from gateway.ingest.reader import Frame, ReaderConfig, ReaderStats, StateChange, StreamReader, StreamState
from gateway.ingest.sources import SourceKind, SourceSpec, parse_source, redact
from gateway.ingest.watchdog import Watchdog

__all__ = [
    "Frame",
    "ReaderConfig",
    "ReaderStats",
    "SourceKind",
    "SourceSpec",
    "StateChange",
    "StreamReader",
    "StreamState",
    "Watchdog",
    "parse_source",
    "redact",
]
