"""What to decode, and when a frame was captured: pure logic the PyAV reader runs per packet.

``DecodePlan`` measures a stream's keyframe interval from the keyframes it sees,
chooses between decoding **keyframes only** (when ``sample_fps`` is at or below
the keyframe rate, every sample can be a keyframe, and nothing between keyframes
needs decoding) and **all frames** (the decoder needs every reference frame to
deliver the frames in between), and picks, in keyframe mode, the keyframe nearest
each due sample.  The interval is re-measured all the time: a camera whose GOP
changes switches mode.  In all-frames mode it cuts each regular GOP after its last
sample (``trim``: the next sample comes from the next keyframe on), and moves the
schedule onto the keyframes where a GOP holds whole sampling periods (``align``), so
that the last sample comes early in the GOP: at 2 fps from a 25-frame GOP, 14 frames
of 25 are decoded.

``SourceClock`` maps a frame's presentation timestamp to wall-clock capture time:
through the RTCP sender reports where the camera sends them (the reader passes
FFmpeg's ``start_time_realtime``, the wall time of the first packet's RTP
timestamp, and times counted from the first packet), otherwise by anchoring the PTS
to the earliest arrival seen, so that reader-side delays (buffers, a slow
decoder) still show in the frame's age.  A jump in the timestamps (a looped file,
an encoder that restarts its timeline) is bridged, so the mapping stays valid.

``Naps`` lets a keyframe-mode reader of a live TCP stream sleep between keyframes and
read what arrived meanwhile in one burst (the socket's buffer holds it), waking a
little before the next keyframe is due, instead of waking for each of the 24 frames
in 25 it skips: a wake costs more than the read (the kernel's scheduling, and the GIL
handed between reader threads), and napping readers of cameras out of phase cost a
third less (``python -m bench.rtsp_demux --rig phased --arms reader-each,reader``).
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections import deque

from gateway.ingest.reader import Clock, DecodeMode, DecodeSetting

log = logging.getLogger(__name__)
KEYFRAME_TOLERANCE = 0.05  # sample_fps up to 5% above the keyframe rate still samples keyframes (jitter)
INTERVALS = 4  # keyframe intervals the median is taken over (a new GOP shows after two)
REGULAR_GOP = 0.1  # keyframe intervals all this close to their median (relative): the next keyframe is foreseeable
WHOLE_PERIODS = 0.05  # an interval this close to a whole number of sampling periods (in periods) holds them whole
RTCP_FUTURE_S = 2.0  # an RTCP capture time this far after arrival is a wrong camera clock
RTCP_PAST_S = 120.0  # ... or this far before it
JUMP_BACK_DTS_S = 0.001  # decoding time never goes back: any step back is a jump in the timeline
JUMP_BACK_S = 0.5  # presentation time may, by a few frames (B-frames): this much is a jump
JUMP_AHEAD_S = 1.0  # ... and so is presentation time running this much ahead of the arrivals
DRIFT = 1e-3  # the PTS anchor may move 1 ms later per second: a camera clock slower than ours
LIVE_WAIT_S = 0.002  # a read that waited this long found its socket empty: the reader is at the live edge
NAP_GUARD_S = 0.08  # a nap ends this long before the next keyframe is due at the least ...
NAP_GUARD_SHARE = 0.1  # ... or this share of the keyframe interval where that is longer (the network's jitter)
NAP_MIN_S = 0.05  # a shorter nap would save next to nothing
NAP_READ_TIMEOUT_SHARE = 0.25  # a nap lasts at most this share of the read timeout
RATE_WINDOW_S = 2.0  # the stream's bitrate is measured over this much of its media time


class DecodePlan:
    def __init__(self, sample_fps: float, setting: DecodeSetting = "auto") -> None:
        self.period = 1.0 / sample_fps
        self.setting = setting
        self._keyframes: deque[float] = deque(maxlen=INTERVALS + 1)
        self.interval: float | None = None  # the median keyframe interval in seconds; None until two were seen
        self.regular = False  # all the measured intervals are within REGULAR_GOP of their median

    def keyframe(self, media_s: float | None) -> None:
        """A keyframe at this presentation time (seconds).  The same time again is the same
        picture in another packet (parameter sets sent in-band split it); time going backwards
        (a looped file, a camera restart) starts the measurement afresh."""
        if media_s is None or (self._keyframes and media_s == self._keyframes[-1]):
            return
        if self._keyframes and media_s <= self._keyframes[-1]:
            self._keyframes.clear()
        self._keyframes.append(media_s)
        # measured here, once per keyframe, not per packet: regular means a fixed GOP (not a camera's
        # "smart" codec that stretches it in quiet scenes), whose next keyframe's arrival is foreseeable
        gaps = [b - a for a, b in itertools.pairwise(self._keyframes)]
        self.interval = interval = statistics.median(gaps) if gaps else None
        self.regular = (
            interval is not None
            and len(gaps) >= 2
            and all(abs(gap - interval) <= REGULAR_GOP * interval for gap in gaps)
        )

    @property
    def mode(self) -> DecodeMode:
        if self.setting != "auto":
            return self.setting
        interval = self.interval
        if interval is None:
            return "all"  # until the interval is known
        return "keyframes" if self.period >= interval * (1 - KEYFRAME_TOLERANCE) else "all"

    def align(self, now: float, next_sample: float) -> float:
        """All-frames mode (``auto``), at a keyframe arriving at ``now``: when the next sample is
        due.  Where the GOP is regular and its interval holds a whole number of sampling
        periods, the schedule is moved onto the keyframes: the sample due within half a period
        is taken from this keyframe (``now``), else the next one is due a period after it.  The
        rate stays; what changes is that each GOP's last sample comes a period before the next
        keyframe, so the frames after it need no decoding (``trim``).  Once aligned, a sample
        is due at every keyframe, and moves by the network's jitter only."""
        interval, period = self.interval, self.period
        if self.setting != "auto" or interval is None or not self.regular:
            return next_sample
        whole = round(interval / period)
        if whole < 2 or abs(interval - whole * period) > WHOLE_PERIODS * period:
            return next_sample
        return now if next_sample - now <= period / 2 else now + period

    def trim(self, next_sample: float, key_at: float | None) -> bool:
        """All-frames mode (``auto``): are the frames until the next keyframe not needed?  Yes
        when the next sample is due no sooner than half a period before the next keyframe is
        (the keyframe that arrived at ``key_at``, plus the interval): that sample comes from the
        next keyframe on (``align`` takes the keyframe itself for a sample due within half a
        period).  Only for a regular GOP, whose next keyframe's arrival can be foreseen."""
        interval = self.interval
        if self.setting != "auto" or interval is None or key_at is None or not self.regular:
            return False
        return next_sample >= key_at + interval - self.period / 2

    def take_keyframe(self, now: float, next_sample: float) -> bool:
        """In keyframe mode: decode the keyframe arriving at ``now``?  Yes when it is nearer the
        due sample than the next keyframe will be (half an interval early at most)."""
        interval = self.interval
        early = interval / 2 if interval is not None else 0.0
        return now >= next_sample - early


