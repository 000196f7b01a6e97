"""The PyAV reader's decisions, without a decoder: what to decode, each frame's capture time, and
when a keyframe-mode reader may sleep between keyframes."""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection

import pytest

from gateway.ingest.reader import next_due
from gateway.ingest.sampling import DRIFT, NAP_MIN_S, DecodePlan, Naps, SourceClock


def stamp(clock: SourceClock, pts: float, arrival: float, origin: float | None) -> tuple[float, str]:
    at, kind = clock.capture_time(pts, arrival=arrival, realtime_origin=origin)
    assert at is not None, "a frame with a timestamp has a capture time"
    return at, kind


def keyframes(plan: DecodePlan, times: list[float]) -> DecodePlan:
    for t in times:
        plan.keyframe(t)
    return plan


def test_the_keyframe_interval_is_measured_not_assumed() -> None:
    plan = DecodePlan(sample_fps=1)
    assert plan.interval is None and plan.mode == "all", "until two keyframes are seen, decode everything"
    keyframes(plan, [10.0, 11.0, 12.0, 13.04, 14.0])
    assert plan.interval == pytest.approx(1.0, abs=0.05)


def test_auto_decodes_keyframes_at_or_below_the_keyframe_rate_and_all_frames_above_it() -> None:
    gop25 = [i * 1.0 for i in range(6)]  # 25 fps, a keyframe every 25 frames
    assert keyframes(DecodePlan(sample_fps=1), gop25).mode == "keyframes"
    assert keyframes(DecodePlan(sample_fps=0.5), gop25).mode == "keyframes"
    assert keyframes(DecodePlan(sample_fps=1.04), gop25).mode == "keyframes", "within the jitter tolerance"
    assert keyframes(DecodePlan(sample_fps=2), gop25).mode == "all"
    assert keyframes(DecodePlan(sample_fps=2, setting="keyframes"), gop25).mode == "keyframes", "overridden"
    assert keyframes(DecodePlan(sample_fps=1, setting="all"), gop25).mode == "all", "overridden"


def test_a_longer_gop_switches_to_all_frames_and_a_shorter_one_back() -> None:
    plan = keyframes(DecodePlan(sample_fps=1), [0, 1, 2, 3, 4])
    modes = [plan.mode]
    keyframes(plan, [6, 8, 10, 12, 14])  # the camera's GOP became 2 s
    modes.append(plan.mode)
    assert plan.interval == pytest.approx(2.0)
    keyframes(plan, [15, 16, 17, 18, 19, 20])
    modes.append(plan.mode)
    assert modes == ["keyframes", "all", "keyframes"]


def test_time_going_back_restarts_the_measurement() -> None:
    plan = keyframes(DecodePlan(sample_fps=1), [0, 1, 2, 3])
    plan.keyframe(0.0)  # a looped file
    assert plan.interval is None
    plan.keyframe(4.0)
    assert plan.interval == 4.0 and plan.mode == "all"


def test_a_keyframe_in_several_packets_counts_once() -> None:
    # one picture handed over in two packets of one timestamp is one keyframe, not a time going back
    plan = keyframes(DecodePlan(sample_fps=1), [0, 0, 1, 1, 2, 2, 3, 3])
    assert plan.interval == 1.0 and plan.mode == "keyframes"


def all_frames(
    plan: DecodePlan, seconds: float, keys: Collection[int], *, fps: int = 25, phase: float = 0.3
) -> tuple[float, list[float]]:
    """The PyAV reader's all-frames path over a live stream (each frame arriving up to 5 ms late):
    the share of the frames it decodes, and when it takes its samples."""
    rng = random.Random(7)
    next_sample, key_at, synced = phase, None, False
    decoded, samples, total = 0, [], int(seconds * fps)
    for i in range(total):
        now, key = i / fps + rng.uniform(0, 0.005), i in keys
        if key:
            plan.keyframe(i / fps)
            key_at = now
            next_sample = plan.align(now, next_sample)
        elif synced and plan.trim(next_sample, key_at):
            synced = False
        if not (key or synced):
            continue
        synced, decoded = True, decoded + 1
        if now >= next_sample:
            samples.append(now)
            next_sample = next_due(next_sample, now, plan.period)
    return decoded / total, samples


