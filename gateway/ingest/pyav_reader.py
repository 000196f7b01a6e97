"""The PyAV reader (``ingest.backend: pyav``, the default): FFmpeg's libraries, packet by packet.

Unlike OpenCV, PyAV hands the reader each packet before it is decoded, so the
reader decodes only what it needs:

- **keyframes only** when ``sample_fps`` is at or below the stream's measured
  keyframe rate (``DecodePlan``): each due sample is the nearest keyframe, decoded
  on its own, and nothing between keyframes reaches the decoder;
- a keyframe that FFmpeg hands over in several packets of one timestamp (a picture of
  several slices from a camera that sends its parameter sets in-band before each IDR
  slice: FFmpeg's parser splits the picture there, and its decoder takes each packet
  for a whole picture) is put back together first (``_Pictures``);
- **all frames** otherwise (the frames in between need their references), with
  only the sampled ones converted and resized; on ``auto``, each GOP only up to its
  last sample (``DecodePlan.align`` and ``trim``), the decoder's held-back frames
  dropped at the cut.

FFmpeg's options are set per open (no process-wide variable, no lock).  The open
is bounded by PyAV's interrupt callback (``timeout=(open, None)``), which aborts a
connect or a handshake that hangs; reads are bounded by FFmpeg's own socket
timeout (RTSP's ``timeout`` option), which fails a read once the source has been
silent for the read timeout.  Not the interrupt callback for reads: PyAV's takes
the GIL each time FFmpeg polls it, on every socket read, which measured 2.2-2.5x
the demuxing CPU at 32 streams (414-459 against 186-197 us per packet,
``python -m bench.rtsp_demux``).  Each frame carries its capture time on the
camera's clock (``SourceClock``: RTCP sender reports where the camera sends them).
In keyframe mode, an RTSP stream over TCP is read in bursts (``Naps``): at the live
edge, the reader sleeps until a little before the next keyframe is due, and then reads
the frames it skips in one go from the socket's buffer (at most ``burst_kib`` of them),
instead of waking for each.  A frozen source is then noticed within the read timeout
plus one nap (a quarter of the read timeout at most); the watchdog, which watches
silence, not reads, still marks it stalled after the read timeout.
``ingest.hwaccel`` decodes on a hardware device (NVDEC through ``cuda``, VAAPI,
...); when the device cannot be opened the reader says so once and decodes in
software.
"""

from __future__ import annotations

import logging
import time
from typing import TypeAlias, cast

import av
import av.codec.hwaccel
import numpy as np
from av.container import InputContainer
from av.video.codeccontext import VideoCodecContext
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from gateway.ingest.reader import ReaderConfig, StreamReader, next_due
from gateway.ingest.sampling import LIVE_WAIT_S, NAP_READ_TIMEOUT_SHARE, DecodePlan, Naps, SourceClock
from gateway.ingest.sources import SourceKind, ffmpeg_option_dict, redact_text

log = logging.getLogger(__name__)
_Packet: TypeAlias = "av.Packet[VideoStream]"
BEHIND_S = 1.0  # a file read this far behind its own timeline is re-paced from now, not played in a burst


