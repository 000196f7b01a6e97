"""Source parsing, redaction and FFmpeg protocol restriction."""

from __future__ import annotations

import cv2
import pytest

from gateway.ingest.opencv_reader import codec_name
from gateway.ingest.sources import (
    SourceError,
    SourceKind,
    ffmpeg_option_dict,
    ffmpeg_options,
    parse_source,
    redact,
    redact_text,
)


def test_kinds() -> None:
    assert parse_source("rtsp://cam.local:554/stream1").kind is SourceKind.RTSP
    assert parse_source("rtsps://cam.local/s").kind is SourceKind.RTSP
    assert parse_source("0").kind is SourceKind.WEBCAM and parse_source("0").location == "0"
    spec = parse_source("/videos/a.mp4", loop=True)
    assert spec.kind is SourceKind.FILE and spec.loop and not spec.live
    assert parse_source("file:///videos/a.mp4").location == "/videos/a.mp4"


@pytest.mark.parametrize("bad", ["http://x/a.mp4", "ftp://x/y", "rtsp:///nohost"])
def test_unsupported_sources(bad: str) -> None:
    with pytest.raises(SourceError):
        parse_source(bad)


def test_redact() -> None:
    assert redact("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"
    assert "s3cret" not in parse_source("rtsp://u:s3cret@h/x").display


def test_ffmpeg_protocols_are_restricted_per_kind() -> None:
    rtsp = ffmpeg_options(parse_source("rtsp://h/x"))
    assert "protocol_whitelist;rtsp,rtsps,rtp,srtp,udp,tcp,tls" in rtsp and "file" not in rtsp
    assert "rtsp_transport;tcp" in rtsp
    assert ffmpeg_options(parse_source("/a.mp4")) == "protocol_whitelist;file"


def test_options_are_per_open_and_cannot_widen_the_whitelist() -> None:
    spec = parse_source("rtsp://h/x")
    options = ffmpeg_option_dict(spec, transport="udp", extra={"buffer_size": "1048576", "protocol_whitelist": "file"})
    assert options["buffer_size"] == "1048576" and options["rtsp_transport"] == "udp"
    assert options["protocol_whitelist"] == "rtsp,rtsps,rtp,srtp,udp,tcp,tls", "the kind's whitelist wins"
    assert ffmpeg_option_dict(parse_source("/a.mp4"), extra={"probesize": "5000000"}) == {
        "probesize": "5000000",
        "protocol_whitelist": "file",
    }


def test_ffmpeg_messages_lose_their_passwords() -> None:
    message = "[Errno 111] Connection refused: 'rtsp://admin:s3cret@10.0.0.7:554/live'"
    assert redact_text(message) == "[Errno 111] Connection refused: 'rtsp://admin:***@10.0.0.7:554/live'"
    assert redact_text("no url here") == "no url here"


@pytest.mark.parametrize(
    ("tag", "name"),
    [("avc1", "h264"), ("h264", "h264"), ("hvc1", "hevc"), ("hevc", "hevc"), ("MJPG", "mjpeg"), ("mjpe", "mjpeg")],
)
def test_opencv_reports_the_codec_by_ffmpegs_name(tag: str, name: str) -> None:
    assert codec_name(cv2.VideoWriter.fourcc(*tag)) == name


def test_opencv_reporting_no_codec_gives_none() -> None:
    assert codec_name(0) is None and codec_name(float(0x01020304)) is None