GOP_25 = range(0, 100_000, 25)


def test_all_frames_mode_decodes_each_gop_only_up_to_its_last_sample() -> None:
    # given a 25 fps camera with a keyframe every second, sampled at 2 fps, the schedule out of phase at first
    plan = DecodePlan(sample_fps=2)
    share, samples = all_frames(plan, 20, GOP_25)
    # then the schedule moves onto the keyframes, and each GOP is decoded from its keyframe to its
    # second sample (14 frames of 25 once aligned; all of them in the first 2 s, before the GOP is known
    # to be regular), not to its end; the rate stays, samples half a period off at most
    assert plan.regular and share < 0.62, f"{share:.0%} of the frames decoded"
    assert 39 <= len(samples) <= 41, f"{len(samples)} samples in 20 s at 2 fps"
    assert max(b - a for a, b in itertools.pairwise(samples)) <= 0.75 + 0.01
    keyframe_samples = [t for t in samples if t > 3 and (t * 25) % 25 < 0.2]
    assert len(keyframe_samples) >= 16, "once aligned, a sample falls on every keyframe"


@pytest.mark.parametrize("fps", [2.5, 3.0, 5.0])
def test_other_rates_keep_their_rate_and_decode_less(fps: float) -> None:
    # 2.5 per second does not divide a 1 s GOP (no alignment): each GOP is still cut after its last sample
    share, samples = all_frames(DecodePlan(sample_fps=fps), 20, GOP_25)
    assert abs(len(samples) - 20 * fps) <= 1.5, f"{len(samples)} samples in 20 s at {fps} fps"
    assert max(b - a for a, b in itertools.pairwise(samples)) <= 1.5 / fps + 0.01
    assert share < {2.5: 0.75, 3.0: 0.78, 5.0: 0.9}[fps], f"{share:.0%} of the frames decoded at {fps} fps"


def test_every_frame_is_decoded_when_the_gop_is_irregular_or_all_is_forced() -> None:
    # a camera whose GOP stretches in quiet scenes: its next keyframe cannot be foreseen
    smart = {0, 25, 75, 100, 175, 200, 300, 325, 400, 425, 475}
    share, samples = all_frames(plan := DecodePlan(sample_fps=2), 20, smart)
    assert not plan.regular and share == 1.0 and 39 <= len(samples) <= 41
    share, _ = all_frames(plan := DecodePlan(sample_fps=2, setting="all"), 20, GOP_25)
    assert plan.regular and share == 1.0, "decode: all decodes every frame"


def test_a_keyframe_takes_the_sample_due_within_half_a_period() -> None:
    plan = keyframes(DecodePlan(sample_fps=2), [0, 1, 2, 3])
    assert plan.align(now=10.0, next_sample=10.2) == 10.0, "due soon: taken early from the keyframe"
    assert plan.align(now=10.0, next_sample=9.9) == 10.0, "overdue (the GOP was cut): taken from the keyframe"
    assert plan.align(now=10.0, next_sample=10.4) == 10.5, "just sampled: the next one a period after it"
    assert not plan.trim(next_sample=10.5, key_at=10.0) and plan.trim(next_sample=10.75, key_at=10.0)
    assert not plan.trim(next_sample=10.75, key_at=None), "no keyframe seen yet"


def test_the_keyframe_nearest_each_due_sample_is_taken() -> None:
    plan = keyframes(DecodePlan(sample_fps=0.5), [0, 1, 2])  # every other keyframe
    assert plan.take_keyframe(now=100.0, next_sample=100.0)
    assert not plan.take_keyframe(now=101.0, next_sample=102.0), "the one at 102 is nearer"
    assert plan.take_keyframe(now=101.6, next_sample=102.0), "jitter: this one is nearer than the next"


