"""``python -m bench.stream_density``: how many live RTSP streams this machine sustains, per reader.

N RTSP streams (640x360, 25 fps H.264, a keyframe every 25 frames) from ``--servers``
GStreamer server processes, streams assigned round-robin (one server stops taking
clients near 96, so the rig is spread out to stay off the critical path).  ``--rig``
says what a server sends: ``live``, one live encode shared by its clients (their
keyframes all come at the same instant, which keyframe mode pays for in bursts);
``phased``, a pre-encoded clip at ``--mounts`` mount points each shared from when its
first client joined (keyframes in servers x mounts phases, as cameras are not in
phase); ``replay``, the clip from its start for each client (every client in its own
phase and on its own RTP clock).  ``--model stand-in`` serves a model with
MobileNetV3-Small's contract and next to no compute, so the model's cost leaves the
2 cores as it would on a GPU host.  Each stream is sampled at each of
``--rates`` and classified.  Arms, side by side in one run, each with a gateway
process of its own (nothing shared between arms):

- **opencv**: the gateway with ``ingest.backend: opencv`` (decodes every frame);
- **pyav-all**: the PyAV reader decoding every frame (``ingest.decode: all``);
- **pyav-gop**: the PyAV reader with ``ingest.decode: auto`` above the keyframe rate:
  all-frames mode, each GOP decoded from its keyframe only up to its last sample
  (the schedule moved onto the keyframes); run only above the keyframe rate;
- **pyav-keyframes**: the PyAV reader with ``ingest.decode: auto``, which decodes
  keyframes only when sample_fps is at or below the keyframe rate (1/s here); run
  only at such rates (above, auto *is* pyav-gop), and GET /streams must say so;
  between keyframes its readers nap and read what arrived in one burst
  (``ingest.burst_kib``, the default);
- **pyav-keyframes-each**: the same, its readers waking for each frame as it arrives
  (``ingest.burst_kib: 0``);
- **naive**: one thread per stream running ``VideoCapture.read()`` and, when a
  sample is due, preprocess + a synchronous Triton call in the same loop.

Each arm and rate steps through ``--counts`` and stops at the first level that is
not *sustained*: frame age p95 <= 500 ms and every stream >= 90% of the rate.  One
SSE subscriber per stream; frame age = receive time - ``captured_at`` (the reader's
clock) and receive time - ``source_at`` (the camera's clock, RTCP; PyAV only).  The
measured window is on capture time, so a stream's count is not cut by when its
subscriber connected.  CPU per process group (gateway, triton, stub, rtsp, client)
and the reader's cost per stream in millicores.  Also: ``--subscribers`` SSE
subscribers on one stream, delivery lag.  Prints a table, writes JSON and a PNG
plot (frame age p95 against streams, a panel per rate) to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from bench import servers
from bench.density_report import (
    AGE_BOUND_MS,
    CAMERA_FPS,
    FPS_SHARE,
    GOP,
    DensityLevel,
    Report,
    header,
    parts_row,
    plot,
    row,
    table,
)
from bench.procstat import CpuMeter, Selector, group_pids, pid, stub_pids
from embedded_triton.repository import default_instances
from gateway.preprocess import classifier_input
from harness.helpers import GatewayProcess, stream_predictions, wait_until
from harness.peers.clips import write_clip
from harness.peers.rtsp import RtspServer

SAMPLE_FPS = 2.0  # start_streams' default rate (bench.cluster_scale, bench.capture_overhead)
CLIENTS_PER_SERVER = 90  # one RTSP server process stops taking clients near 96
CONNECT_S = 1.0  # subscribers connect before the measured window opens
TAIL_S = 1.0  # and read this long after it closes, for the window's late events


@dataclass(frozen=True)
class Arm:
    name: str
    env: dict[str, str] | None  # the gateway's settings; None: the naive loop, no gateway
    keyframes: bool = False  # expects keyframe decoding: run only at rates <= the keyframe rate
    above: bool = False  # run only at rates above the keyframe rate


ARMS = {
    a.name: a
    for a in (
        Arm("opencv", {"APP_INGEST__BACKEND": "opencv"}),
        Arm("pyav-all", {"APP_INGEST__BACKEND": "pyav", "APP_INGEST__DECODE": "all"}),
        Arm("pyav-gop", {"APP_INGEST__BACKEND": "pyav", "APP_INGEST__DECODE": "auto"}, above=True),
        Arm("pyav-keyframes", {"APP_INGEST__BACKEND": "pyav", "APP_INGEST__DECODE": "auto"}, keyframes=True),
        Arm(
            "pyav-keyframes-each",
            {"APP_INGEST__BACKEND": "pyav", "APP_INGEST__DECODE": "auto", "APP_INGEST__BURST_KIB": "0"},
            keyframes=True,
        ),
        Arm("naive", None),
    )
}


@dataclass(frozen=True)
class Rig:
    """What every level runs against: Triton, the RTSP servers, the CPU meter's process groups."""

    grpc_url: str
    cameras: list[str]  # RTSP URLs, one per server process; streams are assigned round-robin
    groups: dict[str, Selector]  # triton, stub, rtsp, client
    seconds: float  # measured seconds per level
    work: Path  # a private directory: the gateways' logs
    fresh: Callable[[], None] = lambda: None  # the servers restarted, same URLs (a clip from its start)

    def meter(self, **extra: Selector) -> CpuMeter:
        return CpuMeter({**self.groups, **extra})