class PyAvReader(StreamReader):
    backend = "pyav"
    _hw_broken = False  # the configured hardware device failed to open: decode in software from now on

    def _open(self) -> InputContainer | None:
        c = self.config
        if self.spec.kind is SourceKind.WEBCAM:
            location, fmt = f"/dev/video{int(self.spec.location)}", "v4l2"
            options = dict(c.ffmpeg_options)
        else:
            location, fmt = self.spec.location, None
            options = ffmpeg_option_dict(self.spec, transport=c.rtsp_transport, extra=dict(c.ffmpeg_options))
        if self.spec.kind is SourceKind.RTSP:
            options.setdefault("timeout", str(int(c.read_timeout_s * 1_000_000)))  # socket I/O, microseconds
        hw = c.hwaccel if c.hwaccel and not self._hw_broken else None
        try:
            container = self._container(location, fmt, options, hw)
        except (av.FFmpegError, OSError) as e:
            self._detail = redact_text(str(e))
            if hw is None:
                log.info("stream %s: cannot open %s: %s", self.stream_id, self.spec.display, self._detail)
                return None
            try:  # the device, or the source?  Try the source in software.
                container = self._container(location, fmt, options, None)
            except (av.FFmpegError, OSError):
                log.info("stream %s: cannot open %s: %s", self.stream_id, self.spec.display, self._detail)
                return None
            self._hw_broken = True
            log.warning(
                "stream %s: hardware decoding (%s) is not available here (%s); decoding in software",
                self.stream_id,
                hw,
                redact_text(str(e)),
            )
            hw = None
        self.stats.hwaccel = hw
        return container

    def _container(self, location: str, fmt: str | None, options: dict[str, str], hw: str | None) -> InputContainer:
        c = self.config
        return av.open(
            location,
            format=fmt,
            container_options=options,
            timeout=(c.open_timeout_s, None),  # reads: the socket timeout (see the module docstring)
            hwaccel=av.codec.hwaccel.HWAccel(device_type=hw, allow_software_fallback=True) if hw else None,
        )

    def _close(self, handle: InputContainer) -> None:
        try:
            handle.close()
        except (av.FFmpegError, OSError) as e:
            log.debug("stream %s: closing: %s", self.stream_id, redact_text(str(e)))

    def _read(self, container: InputContainer, gen: int) -> str:
        if not container.streams.video:
            log.warning("stream %s: %s has no video stream", self.stream_id, self.spec.display)
            return "empty"
        self.stats.codec = container.streams.video[0].codec_context.name
        r = _Pass(container, self.config, self.stream_id, self._naps())
        naps = r.naps
        while not self._stop.is_set():
            packet = self._next(r, gen)
            if isinstance(packet, str):
                return packet
            if packet is None:
                continue
            if not self.spec.live and packet.dts is not None and self._pace(r, packet.dts * r.tb):
                return "stopped"
            if naps is not None:
                naps.packet(r.media(packet), r.read_at, packet.size, packet.is_keyframe)
            for whole in r.pictures.push(packet):
                if not self._packet(r, whole, gen):
                    return "superseded"
            if naps is not None and r.waited >= LIVE_WAIT_S and r.mode == "keyframes" and self._nap(naps):
                return "stopped"
        return "stopped"

    def _naps(self) -> Naps | None:
        """Keyframe mode's naps, for an RTSP stream over TCP (whose socket buffers what arrives
        meanwhile, and loses nothing): None for other sources, or where turned off."""
        c = self.config
        transport = dict(c.ffmpeg_options).get("rtsp_transport", c.rtsp_transport)
        if self.spec.kind is not SourceKind.RTSP or transport not in ("tcp", "http") or c.burst_kib <= 0:
            return None
        return Naps(c.burst_kib * 1024, NAP_READ_TIMEOUT_SHARE * c.read_timeout_s)

    def _nap(self, naps: Naps) -> bool:
        """Sleep until a little before the next keyframe, if that is worth it.  True if stopped."""
        seconds = naps.nap(time.monotonic(), self.stats.keyframe_interval_s)
        if not seconds:
            return False
        self.stats.naps, self.stats.napped_s = naps.count, naps.seconds
        return self._stop.wait(seconds)

    def _next(self, r: _Pass, gen: int) -> _Packet | str | None:
        """The next packet with data; else None to go on (a looped file, a flush packet) or the
        outcome of the read."""
        asked = time.monotonic()
        try:
            packet: _Packet | None = next(r.packets)
        except StopIteration:
            packet = None
        except (av.TimeoutError, av.ExitError):  # the socket timeout: silent for read_timeout_s
            return self._silent_failure(r.got_any, time.monotonic() - asked, gen)
        except (av.FFmpegError, OSError) as e:
            self._detail = f"read failed: {redact_text(str(e))}"
            log.info("stream %s: %s", self.stream_id, self._detail)
            packet = None
        r.read_at = time.monotonic()
        r.waited = r.read_at - asked
        if gen != self._generation:
            return "superseded"
        if packet is None:  # the end, or an error
            if self.spec.kind is SourceKind.FILE and r.got_any:
                return None if self.spec.loop and r.rewind() else "ended"
            return self._silent_failure(r.got_any, time.monotonic() - asked, gen)
        return packet if packet.size else None  # size 0: the demuxer's flush packet

    def _pace(self, r: _Pass, at: float) -> bool:
        """Files play at their own rate: wait until media time ``at`` is due.  True if stopped."""
        if r.pace is None or at < r.last_media:
            r.pace = time.monotonic() - at
        r.last_media = at
        delay = r.pace + at - time.monotonic()
        if delay > 0 and self._stop.wait(delay):
            return True
        if delay < -BEHIND_S:
            r.pace = time.monotonic() - at
        return False

    def _packet(self, r: _Pass, packet: _Packet, gen: int) -> bool:
        """Count the packet, decode it if the plan needs it, publish a due frame.  False once
        superseded."""
        now = time.monotonic()
        self._frame_read(now, r.got_any, gen)
        r.got_any = True
        if r.first_media is None:  # RTCP's origin is the first packet's time
            r.first_media = r.media(packet)
        tb = r.tb
        dts, pts = packet.dts, packet.pts
        r.clock.packet(None if dts is None else dts * tb, None if pts is None else pts * tb, now)
        key = packet.is_keyframe
        mode = r.mode
        if mode == "keyframes" and not key:  # the common case, kept cheap: 24 packets in 25
            self.stats.frames_skipped += 1
            r.synced = False
            return True
        wall = time.time()  # the same instant as now, on the wall clock (captured_at)
        media = r.media(packet)
        if key:  # the plan changes only here
            r.plan.keyframe(media)
            mode = r.mode = r.plan.mode
            self._set_mode(mode, r.plan.interval)
        if mode == "keyframes" and not r.plan.take_keyframe(now, r.next_sample):
            self.stats.frames_skipped += 1
            r.synced = False  # the frame after this one could not be decoded now
            return True
        if mode == "all":
            if key:
                r.key_at = now
                r.next_sample = r.plan.align(now, r.next_sample)
            elif r.synced and r.plan.trim(r.next_sample, r.key_at):
                r.synced = False  # the GOP's last sample is taken: nothing more to decode until the next keyframe
                r.codec.flush_buffers()  # frames held back to reorder B-frames would come out late, and stale
            if not (key or r.synced):  # joined mid-GOP, back from keyframe mode, or the rest of a GOP trimmed
                self.stats.frames_skipped += 1
                return True
        frames, flushed = self._decode(r.codec, packet, drain=mode == "keyframes")
        r.synced = (r.synced or key) and not flushed
        for frame in frames:
            self.stats.frames_decoded += 1
            if mode == "all" and now < r.next_sample:
                self.stats.frames_skipped += 1
                continue
            r.next_sample = next_due(r.next_sample, now, r.plan.period)
            source_at, clock = r.clock.capture_time(r.since_first(frame.time, media), wall, r.realtime_origin())
            size = (frame.width, frame.height)
            image = self._image(frame)
            if not self._publish(image, now, wall, gen, source_size=size, source_at=source_at, clock=clock):
                return False
        return True

    def _decode(self, codec: VideoCodecContext, packet: _Packet, *, drain: bool) -> tuple[list[VideoFrame], bool]:
        """The packet's frames, and whether the decoder was reset.  ``drain``: a lone keyframe comes
        out now, even from a decoder that holds frames back to reorder B-frames (drained, then
        reset for the next keyframe)."""
        flushed = False
        try:
            frames = codec.decode(packet)
            if drain and not frames:
                frames, flushed = codec.decode(None), True
                codec.flush_buffers()
        except av.FFmpegError as e:
            self.stats.decode_errors += 1
            log.debug("stream %s: decode error: %s", self.stream_id, e)
            return [], True
        return [f for f in frames if isinstance(f, VideoFrame)], flushed

    def _image(self, frame: VideoFrame) -> np.ndarray:
        """BGR at the configured size, converted and resized in one swscale pass."""
        c = self.config
        if frame.width == c.width and frame.height == c.height:
            return frame.to_ndarray(format="bgr24")
        return frame.reformat(width=c.width, height=c.height, format="bgr24", interpolation="AREA").to_ndarray()