def test_rtcp_gives_the_camera_capture_time() -> None:
    clock = SourceClock("cam")
    origin = 1_800_000_000.0  # the wall time of PTS 0, from the first sender report
    at, kind = stamp(clock, 4.0, origin + 4.3, origin)
    assert kind == "rtcp" and at == pytest.approx(origin + 4.0), "0.3 s of network and buffers show in the age"


def test_a_camera_clock_that_is_off_is_not_trusted() -> None:
    clock = SourceClock("cam")
    at, kind = stamp(clock, 1.0, 2_000.0, 5_000.0)  # an hour in the future
    assert kind == "pts" and at == pytest.approx(2_000.0)
    _, kind = stamp(clock, 2.0, 2_001.0, 1_999.0)
    assert kind == "pts", "once distrusted, the camera's clock stays out"


def test_without_rtcp_the_earliest_arrival_anchors_the_pts() -> None:
    clock = SourceClock("cam")
    assert clock.capture_time(None, 50.0, None) == (None, "reader")
    at, kind = stamp(clock, 0.0, 100.3, None)
    assert at == pytest.approx(100.3) and kind == "pts"
    at, _ = stamp(clock, 1.0, 101.1, None)  # arrived faster: the new anchor
    assert at == pytest.approx(101.1)
    at, _ = stamp(clock, 2.0, 102.6, None)  # 0.5 s late: it shows
    assert 102.6 - at == pytest.approx(0.5 - DRIFT * 1.5, abs=1e-6)


def test_a_jump_in_the_timestamps_is_bridged() -> None:
    clock = SourceClock("cam")
    origin = 1_800_000_000.0

    def frame(t: float, arrival: float) -> float:
        clock.packet(t, t, arrival)
        at, kind = stamp(clock, t, arrival, origin)
        assert kind == "rtcp"
        return arrival - at  # the age

    for t in (1.0, 1.04, 1.08):
        assert frame(t, origin + t + 0.04) == pytest.approx(0.04)
    # the encoder restarts its timeline (an RTSP server restarting a shared session for a new client)
    assert frame(0.02, origin + 1.16) == pytest.approx(0.04, abs=1e-6), "the age stays what it was"
    assert clock.jumps == 1
    assert frame(0.06, origin + 1.20) == pytest.approx(0.04, abs=1e-6)
    # however small the step back in decoding time (this one: 40 ms)
    assert frame(0.02, origin + 1.24) == pytest.approx(0.04, abs=1e-6) and clock.jumps == 2
    # a burst after a network stall is not a jump: the frames are late, and their age shows it
    assert frame(0.10, origin + 4.0) == pytest.approx(2.72, abs=1e-6)
    assert frame(0.14, origin + 4.001) == pytest.approx(2.681, abs=1e-6) and clock.jumps == 2


def test_presentation_times_may_step_back_by_a_few_frames() -> None:
    clock = SourceClock("cam")
    for pts, arrival in ((0.0, 0.0), (0.12, 0.04), (0.04, 0.08), (0.08, 0.12), (0.24, 0.16)):  # B-frames, no DTS
        clock.packet(None, pts, arrival)
    assert clock.jumps == 0
    clock.packet(None, 2.0, 2.0)
    clock.packet(None, 0.0, 2.04)  # a looped file
    assert clock.jumps == 1


def live(naps: Naps, start: float, seconds: float, *, delay: float = 0.0, size: int = 700) -> float:
    """Packets of a 25 fps, GOP 25 stream from media time ``start`` for ``seconds``, each read as it
    arrives ``delay`` after its media time (on a monotonic clock where media time 0 arrives at 100);
    the keyframes are 10x the size.  Returns the last arrival."""
    arrival = 100.0
    for i in range(round(seconds * 25)):
        t = round(start + i * 0.04, 6)
        key = abs(t - round(t)) < 1e-6
        arrival = 100.0 + t + delay
        naps.packet(t, arrival, size * (10 if key else 1), key)
    return arrival