class SourceClock:
    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.jumps = 0  # discontinuities of the stream's timeline (a looped file, a restarted encoder)
        self._shift = 0.0  # added to timestamps to keep the timeline continuous across jumps
        self._last_packet: tuple[float, float, bool] | None = None  # (continuous time, arrival, was a DTS)
        self._offset: float | None = None  # arrival - time of the earliest-arriving frame
        self._last_arrival: float | None = None  # of the previous frame
        self._distrusted = False

    def packet(self, dts_s: float | None, pts_s: float | None, arrival: float) -> None:
        """Every packet, in decoding order.  A step back in its decoding time (beyond a B-frame's
        reordering where only presentation times exist), or a step ahead of the arrivals by more
        than JUMP_AHEAD_S, is a jump in the timeline: the timeline continues from the previous
        packet, so the mapping from before the jump (RTCP's, or the anchor) stays valid where
        FFmpeg's start_time_realtime would not.  Encoders restart their timeline (a looped file;
        an RTSP server that restarts a shared session for a new client; cameras after a
        reconnect of their own)."""
        ts, is_dts = (dts_s, True) if dts_s is not None else (pts_s, False)
        if ts is None:
            return
        t = ts + self._shift
        last = self._last_packet
        if last is not None:
            dt, da = t - last[0], max(0.0, arrival - last[1])
            back = -JUMP_BACK_DTS_S if is_dts and last[2] else -JUMP_BACK_S
            if dt < back or dt > da + JUMP_AHEAD_S:
                self.jumps += 1
                self._shift += last[0] + da - t
                t = ts + self._shift
                log.info("stream %s: its timestamps jumped by %.3fs; continuing its clock", self.stream_id, dt)
        self._last_packet = (t, arrival, is_dts)

    def capture_time(
        self, pts_s: float | None, arrival: float, realtime_origin: float | None
    ) -> tuple[float | None, Clock]:
        """Wall-clock capture time of a frame with presentation time ``pts_s`` that arrived at
        ``arrival`` (Unix seconds); ``realtime_origin``: from RTCP, the wall time of PTS 0.
        None (clock "reader") for a frame without a timestamp."""
        if pts_s is None:
            return None, "reader"
        t = pts_s + self._shift
        if realtime_origin is not None and not self._distrusted:
            at = realtime_origin + t
            if arrival - RTCP_PAST_S <= at <= arrival + RTCP_FUTURE_S:
                return at, "rtcp"
            self._distrusted = True  # a camera whose clock is off: say so once, use its PTS
            log.warning(
                "stream %s: RTCP says frames were captured %.1fs from their arrival; the camera's clock is "
                "not set, so its frame ages are measured from the first frame instead",
                self.stream_id,
                arrival - at,
            )
        offset = arrival - t
        if self._offset is None or self._last_arrival is None:
            self._offset = offset
        else:  # the earliest arrival so far, allowing for a camera clock that runs slow
            self._offset = min(self._offset + DRIFT * max(0.0, arrival - self._last_arrival), offset)
        self._last_arrival = arrival
        return t + self._offset, "pts"