class _Pictures:
    """Puts a keyframe split over several packets of one timestamp back into one packet.

    FFmpeg's H.264 parser ends a picture at an SPS, so a camera that sends its parameter
    sets before each IDR *slice* (GStreamer's ``rtph264pay config-interval=-1`` with a
    multi-slice encoder) arrives as one packet per slice, and the decoder, which takes
    each packet for a whole picture, puts out one half-grey frame per slice.  Once a
    keyframe with the timestamp of the packet before it is seen (that first picture is
    already gone on, split), this stream's keyframes are held until a packet of another
    timestamp arrives, and their parts are joined: one frame interval later, and only on
    such streams.  Other packets pass at once."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.split = False  # this stream's keyframes come in parts
        self._last: int | None = None  # the previous packet's timestamp (while parts are held: theirs)
        self._parts: list[_Packet] = []  # a keyframe's parts held so far

    def push(self, packet: _Packet) -> list[_Packet]:
        """What goes on to the decoder now, in order: nothing (a part held), or packets."""
        ts = packet.pts if packet.pts is not None else packet.dts
        out: list[_Packet] = []
        if self._parts:
            if ts is not None and ts == self._last:
                self._parts.append(packet)
                return out
            out.append(self._join())
        elif packet.is_keyframe and ts is not None and ts == self._last and not self.split:
            self.split = True
            log.info("stream %s: keyframes arrive split into several packets; joining them", self.stream_id)
        self._last = ts
        if self.split and packet.is_keyframe:
            self._parts = [packet]
        else:
            out.append(packet)
        return out

    def _join(self) -> _Packet:
        parts, self._parts = self._parts, []
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        joined = cast(_Packet, av.Packet(b"".join(bytes(p) for p in parts)))
        joined.pts, joined.dts, joined.time_base = first.pts, first.dts, first.time_base
        joined.is_keyframe = True
        return joined


class _Pass:
    """One open source's reading state: the demuxer, the decode plan, the clock, the pacing."""

    def __init__(self, container: InputContainer, config: ReaderConfig, stream_id: str, naps: Naps | None) -> None:
        self.container = container
        self.naps = naps
        self.read_at = 0.0  # when the last read returned (monotonic)
        self.waited = 0.0  # and how long it waited for its packet
        self.stream = container.streams.video[0]
        self.codec: VideoCodecContext = self.stream.codec_context
        self.codec.thread_count = config.decoder_threads
        self.tb = float(self.stream.time_base) if self.stream.time_base else 0.0
        self.plan = DecodePlan(config.sample_fps, config.decode)
        self.mode = self.plan.mode  # re-read at each keyframe
        self.clock = SourceClock(stream_id)
        self.packets = container.demux(self.stream)
        self.pictures = _Pictures(stream_id)
        self.next_sample = time.monotonic()
        self.key_at: float | None = None  # when the last keyframe arrived (monotonic)
        self.got_any = False
        self.synced = False  # the decoder was fed a keyframe, and every packet since
        self.pace: float | None = None  # files: the monotonic time of media time 0
        self.last_media = -1.0
        self.first_media: float | None = None  # the first packet's presentation time

    def media(self, packet: _Packet) -> float | None:
        """A packet's presentation time in seconds (its decoding time if it has none)."""
        ts = packet.pts if packet.pts is not None else packet.dts
        return ts * self.tb if ts is not None else None

    def since_first(self, frame_time: float | None, packet_time: float | None) -> float | None:
        """A frame's presentation time counted from the first packet's."""
        t = frame_time if frame_time is not None else packet_time
        return None if t is None or self.first_media is None else t - self.first_media

    def realtime_origin(self) -> float | None:
        """RTSP: the wall time of the first packet, from the camera's RTCP sender reports (None
        before the first).  FFmpeg's ``start_time_realtime`` is the wall time of the RTP timestamp
        the PLAY reply names, which is the first packet's; its PTS adds the reply's Range start,
        which is why times are counted from the first packet rather than from PTS 0."""
        origin = self.container.start_time_realtime
        return origin / 1e6 if origin else None

    def rewind(self) -> bool:
        """A looping file starts again; False where it cannot seek (a pipe)."""
        try:
            self.container.seek(0)
            self.codec.flush_buffers()
        except (av.FFmpegError, OSError) as e:
            log.info("cannot loop %s: %s", self.container.name, e)
            return False
        self.packets, self.synced, self.pace = self.container.demux(self.stream), False, None
        return True