def test_a_nap_ends_a_guard_before_the_next_keyframe_is_due() -> None:
    naps = Naps(budget_bytes=1 << 30, max_s=10.0)
    assert naps.nap(100.0, 1.0) == 0.0, "nothing seen yet: no nap"
    live(naps, 0.0, 3.04)  # up to and including the keyframe at media time 3.0, arrived at 103.0
    assert naps.nap(103.0, None) == 0.0, "no interval measured yet: no nap"
    # the next keyframe arrives at 104.0; the guard is max(80 ms, 10% of the interval)
    assert naps.nap(103.0, 1.0) == pytest.approx(0.9)
    assert naps.nap(103.5, 1.0) == pytest.approx(0.4), "woken early (a frame read live): nap the rest"
    assert naps.nap(103.87, 1.0) == 0.0, "a nap under NAP_MIN_S is not worth it"
    assert naps.nap(104.3, 1.0) == 0.0, "the keyframe is overdue: read on"
    assert naps.nap(103.0, 0.5) == pytest.approx(0.42), "a shorter interval: the 80 ms guard"
    assert naps.count == 3 and naps.seconds == pytest.approx(0.9 + 0.4 + 0.42)


def test_the_live_edge_is_the_earliest_arrival_of_the_last_two_intervals() -> None:
    naps = Naps(budget_bytes=1 << 30, max_s=10.0)
    live(naps, 0.0, 2.04, delay=0.3)  # read 0.3 s behind ...
    live(naps, 2.04, 0.2, delay=0.0)  # ... then caught up: the frames that arrive as read set the edge
    assert naps.nap(102.24, 1.0) == pytest.approx(0.66)
    # frames read late from the socket's buffer (after a nap) never move the edge later
    live(naps, 2.24, 0.72, delay=0.5)
    assert naps.nap(102.5, 1.0) == pytest.approx(0.4)
    # an edge that was too early (a stall of the network, then a burst ahead of time) is forgotten
    # after two keyframes: the next keyframe is not expected before it can come
    naps2 = Naps(budget_bytes=1 << 30, max_s=10.0)
    naps2.packet(0.0, 99.0, 7000, True)  # an outlier: 1 s early
    live(naps2, 0.04, 3.0)
    assert naps2.nap(103.0, 1.0) == pytest.approx(0.9)


def test_a_timeline_that_jumps_back_starts_afresh() -> None:
    naps = Naps(budget_bytes=1 << 30, max_s=10.0)
    live(naps, 10.0, 2.04)  # keyframe at media 12.0, arrived at 112.0
    assert naps.nap(112.0, 1.0) == pytest.approx(0.9)
    naps.packet(0.04, 112.04, 700, False)  # the encoder restarted its timeline
    assert naps.nap(112.04, 1.0) == 0.0, "no keyframe on the new timeline yet"
    naps.packet(1.0, 113.0, 7000, True)
    assert naps.nap(113.0, 1.0) == pytest.approx(0.9)


def test_a_nap_never_buffers_more_than_the_budget_nor_lasts_more_than_the_cap() -> None:
    # 24 frames of 700 bytes and a keyframe of 7000 a second: 23,800 bytes per second of media
    naps = Naps(budget_bytes=11_900, max_s=10.0)
    live(naps, 0.0, 3.04)
    assert naps.nap(103.0, 1.0) == pytest.approx(0.5, rel=0.05), "half a second of the stream fits the budget"
    capped = Naps(budget_bytes=1 << 30, max_s=0.3)
    live(capped, 0.0, 3.04)
    assert capped.nap(103.0, 1.0) == pytest.approx(0.3)
    tiny = Naps(budget_bytes=500, max_s=10.0)
    live(tiny, 0.0, 3.04)
    assert tiny.nap(103.0, 1.0) == 0.0 and NAP_MIN_S * 23_800 > 500, "a budget under a nap's worth: no naps"
