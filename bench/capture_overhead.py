"""``python -m bench.capture_overhead``: what inference capture costs a live gateway.

One run, three arms side by side, each a fresh gateway (uvicorn) against the same
embedded Triton, configured at start with the same N RTSP streams (640x360 at 25 fps
H.264 from one live GStreamer source, as in ``bench.stream_density``), sampled at 2 fps:

- **off**: capture disabled (the baseline);
- **local**: ``capture.enabled`` with ``every_nth=1`` (every sampled frame), JPEG +
  metadata JSON under a temp folder;
- **s3**: the same, with ``capture.s3`` pointing at moto's S3 server, run in this
  process on a loopback port; the gateway's uploader drains its spool into a bucket.

After ``--warmup`` seconds, over ``--duration`` seconds, one SSE subscriber per stream
records each prediction's frame age (receive time - capture time, as
``bench.stream_density``), the age inside the gateway (``latency_ms.total``, what the
``streamml_frame_age_seconds`` histogram observes) and the inference latency
(preprocess + Triton); ``GET /metrics`` gives the capture counters and dropped frames
(deltas over the window); ``/proc`` the CPU of each process.  A capture arm that
stored nothing (no JPEG on disk, no object in the bucket) fails the run.  Prints a
table with ratios against ``off`` and writes ``bench/results/capture-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import servers
from bench.procstat import CpuMeter, Selector, group_pids, pid, stub_pids
from bench.results import Run
from bench.servers import ServerTuning, add_tuning_args
from bench.stream_density import SAMPLE_FPS
from harness.helpers import GatewayProcess, scrape, stream_predictions, total, wait_until
from harness.peers.rtsp import RtspServer
from harness.peers.s3 import S3Server

ARMS = ("off", "local", "s3")
BUCKET = "stream-ml-capture-bench"
REGION = "us-east-1"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": REGION}
COUNTERS = ("captured", "uploaded", "dropped_queue_full", "write_errors", "upload_errors", "spool_dropped")
OTHER_BOUND = 0.25  # cores used by other processes above which an arm is marked disturbed (as bench.results)


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str  # off | local | s3
    streams: int
    seconds: float
    events: int
    fps_mean: float  # prediction events per stream per second
    fps_min: float
    age_ms: dict[str, float]  # p50 p95 p99: SSE receive time - capture time
    gateway_age_ms: dict[str, float]  # p50 p95 p99: capture -> event inside the gateway (latency_ms.total)
    inference_ms: dict[str, float]  # p50 p95: preprocess + Triton round trip
    frames_dropped: int  # sampled frames replaced by a newer one before inference (ingest), over the window
    inference_errors: int
    capture: dict[str, int]  # capture counters over the window (all 0 with capture off)
    stored: int  # captures stored at the end: JPEGs on disk (local) or image objects in the bucket (s3)
    spooled: int  # s3: captures still in the spool when the gateway stopped
    cpu_cores: dict[str, float]

    @property
    def disturbed(self) -> bool:
        return self.cpu_cores.get("other", 0.0) > OTHER_BOUND


@dataclasses.dataclass
class CaptureRun(Run):
    """The arms; ratios of each capture arm against ``off``."""

    arms: list[Arm] = dataclasses.field(default_factory=list)

    def ratios(self) -> dict[str, float]:
        base = next((a for a in self.arms if a.name == "off"), None)
        out: dict[str, float] = {}
        for a in self.arms:
            if base is None or a is base:
                continue
            out[f"{a.name}/off fps"] = a.fps_mean / base.fps_mean
            out[f"{a.name}/off frame age p95"] = a.age_ms["p95"] / base.age_ms["p95"]
            out[f"{a.name}/off gateway age p95"] = a.gateway_age_ms["p95"] / base.gateway_age_ms["p95"]
            out[f"{a.name}/off inference p95"] = a.inference_ms["p95"] / base.inference_ms["p95"]
            out[f"{a.name}-off gateway CPU cores"] = a.cpu_cores["gateway"] - base.cpu_cores["gateway"]
            out[f"{a.name}-off total CPU cores"] = a.cpu_cores["total"] - base.cpu_cores["total"]
        return out

    def to_json(self) -> dict[str, Any]:
        arms = [{**dataclasses.asdict(a), "disturbed": a.disturbed} for a in self.arms]
        return {**super().to_json(), "arms": arms}

    def write(self, directory: Path, prefix: str = "capture-") -> Path:
        return super().write(directory, prefix)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.capture_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="4 streams, 8 s window, 3 s warm-up (a smoke run)")
    p.add_argument("--streams", type=int, default=8, help="RTSP streams per gateway (default: %(default)s)")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per arm (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds after every stream runs (default: %(default)s)")
    p.add_argument("--sample-fps", type=float, default=SAMPLE_FPS, help="per stream (default: %(default)s)")
    p.add_argument("--every-nth", type=int, default=1, help="capture policy: every Nth sampled frame (default: 1)")
    p.add_argument("--arms", default=",".join(ARMS), help="arms to run, off first (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="JSON directory")
    add_tuning_args(p)
    return p


@dataclasses.dataclass(frozen=True)
class Rig:
    """What every arm shares: Triton, the camera, moto (when the s3 arm runs), a work folder, CPU selectors."""

    triton_grpc: str
    camera_url: str
    s3_url: str | None
    work: Path
    selectors: dict[str, Selector]


def _pcts(values: list[float], *qs: int) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(values, q)), 1) if values else math.nan for q in qs}


def _s3_client(url: str) -> Any:
    import boto3

    key, secret = AWS_ENV["AWS_ACCESS_KEY_ID"], AWS_ENV["AWS_SECRET_ACCESS_KEY"]
    return boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id=key, aws_secret_access_key=secret)


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server in this process on a free loopback port, with the bucket; yields its URL."""
    server = S3Server()
    server.start()
    try:
        _s3_client(server.url).create_bucket(Bucket=BUCKET)
        yield server.url
    finally:
        server.stop()