class Event(NamedTuple):
    stream: str
    received: float
    captured_at: float
    source_at: float | None
    clock: str
    latency: dict[str, float | None]  # the event's latency_ms


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _level(
    arm: str, rate: float, *, ages: list[float], counts: list[int], seconds: float, cpu: dict[str, float], reader: str
) -> DensityLevel:
    """The figures every arm shares; ``reader``: the process group that reads (and decodes) the streams."""
    fps = [c / seconds for c in counts] or [0.0]
    p50, p95 = _pct(ages, 50), _pct(ages, 95)
    return DensityLevel(
        arm=arm,
        rate=rate,
        streams=len(counts),
        age_p50_ms=p50 if p50 is not None else float("inf"),
        age_p95_ms=p95 if p95 is not None else float("inf"),
        source_age_p50_ms=None,
        source_age_p95_ms=None,
        fps_min=round(min(fps), 2),
        fps_mean=round(float(np.mean(fps)), 2),
        cpu=cpu,
        millicores_per_stream=round(cpu.get(reader, 0.0) / max(1, len(counts)) * 1000, 1),
        sustained=p95 is not None and p95 <= AGE_BOUND_MS and min(fps) >= FPS_SHARE * rate,
    )


def start_streams(base_url: str, cameras: list[str], n: int, wait_s: float, *, sample_fps: float = SAMPLE_FPS) -> None:
    """Streams s0..s{n-1} (POST /streams, those missing), spread round-robin over ``cameras``,
    sampled at ``sample_fps``; waits up to ``wait_s`` for them to run, then 2 s more to settle.
    A level that cannot start every stream is measured as it is."""
    have = {s["id"] for s in httpx.get(f"{base_url}/streams", timeout=10).json()}
    for i in range(n):
        if f"s{i}" not in have:
            body = {"id": f"s{i}", "url": cameras[i % len(cameras)], "sample_fps": sample_fps}
            httpx.post(f"{base_url}/streams", json=body, timeout=30).raise_for_status()

    def running() -> bool:
        rows = httpx.get(f"{base_url}/streams", timeout=10).json()
        return [r["state"] for r in rows].count("running") >= n

    with contextlib.suppress(AssertionError):
        wait_until(running, wait_s, interval=0.5, what=f"{n} streams running")
    time.sleep(2.0)  # settle


def _rows(base_url: str, n: int) -> dict[str, dict[str, Any]]:
    rows = httpx.get(f"{base_url}/streams", timeout=30).json()
    return {r["id"]: r for r in rows if r["id"] in {f"s{i}" for i in range(n)}}