class Naps:
    """When a keyframe-mode reader at the live edge of a TCP stream may sleep, and for how long.

    The next keyframe is due at the last one's presentation time plus the measured keyframe
    interval, on the arrival timeline: media time plus the live edge's offset, the smallest
    arrival-minus-media time over this keyframe interval and the one before (packets read
    from the socket's buffer arrive late and never set it; a window, not the smallest ever,
    so an early outlier or a timeline that jumped ahead is forgotten after two keyframes).
    A nap ends ``max(NAP_GUARD_S, NAP_GUARD_SHARE * interval)`` before the keyframe is due,
    so keyframes are still read as they arrive; it never lets more than ``budget_bytes`` of
    the stream (at its measured bitrate) wait in the socket, nor lasts more than ``max_s``.
    A timeline that jumps back (a restarted encoder) starts the estimate afresh."""

    def __init__(self, budget_bytes: int, max_s: float) -> None:
        self.budget_bytes = budget_bytes
        self.max_s = max_s
        self.count = 0  # naps taken
        self.seconds = 0.0  # and their total length
        self._edges: tuple[float, float] | None = None  # the smallest arrival - media time: (last interval, this one)
        self._last: tuple[float, float] | None = None  # the previous packet's (media time, arrival)
        self._keyframe: float | None = None  # the last keyframe's media time
        self._window: tuple[float, int] | None = None  # (media time it began, bytes since)
        self._rate: float | None = None  # bytes per second of media time

    def packet(self, media_s: float | None, arrival: float, size: int, key: bool) -> None:
        """Every packet read, with its presentation time (seconds), its arrival (monotonic
        seconds: when the read returned) and its size."""
        if media_s is None:
            return
        offset = arrival - media_s
        last, edges = self._last, self._edges
        if last is None or edges is None or media_s < last[0] - JUMP_BACK_S:
            self._edges, self._keyframe, self._window = (offset, offset), None, None  # a (new) timeline
        elif key and media_s != self._keyframe:
            self._edges = (edges[1], offset)
        elif offset < edges[1]:
            self._edges = (edges[0], offset)
        self._last = (media_s, arrival)
        if key:
            self._keyframe = media_s
        window = self._window
        if window is None or media_s < window[0]:
            self._window = (media_s, size)
        elif media_s - window[0] >= RATE_WINDOW_S:
            self._rate = window[1] / (media_s - window[0])
            self._window = (media_s, size)
        else:
            self._window = (window[0], window[1] + size)

    def nap(self, now: float, interval: float | None) -> float:
        """Seconds to sleep now (monotonic ``now``), at the live edge; 0: read on."""
        if self._edges is None or self._keyframe is None or interval is None or interval <= 0:
            return 0.0
        due = min(self._edges) + self._keyframe + interval  # when the next keyframe arrives
        seconds = min(due - max(NAP_GUARD_S, NAP_GUARD_SHARE * interval) - now, self.max_s)
        if self._rate:
            seconds = min(seconds, self.budget_bytes / self._rate)
        if seconds < NAP_MIN_S:
            return 0.0
        self.count += 1
        self.seconds += seconds
        return seconds
