"""Ingest: video sources, one reader thread per source (PyAV or OpenCV), and the watchdog.  No FastAPI here."""

from gateway.ingest.backends import READERS, Backend, make_reader
from gateway.ingest.opencv_reader import OpenCvReader
from gateway.ingest.pyav_reader import PyAvReader
from gateway.ingest.reader import Frame, ReaderConfig, ReaderStats, StateChange, StreamReader, StreamState
from gateway.ingest.sources import SourceKind, SourceSpec, parse_source, redact
from gateway.ingest.watchdog import Watchdog

__all__ = [
    "READERS",
    "Backend",
    "Frame",
    "OpenCvReader",
    "PyAvReader",
    "ReaderConfig",
    "ReaderStats",
    "SourceKind",
    "SourceSpec",
    "StateChange",
    "StreamReader",
    "StreamState",
    "Watchdog",
    "make_reader",
    "parse_source",
    "redact",
]