def _triton_stats(url: str) -> tuple[int, int, int, float, float]:
    """Triton's own counters for the model: requests, executions (batches), images, and the
    seconds requests spent queued and computing (the stub's round trip included)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        s = client.get_inference_statistics(servers.MODEL).model_stats[0]
    finally:
        client.close()
    st = s.inference_stats
    return (
        int(st.success.count),
        int(s.execution_count),
        int(s.inference_count),
        st.queue.ns / 1e9,
        st.compute_infer.ns / 1e9,
    )


def gateway_level(gw: GatewayProcess, rig: Rig, *, arm: str, n: int, rate: float) -> DensityLevel:
    """n streams on ``gw`` at ``rate``, one SSE subscriber each; the window is [t0, t0 + seconds)
    of capture time, with t0 after every subscriber has connected."""
    start_streams(gw.url, rig.cameras, n, 30 + n / 4, sample_fps=rate)
    seconds, meter = rig.seconds, rig.meter(gateway=pid(gw.pid))
    events: list[Event] = []
    t0 = time.time() + CONNECT_S

    def record(d: dict[str, Any]) -> None:
        at, source = d["captured_at"], d.get("source_at")
        events.append(Event(d["stream"], d["_received"], at, source, d.get("clock", "?"), d["latency_ms"]))

    async def run() -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        subs = asyncio.gather(
            *(stream_predictions(gw.url, f"s{i}", CONNECT_S + seconds + TAIL_S, record) for i in range(n))
        )
        await asyncio.sleep(max(0.0, t0 - time.time()))
        meter.start()
        before = await asyncio.to_thread(_rows, gw.url, n)
        stats0 = await asyncio.to_thread(_triton_stats, rig.grpc_url)
        await asyncio.sleep(max(0.0, t0 + seconds - time.time()))
        cpu = meter.cores()
        after = await asyncio.to_thread(_rows, gw.url, n)
        stats.extend(a - b for a, b in zip(await asyncio.to_thread(_triton_stats, rig.grpc_url), stats0, strict=True))
        await subs
        return cpu, before, after

    stats: list[float] = []
    cpu, before, after = asyncio.run(run())
    inside = [e for e in events if t0 <= e.captured_at < t0 + seconds]
    counts = Counter(e.stream for e in inside)
    lv = _level(
        arm,
        rate,
        ages=[(e.received - e.captured_at) * 1000 for e in inside],
        counts=[counts.get(f"s{i}", 0) for i in range(n)],
        seconds=seconds,
        cpu=cpu,
        reader="gateway",
    )
    source = [(e.received - e.source_at) * 1000 for e in inside if e.source_at is not None]
    lv.source_age_p50_ms, lv.source_age_p95_ms = _pct(source, 50), _pct(source, 95)
    lv.clocks = dict(Counter(e.clock for e in inside))
    lv.decode = dict(Counter(str(r.get("decode")) for r in after.values()))
    lv.unstarted = dict(  # a reader that never opened its camera: the rig's fault, or the reader's?
        Counter(
            f"{r['state']}, {r['reconnects']} reconnects, last error: {r.get('last_error')}"
            for r in after.values()
            if r.get("decode") is None
        )
    )
    decoded = [r["frames_decoded"] - before[s]["frames_decoded"] for s, r in after.items() if s in before]
    lv.decoded_fps = round(sum(decoded) / max(1, len(decoded)) / seconds, 2) if decoded else None
    for part in ("wait", "queue", "preprocess", "batch", "inference"):
        values = [float(v) for e in inside if (v := e.latency.get(part)) is not None]
        lv.parts[part] = (_pct(values, 50), _pct(values, 95))
    delivery = [(e.received - e.captured_at) * 1000 - float(e.latency["total"] or 0) for e in inside]
    lv.parts["delivery"] = (_pct(delivery, 50), _pct(delivery, 95))
    requests, executions, images, queued_s, compute_s = stats
    lv.triton = {
        "requests": requests,
        "images_per_execution": round(images / max(1, executions), 2),
        "queue_ms_per_request": round(queued_s * 1000 / max(1, requests), 1),
        "compute_ms_per_execution": round(compute_s * 1000 / max(1, executions), 1),
    }
    return lv


@contextlib.contextmanager
def _opencv_options() -> Iterator[None]:
    """The same transport and probing as the gateway's OpenCV reader, so only the loop structure
    differs; restored after, since the gateways started later inherit this process's environment."""
    key = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    saved = os.environ.get(key)
    os.environ[key] = "rtsp_transport;tcp|analyzeduration;0|probesize;32"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def naive_level(rig: Rig, *, n: int, rate: float = SAMPLE_FPS) -> DensityLevel:
    """The baseline: read() every frame and call Triton synchronously in the same loop."""
    seconds, meter = rig.seconds, rig.meter()
    ages: list[float] = []
    counts = [0] * n
    lock = threading.Lock()
    start = time.monotonic() + 3.0  # connect and warm up before measuring
    end = start + seconds

    def worker(i: int) -> None:
        client = grpcclient.InferenceServerClient(rig.grpc_url)
        cap = cv2.VideoCapture(rig.cameras[i % len(rig.cameras)], cv2.CAP_FFMPEG)
        next_due = 0.0
        origin: tuple[float, float] | None = None  # (monotonic, stream ms) of the first frame
        while (now := time.monotonic()) < end:
            ok, frame = cap.read()
            read_at = time.monotonic()
            if not ok:
                break
            pos_ms = float(cap.get(cv2.CAP_PROP_POS_MSEC))
            if origin is None:
                origin = (read_at, pos_ms)
            # how far behind live this frame is: wall time elapsed minus stream time elapsed
            backlog_ms = max(0.0, (read_at - origin[0]) * 1000 - (pos_ms - origin[1]))
            if read_at < next_due:
                continue
            next_due = read_at + 1 / rate
            rgb = cv2.cvtColor(cv2.resize(frame, (640, 360)), cv2.COLOR_BGR2RGB)
            x = classifier_input(Image.fromarray(rgb), resize_size=256, crop_hw=(224, 224))[np.newaxis]
            inp = grpcclient.InferInput("input", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x)
            client.infer(
                servers.MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=5)]
            )
            if now >= start:
                with lock:
                    # a frame's age: how late it was when read (buffered behind slow inference) + the work
                    ages.append((time.monotonic() - read_at) * 1000 + backlog_ms)
                    counts[i] += 1
        cap.release()
        client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    with _opencv_options():
        for t in threads:
            t.start()
        time.sleep(max(0.0, start - time.monotonic()))
        meter.start()
        time.sleep(max(0.0, end - time.monotonic()))
        cpu = meter.cores()
        for t in threads:
            t.join(30)
    return _level("naive", rate, ages=ages, counts=counts, seconds=seconds, cpu=cpu, reader="client")


