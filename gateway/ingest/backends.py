"""The readers by name (``ingest.backend``): PyAV by default, OpenCV as the fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

from gateway.ingest.opencv_reader import OpenCvReader
from gateway.ingest.pyav_reader import PyAvReader
from gateway.ingest.reader import Prepare, ReaderConfig, StateChange, StreamReader
from gateway.ingest.sources import SourceSpec

Backend: TypeAlias = Literal["pyav", "opencv"]
READERS: dict[str, type[StreamReader]] = {"pyav": PyAvReader, "opencv": OpenCvReader}


def make_reader(
    backend: Backend,
    stream_id: str,
    spec: SourceSpec,
    config: ReaderConfig,
    *,
    on_state: Callable[[StateChange], object] | None = None,
    on_frame: Callable[[], object] | None = None,
    prepare: Prepare | None = None,
) -> StreamReader:
    return READERS[backend](stream_id, spec, config, on_state=on_state, on_frame=on_frame, prepare=prepare)
