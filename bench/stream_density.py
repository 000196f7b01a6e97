"""``python -m bench.stream_density``: how many live RTSP streams this machine sustains.

N RTSP streams (640x360, 25 fps H.264 from a real GStreamer server; the clients
share one live source, so the server's encoding cost does not grow with N) are
sampled at 2 fps and classified.  For each N, side by side:

- **gateway**: streams added at runtime (POST /streams); one SSE subscriber per
  stream measures frame age = receive time - capture time, and the achieved fps;
- **naive**: one thread per stream running ``VideoCapture.read()`` and, when a
  sample is due, preprocess + a synchronous Triton call in the same loop.

A level is *sustained* when frame age p95 <= 500 ms and every stream reaches 90%
of the sampling rate.  Also: 200 SSE subscribers on one stream, delivery lag p99.
Prints a table, writes JSON and a PNG plot to bench/results/.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from bench import servers
from bench.procstat import CpuMeter, group_pids, pid, stub_pids
from embedded_triton.repository import default_instances
from gateway.preprocess import classifier_input
from harness.helpers import GatewayProcess, stream_predictions, wait_until
from harness.peers.rtsp import RtspServer

AGE_BOUND_MS = 500.0
SAMPLE_FPS = 2.0


@dataclass
class DensityLevel:
    path: str
    streams: int
    age_p50_ms: float
    age_p95_ms: float
    fps_min: float
    fps_mean: float
    cpu: dict[str, float]
    sustained: bool


@dataclass
class Report:
    started_utc: str
    levels: list[DensityLevel] = field(default_factory=list)
    fanout: dict[str, float] = field(default_factory=dict)


def _level(
    path: str, n: int, ages: list[float], counts: list[int], seconds: float, *, cpu: dict[str, float]
) -> DensityLevel:
    fps = [c / seconds for c in counts] or [0.0]
    p50 = float(np.percentile(ages, 50)) if ages else float("inf")
    p95 = float(np.percentile(ages, 95)) if ages else float("inf")
    ok = p95 <= AGE_BOUND_MS and min(fps) >= 0.9 * SAMPLE_FPS
    return DensityLevel(
        path, n, round(p50, 1), round(p95, 1), round(min(fps), 2), round(float(np.mean(fps)), 2), cpu, ok
    )


def start_streams(base_url: str, cameras: list[str], n: int, wait_s: float) -> None:
    """Streams s0..s{n-1} (POST /streams, those missing), spread over ``cameras``, sampled at
    SAMPLE_FPS; waits up to ``wait_s`` for them to run, then 2 s more to settle.  A level that
    cannot start every stream is measured as it is."""
    import httpx

    have = {s["id"] for s in httpx.get(f"{base_url}/streams", timeout=10).json()}
    for i in range(n):
        if f"s{i}" not in have:
            body = {"id": f"s{i}", "url": cameras[i % len(cameras)], "sample_fps": SAMPLE_FPS}
            httpx.post(f"{base_url}/streams", json=body, timeout=30).raise_for_status()

    def running() -> bool:
        rows = httpx.get(f"{base_url}/streams", timeout=10).json()
        return [r["state"] for r in rows].count("running") >= n

    with contextlib.suppress(AssertionError):
        wait_until(running, wait_s, interval=0.5, what=f"{n} streams running")
    time.sleep(2.0)  # settle


def gateway_level(gw: GatewayProcess, url: str, n: int, seconds: float, meter: CpuMeter) -> DensityLevel:
    start_streams(gw.url, [url], n, 30)
    ages: list[float] = []
    counts: dict[str, int] = {}

    def record(d: dict[str, Any]) -> None:
        ages.append((d["_received"] - d["captured_at"]) * 1000)
        counts[d["stream"]] = counts.get(d["stream"], 0) + 1

    async def run() -> None:
        await asyncio.gather(*(stream_predictions(gw.url, f"s{i}", seconds, record) for i in range(n)))

    meter.start()
    asyncio.run(run())
    return _level("gateway", n, ages, [counts.get(f"s{i}", 0) for i in range(n)], seconds, cpu=meter.cores())


def naive_level(grpc_url: str, url: str, n: int, seconds: float, meter: CpuMeter) -> DensityLevel:
    """The baseline: read() every frame and call Triton synchronously in the same loop."""
    ages: list[float] = []
    counts = [0] * n
    lock = threading.Lock()
    start = time.monotonic() + 3.0  # connect and warm up before measuring
    end = start + seconds

    def worker(i: int) -> None:
        client = grpcclient.InferenceServerClient(grpc_url)
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
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
            next_due = read_at + 1 / SAMPLE_FPS
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

    # the same transport and probing as the gateway's readers, so only the loop structure differs
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp|analyzeduration;0|probesize;32"
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.monotonic()))
    meter.start()
    for t in threads:
        t.join(seconds + 30)
    return _level("naive", n, ages, counts, seconds, cpu=meter.cores())


async def _fanout_lag(base_url: str, sid: str, subscribers: int, seconds: float) -> list[float]:
    """Delivery lag of each event to each of ``subscribers``: receive time - publish time."""
    lags: list[float] = []

    def record(d: dict[str, Any]) -> None:
        published = d["captured_at"] + d["latency_ms"]["total"] / 1000
        lags.append((d["_received"] - published) * 1000)

    await asyncio.gather(*(stream_predictions(base_url, sid, seconds, record) for _ in range(subscribers)))
    return lags


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream_density", description=__doc__)
    p.add_argument("--counts", default="1,2,4,8,16,32,48,64", help="stream counts to try (default: %(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    p.add_argument("--subscribers", type=int, default=200, help="fan-out test: SSE subscribers on one stream")
    p.add_argument("--no-naive", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    report = Report(started_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    with tempfile.TemporaryDirectory(prefix="stream-ml-density-") as tmp:
        work = Path(tmp)
        servers.export_model(work / "repo")
        tuning = servers.ServerTuning(instance_count=default_instances(), intra_op_threads=1)
        camera = RtspServer()
        try:
            with servers.triton(work / "repo", work, tuning) as tri:
                assert tri.pid is not None
                tpg = tri.pid
                base = {
                    "triton": lambda: group_pids(tpg, stub=False),
                    "stub": lambda: stub_pids(tpg),
                    "rtsp": pid(camera.proc.pid),
                }
                if not args.no_naive:
                    for n in counts:
                        lv = naive_level(
                            tri.grpc_url, camera.url, n, args.duration, CpuMeter({**base, "client": pid(os.getpid())})
                        )
                        report.levels.append(lv)
                        print(_row(lv), flush=True)
                        if not lv.sustained:
                            break
                env = {
                    "APP_STREAM_POLICY__ALLOWED_HOSTS": '["127.0.0.1"]',
                    "APP_STREAM_POLICY__ALLOWED_NETWORKS": '["127.0.0.0/8"]',  # the camera is on loopback
                    "APP_INGEST__SUBSCRIBER_QUEUE": "64",
                }
                with servers.gateway(tri.grpc_url, work / "gw", extra_env=env) as gw:
                    gateway_level(gw, camera.url, 1, 2.0, CpuMeter({}))  # s0 for the fan-out test
                    lags = asyncio.run(_fanout_lag(gw.url, "s0", args.subscribers, args.duration))
                    report.fanout = {
                        "subscribers": args.subscribers,
                        "events": len(lags),
                        "lag_p50_ms": round(float(np.percentile(lags, 50)), 1) if lags else -1,
                        "lag_p99_ms": round(float(np.percentile(lags, 99)), 1) if lags else -1,
                    }
                    print(f"fan-out: {report.fanout}", flush=True)
                    for n in counts:
                        lv = gateway_level(gw, camera.url, n, args.duration, CpuMeter({**base, "gateway": pid(gw.pid)}))
                        report.levels.append(lv)
                        print(_row(lv), flush=True)
                        if not lv.sustained:
                            break
        finally:
            camera.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"streams-{report.started_utc.replace(':', '').replace('-', '')}"
    stem.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2))
    _plot(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


def _row(lv: DensityLevel) -> str:
    cpu = " ".join(f"{k}={v:.2f}" for k, v in lv.cpu.items())
    flag = "ok" if lv.sustained else "BROKEN"
    return (
        f"{lv.path:8s} N={lv.streams:3d}  age p50 {lv.age_p50_ms:7.1f} ms  p95 {lv.age_p95_ms:7.1f} ms  "
        f"fps min {lv.fps_min:4.2f} mean {lv.fps_mean:4.2f}  {flag:6s} [{cpu}]"
    )


def _plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("gateway", "naive"):
        lv = [x for x in report.levels if x.path == name]
        if lv:
            ax.plot([x.streams for x in lv], [x.age_p95_ms for x in lv], marker="o", label=f"{name} p95")
            ax.plot(
                [x.streams for x in lv], [x.age_p50_ms for x in lv], marker=".", linestyle="--", label=f"{name} p50"
            )
    ax.axhline(AGE_BOUND_MS, color="grey", linestyle=":", label="500 ms bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("streams (640x360 @ 25 fps, sampled at 2 fps)")
    ax.set_ylabel("frame age, capture to event (ms)")
    ax.legend()
    ax.set_title("stream density, 2-core machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
