"""What only the PyAV reader does, against a real RTSP server (GStreamer) and real H.264 files:
keyframe-only decoding, switching mode with the stream's GOP, the camera's clock, bounded
waits on a frozen source, and the hardware-decoder fallback.  The contract both readers
share (states, reconnects, files, redaction) is tests/integration/test_ingest.py."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from gateway.ingest import Frame, PyAvReader, ReaderConfig, StreamState, parse_source
from harness.helpers import wait_until
from harness.peers.clips import write_clip
from harness.peers.proxy import TcpProxy
from harness.peers.rtsp import RtspServer

pytestmark = pytest.mark.integration


@pytest.fixture
def rtsp() -> Iterator[RtspServer]:
    server = RtspServer()  # 640x360, 25 fps, a keyframe every 25 frames
    try:
        yield server
    finally:
        server.stop()


def config(**kw: object) -> ReaderConfig:
    base: dict[str, object] = {"width": 320, "height": 180, "open_timeout_s": 3, "read_timeout_s": 2}
    return ReaderConfig(**{**base, **kw})  # type: ignore[arg-type]


def frames(reader: PyAvReader, seconds: float) -> list[Frame]:
    """Every frame sampled in the next ``seconds``: not the one already waiting (sampled before,
    which on a slow machine made a 4 s window hold 6 frames of a 1 fps stream), and none after."""
    out: list[Frame] = []
    start = time.monotonic()
    end = start + seconds
    while (left := end - time.monotonic()) > 0:
        frame = reader.latest(after=out[-1].index if out else 0, timeout=min(0.5, left))
        if frame is not None:
            out.append(frame)
    return [f for f in out if start <= f.captured_mono <= end]


@contextlib.contextmanager
def running(reader: PyAvReader) -> Iterator[PyAvReader]:
    reader.start()
    try:
        yield reader
    finally:
        reader.stop()
        assert reader.join(15), "the reader thread must stop within its bounded waits"


def test_keyframe_mode_samples_a_gop_25_stream_at_1_fps_decoding_only_keyframes(rtsp: RtspServer) -> None:
    # given a live 25 fps stream with a keyframe every second, sampled at 1 fps
    with running(PyAvReader("cam", parse_source(rtsp.url), config(sample_fps=1))) as reader:
        # when the reader has measured the keyframe interval
        wait_until(lambda: reader.stats.decode_mode == "keyframes", 10, what="keyframe mode")
        decoded, read = reader.stats.frames_decoded, reader.stats.frames_read
        got = frames(reader, 6.0)
        # then it delivers the sampling rate, and decodes one frame per sample: no more
        assert 5 <= len(got) <= 7, f"{len(got)} frames in 6 s at sample_fps=1"
        assert reader.stats.keyframe_interval_s == pytest.approx(1.0, abs=0.1)
        decoded, read = reader.stats.frames_decoded - decoded, reader.stats.frames_read - read
        assert read >= 120, f"{read} frames read in 6 s of a 25 fps stream"
        assert decoded <= len(got) + 1, f"{decoded} frames decoded for {len(got)} samples: only keyframes"
        assert all(f.image.shape == (180, 320, 3) and f.source_size == (640, 360) for f in got)
        assert reader.stats.mode_switches == 0


@pytest.mark.parametrize(("codec", "interval_s"), [("h265", 1.0), ("mjpeg", 0.04)])
def test_keyframe_mode_decodes_only_samples_from_hevc_and_mjpeg_cameras(codec: str, interval_s: float) -> None:
    # given an H.265 camera (a keyframe every second) or a Motion JPEG one (every frame is a keyframe)
    server = RtspServer(codec=codec)
    try:
        with running(PyAvReader("cam", parse_source(server.url), config(sample_fps=1))) as reader:
            # when it is sampled at 1 fps
            wait_until(lambda: reader.stats.decode_mode == "keyframes", 10, what=f"keyframe mode on {codec}")
            decoded = reader.stats.frames_decoded
            got = frames(reader, 5.0)
            # then only the keyframes nearest the samples are decoded
            assert 4 <= len(got) <= 6, f"{len(got)} frames in 5 s at sample_fps=1 from {codec}"
            assert reader.stats.keyframe_interval_s == pytest.approx(interval_s, rel=0.1)
            decoded = reader.stats.frames_decoded - decoded
            assert decoded <= len(got) + 1, f"{decoded} frames decoded for {len(got)} samples of {codec}"
            assert all(f.image.shape == (180, 320, 3) and f.source_size == (640, 360) for f in got)
            assert reader.stats.decode_errors == 0 and reader.stats.mode_switches == 0
    finally:
        server.stop()


def test_keyframes_split_over_several_packets_are_decoded_whole_in_keyframe_mode(tmp_path: Path) -> None:
    # given a camera whose keyframes have two slices and that sends SPS/PPS before each IDR slice
    clip = write_clip(tmp_path / "slices.mp4", seconds=20, width=320, height=180, slices=2)
    server = RtspServer(file=clip, config_interval=-1)
    try:
        # (FFmpeg hands each keyframe over in two packets of one timestamp)
        with av.open(server.url, options={"rtsp_transport": "tcp"}, timeout=(5.0, 5.0)) as container:
            stamps = [p.pts for p in itertools.islice(container.demux(container.streams.video[0]), 60) if p.is_keyframe]
        assert len(stamps) > len(set(stamps)) > 1, f"keyframe timestamps {stamps}: expected each one twice"
        with running(PyAvReader("cam", parse_source(server.url), config(sample_fps=1))) as reader:
            # when it is sampled at 1 fps
            wait_until(lambda: reader.stats.decode_mode == "keyframes", 10, what="keyframe mode")
            decoded = reader.stats.frames_decoded
            got = frames(reader, 4.0)
            # then the keyframe interval is measured right, only keyframes are decoded, and whole
            assert reader.stats.keyframe_interval_s == pytest.approx(1.0, abs=0.1)
            assert 3 <= len(got) <= 5 and reader.stats.frames_decoded - decoded <= len(got) + 1
            for f in got:  # the clip's green channel grows down the picture: no half-grey frame
                rows = f.image[:, :, 1].mean(axis=1)
                assert rows[-20:].std() > 2 and abs(rows[-1] - rows[90]) > 20, f"frame {f.index} is not whole"
            assert reader.stats.decode_errors == 0
    finally:
        server.stop()


def test_above_the_keyframe_rate_each_gop_is_decoded_up_to_its_last_sample(rtsp: RtspServer) -> None:
    # given a 25 fps camera with a keyframe every second, sampled at 2 fps: all frames mode
    with running(PyAvReader("cam", parse_source(rtsp.url), config(sample_fps=2))) as reader:
        # once three keyframes have shown a regular GOP
        wait_until(lambda: reader.stats.frames_read >= 80, 10, what="three keyframes")
        decoded, read = reader.stats.frames_decoded, reader.stats.frames_read
        got = frames(reader, 4.0)
        decoded, read = reader.stats.frames_decoded - decoded, reader.stats.frames_read - read
        # then it keeps the rate, and decodes each GOP from its keyframe to its second sample (14 frames
        # of 25: the samples fall on the keyframes and half-way), not the frames after it
        assert reader.stats.decode_mode == "all"
        assert 7 <= len(got) <= 10, f"{len(got)} frames in 4 s at sample_fps=2"
        assert 0.4 * read <= decoded <= 0.7 * read, f"{decoded} frames decoded of {read}"
        assert reader.stats.decode_errors == 0


def test_a_gop_cut_after_its_last_sample_leaves_no_frame_behind_in_the_decoder(tmp_path: Path) -> None:
    # given a camera with B-frames (its decoder holds frames back to put them in order), sampled at 2 fps
    clip = write_clip(tmp_path / "bframes.mp4", seconds=20, width=320, height=180, bframes=2)
    server = RtspServer(file=clip)
    try:
        with running(PyAvReader("cam", parse_source(server.url), config(sample_fps=2))) as reader:
            wait_until(lambda: reader.stats.frames_read >= 80, 10, what="three keyframes")
            decoded, read = reader.stats.frames_decoded, reader.stats.frames_read
            got = frames(reader, 4.0)
            decoded, read = reader.stats.frames_decoded - decoded, reader.stats.frames_read - read
            # then each GOP is cut after its last sample, and no frame held back in one GOP comes out
            # with the next keyframe as a sample (the camera's times of the samples only increase,
            # spaced as the sampling is)
            assert 7 <= len(got) <= 10 and decoded <= 0.75 * read, (len(got), decoded, read)
            stamps = [f.source_at for f in got if f.source_at is not None]
            assert len(stamps) == len(got)
            gaps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
            assert all(0.2 <= gap <= 0.8 for gap in gaps), f"gaps between samples on the camera's clock: {gaps}"
            assert reader.stats.decode_errors == 0
    finally:
        server.stop()


def test_the_decode_setting_overrides_the_choice(rtsp: RtspServer) -> None:
    with running(PyAvReader("cam", parse_source(rtsp.url), config(sample_fps=1, decode="all"))) as reader:
        wait_until(lambda: reader.stats.keyframe_interval_s is not None, 10, what="a measured keyframe interval")
        frames(reader, 2.0)
        assert reader.stats.decode_mode == "all" and reader.stats.frames_decoded > 40


def test_a_stream_whose_gop_grows_switches_to_all_frames_and_keeps_the_rate(tmp_path: Path) -> None:
    # given a clip with a keyframe every second for 5 s, then every 2 s (sample_fps 1 > 0.5 keyframes/s)
    keys = {*range(0, 125, 25), *range(125, 400, 50)}
    clip = write_clip(tmp_path / "gop.mp4", seconds=12, width=320, height=180, keyframes=keys)
    reader = PyAvReader("cam", parse_source(str(clip)), config(sample_fps=1))
    with running(reader) as reader:
        wait_until(lambda: reader.stats.decode_mode == "keyframes", 5, what="keyframe mode first")
        # when the keyframes thin out
        wait_until(lambda: reader.stats.decode_mode == "all", 10, what="the switch to all frames")
        # then it decodes every frame from the next keyframe on, and frames keep coming at the rate
        assert reader.stats.mode_switches == 1 and reader.stats.keyframe_interval_s == pytest.approx(1.5, abs=0.5)
        got = frames(reader, 3.0)
        assert 2 <= len(got) <= 4, f"{len(got)} frames in 3 s at sample_fps=1 after the switch"
        assert reader.stats.decode_errors == 0, "no packet reached the decoder without its references"


@pytest.mark.parametrize("burst_kib", [64, 0])
def test_keyframe_mode_sleeps_between_keyframes_and_still_reads_each_as_it_arrives(
    rtsp: RtspServer, burst_kib: int
) -> None:
    # given a GOP-25 camera over TCP sampled at 1 fps, read in bursts between keyframes (64 KiB) or not (0)
    with running(PyAvReader("cam", parse_source(rtsp.url), config(sample_fps=1, burst_kib=burst_kib))) as reader:
        wait_until(lambda: reader.stats.decode_mode == "keyframes", 10, what="keyframe mode")
        wait_until(lambda: reader.stats.clock == "rtcp", 10, what="RTCP sender reports")
        read, napped, started = reader.stats.frames_read, reader.stats.napped_s, time.monotonic()
        got = frames(reader, 5.0)
        read, napped = reader.stats.frames_read - read, reader.stats.napped_s - napped
        elapsed = time.monotonic() - started
        # then it sleeps most of the time, or never ...
        if burst_kib:
            assert napped >= 0.6 * elapsed, f"asleep {napped:.2f}s of {elapsed:.2f}s"
        else:
            assert reader.stats.naps == 0 and reader.stats.napped_s == 0
        # ... and reads every frame, and each keyframe as it arrives: on the camera's clock, no older
        # than a frame read live (a keyframe found at the end of a 0.9 s nap would be up to 0.9 s old)
        assert read >= 115, f"{read} frames read in 5 s of a 25 fps stream"
        assert 4 <= len(got) <= 6, f"{len(got)} frames in 5 s at sample_fps=1"
        ages = sorted(f.captured_at - f.source_at for f in got if f.source_at is not None)
        assert ages and ages[-1] < 0.2, f"ages on the camera's clock {ages}"


def test_frame_timestamps_increase_and_follow_the_source_clock(rtsp: RtspServer) -> None:
    with running(PyAvReader("cam", parse_source(rtsp.url), config(sample_fps=2))) as reader:
        wait_until(lambda: reader.stats.clock == "rtcp", 10, what="RTCP sender reports")
        got = frames(reader, 3.0)
        assert len(got) >= 5 and all(f.clock == "rtcp" and f.source_at is not None for f in got)
        stamps = [f.source_at for f in got if f.source_at is not None]
        assert all(b > a for a, b in itertools.pairwise(stamps)), "capture times only increase"
        for a, b in itertools.pairwise(got):  # the camera's spacing is the sampling's
            assert a.source_at is not None and b.source_at is not None
            gap, taken = b.source_at - a.source_at, b.captured_at - a.captured_at
            assert abs(gap - taken) < 0.2, f"camera gap {gap:.3f}s, reader gap {taken:.3f}s"
        ages = [f.captured_at - (f.source_at or 0) for f in got]
        assert all(0 <= a < 0.5 for a in ages), f"ages on the camera's clock {ages}: loopback, a live encoder"


def test_a_known_network_delay_shows_in_the_frame_age(rtsp: RtspServer) -> None:
    # given the camera behind a link that delays everything it sends by 0.8 s once it plays (a slower
    # setup would leave this server's media paused in between, and its RTCP clock behind by as much)
    with TcpProxy(rtsp.port, delay_s=0.8, delay_after=b"RTP-Info") as link:
        url = f"rtsp://127.0.0.1:{link.port}/test"
        with running(PyAvReader("cam", parse_source(url), config(sample_fps=1, open_timeout_s=8))) as reader:
            wait_until(lambda: reader.stats.clock == "rtcp", 15, what="RTCP sender reports")
            got = frames(reader, 3.0)
            # then the age on the camera's clock includes the delay, which the reader's own clock cannot see
            ages = [f.captured_at - f.source_at for f in got if f.source_at is not None]
            assert ages and all(0.8 <= a < 1.4 for a in ages), f"ages {ages} behind a 0.8 s link"


@pytest.mark.parametrize(
    ("sample_fps", "bound_s"),
    [(2, 2.0), (1, 2.5)],  # every frame decoded; keyframe mode, napping up to a quarter of the read timeout
    ids=["all-frames", "keyframes-napping"],
)
def test_a_frozen_source_is_noticed_within_the_read_timeout_and_no_thread_stays_blocked(
    rtsp: RtspServer, sample_fps: int, bound_s: float
) -> None:
    changes: list[tuple[StreamState, float]] = []
    reader = PyAvReader(
        "frozen",
        parse_source(rtsp.url),
        config(sample_fps=sample_fps),
        on_state=lambda c: changes.append((c.new, time.monotonic())),
    )
    with running(reader) as reader:
        wait_until(lambda: reader.state is StreamState.RUNNING, 10, what="running")
        if sample_fps == 1:
            wait_until(lambda: reader.stats.naps >= 2, 15, what="naps between keyframes")
        rtsp.freeze()
        try:
            wait_until(lambda: reader.state is StreamState.RECONNECTING, 10, 0.05, what="reconnecting")
            last = reader.stats.last_read_mono
            assert last is not None
            stalled = next(t for s, t in changes if s is StreamState.STALLED)
            assert stalled - last < bound_s + 0.5, f"stalled {stalled - last:.2f}s after the last frame"
            # the frozen connection was closed on the side, and nothing waits on it for long
            wait_until(
                lambda: not [t for t in threading.enumerate() if t.name == "release-frozen"],
                3,
                0.05,
                what="the frozen connection closed",
            )
            readers = [t for t in threading.enumerate() if t.name.startswith("reader-frozen-")]
            assert len(readers) == 1, f"one reader thread, not {[t.name for t in readers]}"
        finally:
            rtsp.thaw()
        wait_until(lambda: reader.state is StreamState.RUNNING, 20, what="running after SIGCONT")


def test_a_hardware_decoder_that_cannot_open_falls_back_to_software(tmp_path: Path) -> None:
    # this machine has no GPU: CUDA's device cannot be created
    clip = write_clip(tmp_path / "clip.mp4", seconds=2, width=320, height=180)
    with running(PyAvReader("cam", parse_source(str(clip), loop=True), config(hwaccel="cuda"))) as reader:
        wait_until(lambda: reader.stats.frames_sampled >= 3, 10, what="frames decoded in software")
        assert reader.stats.hwaccel is None and reader.state is StreamState.RUNNING