def bucket_images(url: str) -> int:
    pages = _s3_client(url).get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return sum(1 for page in pages for obj in page.get("Contents", []) if obj["Key"].endswith(".jpg"))


def arm_env(arm: str, args: argparse.Namespace, rig: Rig, root: Path) -> dict[str, str]:
    """The gateway's settings for one arm: N configured streams, capture as the arm says."""
    streams = [{"id": f"s{i}", "url": rig.camera_url, "sample_fps": args.sample_fps} for i in range(args.streams)]
    env = {"APP_STREAMS": json.dumps(streams)}
    if arm == "off":
        return env
    env.update(APP_CAPTURE__ENABLED="true", APP_CAPTURE__EVERY_NTH=str(args.every_nth), APP_CAPTURE__ROOT=str(root))
    if arm == "s3":
        assert rig.s3_url is not None
        env.update(AWS_ENV)
        env.update(APP_CAPTURE__S3__BUCKET=BUCKET, APP_CAPTURE__S3__ENDPOINT_URL=rig.s3_url)
        env.update(APP_CAPTURE__S3__REGION=REGION)
    return env


def _running(url: str) -> int:
    return sum(s["state"] == "running" for s in httpx.get(f"{url}/streams", timeout=10).json())


def _window(
    gw: GatewayProcess, args: argparse.Namespace, meter: CpuMeter
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, float]]:
    """Every stream running, the warm-up, then the measured window: (events, metric deltas, CPU cores)."""
    wait_until(lambda: _running(gw.url) >= args.streams, 60, what=f"{args.streams} streams running")
    time.sleep(args.warmup)
    events: list[dict[str, Any]] = []

    async def subscribe() -> None:
        await asyncio.gather(
            *(stream_predictions(gw.url, f"s{i}", args.duration, events.append) for i in range(args.streams))
        )

    before = scrape(gw)
    meter.start()
    asyncio.run(subscribe())
    cpu = meter.cores()
    after = scrape(gw)
    names = {name for name, _ in after}
    return events, {n: total(after, n) - total(before, n) for n in names}, cpu


def measure_arm(arm: str, args: argparse.Namespace, rig: Rig) -> Arm:
    """A fresh gateway for ``arm``, measured over the window, then stopped and its captures counted."""
    root = rig.work / arm / "captures"
    with servers.gateway(rig.triton_grpc, rig.work / arm, extra_env=arm_env(arm, args, rig, root)) as gw:
        events, delta, cpu = _window(gw, args, CpuMeter({**rig.selectors, "gateway": pid(gw.pid)}))
    # the gateway has stopped: its writer flushed its queue, the uploader stopped
    jpegs = sum(1 for p in root.rglob("*.jpg") if not p.name.startswith(".")) if root.exists() else 0
    stored = bucket_images(rig.s3_url) if arm == "s3" and rig.s3_url else jpegs
    counts = [sum(e["stream"] == f"s{i}" for e in events) for i in range(args.streams)]
    result = Arm(
        name=arm,
        streams=args.streams,
        seconds=args.duration,
        events=len(events),
        fps_mean=round(sum(counts) / len(counts) / args.duration, 3),
        fps_min=round(min(counts) / args.duration, 3),
        age_ms=_pcts([(e["_received"] - e["captured_at"]) * 1000 for e in events], 50, 95, 99),
        gateway_age_ms=_pcts([e["latency_ms"]["total"] for e in events], 50, 95, 99),
        inference_ms=_pcts([e["latency_ms"]["preprocess"] + e["latency_ms"]["inference"] for e in events], 50, 95),
        frames_dropped=int(delta.get("streamml_frames_dropped_total", 0)),
        inference_errors=int(delta.get("streamml_inference_errors_total", 0)),
        capture={c: int(delta.get(f"streamml_capture_{c}_total", 0)) for c in COUNTERS},
        stored=stored,
        spooled=jpegs if arm == "s3" else 0,
        cpu_cores=cpu,
    )
    _check(result, rig.work / arm / "gateway.log")
    return result