async def _fanout_lag(base_url: str, sid: str, subscribers: int, seconds: float) -> list[float]:
    """Delivery lag of each event to each of ``subscribers``: receive time - publish time."""
    lags: list[float] = []

    def record(d: dict[str, Any]) -> None:
        published = d["captured_at"] + d["latency_ms"]["total"] / 1000
        lags.append((d["_received"] - published) * 1000)

    await asyncio.gather(*(stream_predictions(base_url, sid, seconds, record) for _ in range(subscribers)))
    return lags


def _arms(names: list[str], windows: str) -> list[Arm]:
    """The arms in order; with ``windows``, each gateway arm once per batch window."""
    out = []
    for arm in (ARMS[a] for a in names):
        if arm.env is None or not windows:
            out.append(arm)
            continue
        for ms in windows.split(","):
            env = {**arm.env, "APP_INGEST__BATCH_WINDOW_MS": ms}
            out.append(Arm(f"{arm.name}@{float(ms):g}ms", env, arm.keyframes, arm.above))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.stream_density", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arms", default=",".join(ARMS), help="arms to run, in order (default: %(default)s)")
    p.add_argument("--rates", default="1,2", help="sample_fps per stream, one series each (default: %(default)s)")
    p.add_argument("--counts", default="16,32,64,96,128,160,192", help="stream counts (default: %(default)s)")
    p.add_argument("--naive-counts", default="2,4,8,16", help="stream counts of the naive loop (default: %(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level (default: %(default)s)")
    p.add_argument("--servers", type=int, default=4, help="RTSP server processes (default: %(default)s)")
    p.add_argument(
        "--rig",
        choices=("live", "phased", "replay"),
        default="live",
        help="live: each server shares one live x264 encode among its clients, so all their keyframes come at "
        "the same instant (default); phased: each server plays a pre-encoded clip at --mounts mount points, "
        "each shared from when its first client joined, so keyframes come in servers x mounts phases; replay: "
        "each client gets its own replay of the clip from its start, so its keyframes fall where it joined, as "
        "with real cameras, and its RTP clock is its own (the only rig where camera-clock ages hold; about "
        "twice the servers' CPU per client)",
    )
    p.add_argument("--mounts", type=int, default=8, help="--rig phased: mount points per server (default: 8)")
    p.add_argument(
        "--clip-seconds",
        type=float,
        default=300.0,
        help="--rig phased/replay: the clip's length (default: %(default)s); an arm's series must end before it",
    )
    p.add_argument(
        "--model",
        choices=("mobilenet", "stand-in"),
        default="mobilenet",
        help="mobilenet: MobileNetV3-Small on this CPU (default); stand-in: the same contract with next to no "
        "compute, so the model's cost leaves the cores, as on a GPU host (bench.servers.stand_in_model)",
    )
    p.add_argument(
        "--keyframes-at-every-rate",
        action="store_true",
        help="run pyav-keyframes above the keyframe rate too (there auto is pyav-gop)",
    )
    p.add_argument(
        "--batch-windows",
        default="",
        help="gateway arms: run each once per ingest.batch_window_ms in this list, named arm@<ms>ms, e.g. 0,25 "
        "(0: every frame a request of its own; default: the gateway's default only)",
    )
    p.add_argument("--fanout", action=argparse.BooleanOptionalAction, default=True, help="the fan-out test (on)")
    p.add_argument("--subscribers", type=int, default=200, help="fan-out test: SSE subscribers on one stream")
    p.add_argument("--quick", action="store_true", help="a smoke run: counts 2,4, naive 2, 3 s levels, 2 servers")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.counts, args.naive_counts, args.duration, args.servers, args.subscribers = "2,4", "2", 3.0, 2, 20
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {sorted(ARMS)}")
    rates = [float(r) for r in args.rates.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    report = Report(started_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    report.config = {**{k: str(v) for k, v in vars(args).items()}, "camera_fps": CAMERA_FPS, "gop": GOP}
    if max(counts) > args.servers * CLIENTS_PER_SERVER:
        print(f"warning: {max(counts)} streams on {args.servers} RTSP servers: the rig may be the limit", flush=True)
    print(header(), flush=True)
    with tempfile.TemporaryDirectory(prefix="stream-ml-density-") as tmp, _rig(Path(tmp), args) as rig:
        for rate in rates:
            for arm in _arms(args.arms.split(","), args.batch_windows):
                if arm.keyframes and rate > CAMERA_FPS / GOP and not args.keyframes_at_every_rate:
                    report.notes.append(f"{arm.name} skipped at {rate:g} fps: above the keyframe rate, it is pyav-gop")
                    continue
                if arm.above and rate <= CAMERA_FPS / GOP:
                    report.notes.append(f"{arm.name} skipped at {rate:g} fps: it is pyav-keyframes at this rate")
                    continue
                rig.fresh()
                _series(rig, arm, rate, args, report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"streams-{report.started_utc.replace(':', '').replace('-', '')}"
    stem.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2))
    plot(report, rates, stem.with_suffix(".png"))
    print()
    print(table(report))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


@contextlib.contextmanager
def _rig(work: Path, args: argparse.Namespace) -> Iterator[Rig]:
    """The exported model, ``args.servers`` RTSP servers and the embedded Triton, stopped on the way out."""
    onnx_path = servers.export_model(work / "repo")
    if args.model == "stand-in":
        servers.stand_in_model(onnx_path)
    tuning = servers.ServerTuning(instance_count=default_instances(), intra_op_threads=1)
    with contextlib.ExitStack() as stack:
        clip, mounts = None, args.mounts if args.rig == "phased" else 1
        if args.rig != "live":
            clip = write_clip(work / "camera.mp4", seconds=args.clip_seconds, fps=CAMERA_FPS)  # a keyframe a second
        shared = args.rig == "phased"
        cameras: list[RtspServer] = []
        for _ in range(args.servers):
            cameras.append(RtspServer(fps=CAMERA_FPS, gop=GOP, file=clip, mounts=mounts, shared_file=shared))

        def stop_cameras() -> None:
            for c in cameras:
                c.stop()

        stack.callback(stop_cameras)
        rtsp_pids = [c.proc.pid for c in cameras]

        def fresh() -> None:  # a clip plays once: each arm's series gets it from its start
            if clip is None:
                return
            for i, old in enumerate(cameras):
                old.stop()
                cameras[i] = RtspServer(
                    port=old.port, fps=CAMERA_FPS, gop=GOP, file=clip, mounts=mounts, shared_file=shared
                )
                rtsp_pids[i] = cameras[i].proc.pid

        # streams go round-robin over the servers, then over each server's mount points
        urls = [c.urls[m] for m in range(mounts) for c in cameras]
        tri = stack.enter_context(servers.triton(work / "repo", work, tuning))
        assert tri.pid is not None
        tpg = tri.pid
        groups: dict[str, Selector] = {
            "triton": lambda: group_pids(tpg, stub=False),
            "stub": lambda: stub_pids(tpg),
            "rtsp": lambda: rtsp_pids,  # the servers as one group
            "client": pid(os.getpid()),  # this process: the SSE subscribers, or the naive loop
        }
        yield Rig(tri.grpc_url, urls, groups, args.duration, work, fresh)


def _series(rig: Rig, arm: Arm, rate: float, args: argparse.Namespace, report: Report) -> None:
    """One arm at one rate: stream counts up to the first level not sustained."""
    if arm.env is None:
        for n in (int(c) for c in args.naive_counts.split(",")):
            lv = naive_level(rig, n=n, rate=rate)
            report.levels.append(lv)
            print(row(lv), flush=True)
            if not lv.sustained:
                return
        return
    env = {
        **arm.env,
        "APP_STREAM_POLICY__ALLOWED_HOSTS": '["127.0.0.1"]',
        "APP_STREAM_POLICY__ALLOWED_NETWORKS": '["127.0.0.0/8"]',  # the cameras are on loopback
        "APP_STREAM_POLICY__MAX_STREAMS": "1000",
        "APP_INGEST__SUBSCRIBER_QUEUE": "64",
    }
    with servers.gateway(rig.grpc_url, rig.work / f"gw-{arm.name}-{rate:g}", extra_env=env) as gw:
        if args.fanout and not report.fanout:
            report.fanout = _fanout(gw, rig, arm=arm.name, rate=rate, subscribers=args.subscribers)
        for n in (int(c) for c in args.counts.split(",")):
            lv = gateway_level(gw, rig, arm=arm.name, n=n, rate=rate)
            report.levels.append(lv)
            print(row(lv), flush=True)
            print(parts_row(lv), flush=True)
            if arm.keyframes and lv.decode.get("keyframes", 0) < n:
                report.notes.append(f"{arm.name} N={n} at {rate:g} fps: decode modes {lv.decode}")
            if lv.unstarted:
                print(f"    streams without a decode mode (state, reconnects, error): {lv.unstarted}", flush=True)
            if not lv.sustained:
                return


def _fanout(gw: GatewayProcess, rig: Rig, *, arm: str, rate: float, subscribers: int) -> dict[str, Any]:
    """``subscribers`` SSE clients on stream s0 for the level's seconds: delivery lag p50/p99."""
    start_streams(gw.url, rig.cameras, 1, 30, sample_fps=rate)
    lags = asyncio.run(_fanout_lag(gw.url, "s0", subscribers, rig.seconds))
    out = {
        "arm": arm,
        "rate": rate,
        "subscribers": subscribers,
        "events": len(lags),
        "lag_p50_ms": _pct(lags, 50),
        "lag_p99_ms": _pct(lags, 99),
    }
    print(f"fan-out: {out}", flush=True)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
