"""What a stream reads from: RTSP(S) URLs, local video files, webcams by index.

``parse_source`` turns a configured string into a ``SourceSpec``; ``redact`` hides
the password of a URL for logs, errors and API output; ``ffmpeg_options`` restricts
FFmpeg to the protocols a kind of source needs, so an RTSP URL cannot make the
decoder open local files or other schemes.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gateway.parsing import ascii_digits


class SourceKind(enum.Enum):
    RTSP = "rtsp"
    FILE = "file"
    WEBCAM = "webcam"


# FFmpeg's protocol_whitelist per kind: RTSP needs its transports, a file only "file".
_PROTOCOLS = {
    SourceKind.RTSP: "rtsp,rtsps,rtp,srtp,udp,tcp,tls",
    SourceKind.FILE: "file",
}


class SourceError(ValueError):
    """A source string that is not an RTSP URL, a video file or a webcam index."""


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    location: str  # URL, file path, or the webcam index as text
    loop: bool = False  # files only: start again at the end

    @property
    def live(self) -> bool:
        """Live sources drop frames to stay current; files are paced at their own rate."""
        return self.kind is not SourceKind.FILE

    @property
    def display(self) -> str:
        return redact(self.location)

    @property
    def reopenable(self) -> bool:
        """Whether a second handle may be opened while a first one still reads.  Not for a
        pipe (FIFO): two readers would split the writer's bytes between them."""
        if self.kind is not SourceKind.FILE:
            return True
        try:
            return not stat.S_ISFIFO(os.stat(self.location).st_mode)
        except OSError:
            return True


def parse_source(text: str, *, loop: bool = False) -> SourceSpec:
    text = text.strip()
    if ascii_digits(text):
        return SourceSpec(SourceKind.WEBCAM, str(int(text)))
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number from 0 to 65535
    except ValueError as e:
        raise SourceError(f"{redact(text)}: not a valid URL or path ({e})") from e
    scheme = parts.scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        if not parts.hostname:
            raise SourceError(f"{redact(text)}: an RTSP URL needs a host")
        return SourceSpec(SourceKind.RTSP, text)
    if scheme == "file":
        text = parts.path
    elif scheme:
        raise SourceError(
            f"unsupported source scheme {scheme!r} (use rtsp://, rtsps://, a file path or a webcam index)"
        )
    return SourceSpec(SourceKind.FILE, str(Path(text)), loop=loop)


def redact(url: str) -> str:
    """``rtsp://user:secret@host/path`` → ``rtsp://user:***@host/path``.  Never raises:
    a string that does not even parse as a URL loses everything before its last ``@``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^/]*@", "//***@", url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hostport}", parts.path, parts.query, parts.fragment))


# Options a configuration may not set: they would widen what the decoder may open.
PROTECTED_OPTIONS = frozenset({"protocol_whitelist", "protocol_blacklist", "format_whitelist", "codec_whitelist"})


def redact_text(text: str) -> str:
    """Every ``scheme://user:secret@`` in a message (FFmpeg's errors quote the URL) → ``user:***@``."""
    return re.sub(r"(://[^/\s:@]*):[^@/\s]*@", r"\1:***@", text)


def ffmpeg_option_dict(
    spec: SourceSpec, *, transport: str = "tcp", extra: dict[str, str] | None = None
) -> dict[str, str]:
    """FFmpeg's options for opening a source, set per open: quick probing for RTSP, its
    transport, the protocol whitelist, and ``extra`` (operator options; the whitelist wins)."""
    options = dict(extra or {})
    if spec.kind is SourceKind.RTSP:
        options.setdefault("analyzeduration", "0")
        options.setdefault("probesize", "32")
        options["rtsp_transport"] = transport
    for key in PROTECTED_OPTIONS:
        options.pop(key, None)
    if spec.kind in _PROTOCOLS:
        options["protocol_whitelist"] = _PROTOCOLS[spec.kind]
    return options


def ffmpeg_options(spec: SourceSpec, *, transport: str = "tcp", extra: dict[str, str] | None = None) -> str:
    """The OPENCV_FFMPEG_CAPTURE_OPTIONS value for a source (key;value pairs joined by |)."""
    options = ffmpeg_option_dict(spec, transport=transport, extra=extra)
    return "|".join(f"{k};{v}" for k, v in options.items())