def _check(a: Arm, log: Path) -> None:
    """Fail loudly when an arm measured nothing, or a capture arm captured nothing."""
    problems = []
    if a.fps_min == 0:
        problems.append(f"a stream sent no prediction in {a.seconds:.0f} s")
    if a.name != "off":
        if a.capture["captured"] == 0 or a.stored == 0:
            problems.append(f"capture on but captured={a.capture['captured']} in the window, {a.stored} stored")
        if a.name == "s3" and a.capture["uploaded"] == 0:
            problems.append("capture to S3 on but nothing uploaded in the window")
    if problems:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        raise RuntimeError(f"arm {a.name}: " + "; ".join(problems) + f"\ngateway log ({log}):\n{tail}")


COLUMNS: tuple[tuple[str, Callable[[Arm], str]], ...] = (
    ("arm", lambda a: a.name + ("*" if a.disturbed else "")),
    ("fps/stream", lambda a: f"{a.fps_mean:.2f}"),
    ("min", lambda a: f"{a.fps_min:.2f}"),
    ("age p50", lambda a: f"{a.age_ms['p50']:.1f}"),
    ("p95", lambda a: f"{a.age_ms['p95']:.1f}"),
    ("p99 ms", lambda a: f"{a.age_ms['p99']:.1f}"),
    ("gw age p95", lambda a: f"{a.gateway_age_ms['p95']:.1f}"),
    ("infer p50", lambda a: f"{a.inference_ms['p50']:.1f}"),
    ("p95 ms", lambda a: f"{a.inference_ms['p95']:.1f}"),
    ("dropped", lambda a: str(a.frames_dropped)),
    ("captured", lambda a: str(a.capture["captured"])),
    ("uploaded", lambda a: str(a.capture["uploaded"])),
    ("q-full", lambda a: str(a.capture["dropped_queue_full"])),
    ("stored", lambda a: str(a.stored)),
    ("gateway CPU", lambda a: f"{a.cpu_cores['gateway']:.2f}"),
    ("total", lambda a: f"{a.cpu_cores['total']:.2f}"),
    ("other", lambda a: f"{a.cpu_cores['other']:.2f}"),
)


def render(run: CaptureRun) -> str:
    cells = [[head for head, _ in COLUMNS]] + [[cell(a) for _, cell in COLUMNS] for a in run.arms]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    notes = [
        "age: SSE receive - capture; gw age: capture -> event inside the gateway; infer: preprocess + Triton;",
        "dropped: sampled frames replaced before inference; captured/uploaded/q-full: capture counters in the window;",
        "stored: JPEGs on disk (local) or image objects in the bucket (s3) at the end, warm-up included; CPU in cores"
        " (total: ours, incl. moto in this process; other: the rest of the machine)",
    ]
    if any(a.disturbed for a in run.arms):
        notes.append(f"* other processes used > {OTHER_BOUND} core during this arm: compare with care")
    ratios = [f"{k:<34} {v:+.3f}" if "-off" in k else f"{k:<34} {v:.3f}" for k, v in run.ratios().items()]
    return "\n".join([*lines, *notes, "", *ratios])


def run(args: argparse.Namespace) -> CaptureRun:
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if set(arms) - set(ARMS) or not arms or arms[0] != "off":
        raise SystemExit(f"--arms takes off first, then any of local, s3; got {args.arms!r}")
    tuning = ServerTuning.from_args(args)
    config: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(
        tuning=dataclasses.asdict(tuning), camera="640x360 @ 25 fps H.264, one shared live source",
        cpus=os.cpu_count(), python=platform.python_version(),
    )  # fmt: skip
    result = CaptureRun(started_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), config=config)
    with tempfile.TemporaryDirectory(prefix="stream-ml-capture-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        print(f"exporting {servers.MODEL} (random weights) ...", flush=True)
        servers.export_model(work / "repo")
        camera = RtspServer()
        stack.callback(camera.stop)
        s3_url = stack.enter_context(s3_server()) if "s3" in arms else None
        print(f"starting the embedded Triton ({tuning}) ...", flush=True)
        tri = stack.enter_context(servers.triton(work / "repo", work, tuning, args.triton_venv))
        assert tri.pid is not None
        pg = tri.pid
        selectors: dict[str, Selector] = {
            "client": pid(os.getpid()),  # the SSE subscribers, and moto's server thread
            "triton": lambda: group_pids(pg, stub=False),
            "stub": lambda: stub_pids(pg),
            "rtsp": pid(camera.proc.pid),
        }
        rig = Rig(tri.grpc_url, camera.url, s3_url, work, selectors)
        for arm in arms:
            print(f"arm {arm}: {args.streams} streams at {args.sample_fps} fps ...", flush=True)
            a = measure_arm(arm, args, rig)
            result.arms.append(a)
            cpu = " ".join(f"{k}={v:.2f}" for k, v in a.cpu_cores.items())
            print(
                f"  fps {a.fps_mean:.2f} (min {a.fps_min:.2f})  age p95 {a.age_ms['p95']:.1f} ms  "
                f"captured {a.capture['captured']} uploaded {a.capture['uploaded']} stored {a.stored}  [{cpu}]",
                flush=True,
            )
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.streams, args.duration, args.warmup = min(args.streams, 4), min(args.duration, 8.0), min(args.warmup, 3.0)
    result = run(args)
    path = result.write(args.out)
    print()
    print(render(result))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
