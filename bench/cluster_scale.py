"""``python -m bench.cluster_scale``: what cluster mode costs per stream, and how capacity
adds up with 1, 2 and 3 gateway replicas on this machine.

One embedded Triton, live RTSP sources (640x360, 25 fps; one server per 16 streams,
whose clients share one encode), one real ``redis-server``.  Arms, side by side in one run, each with N streams
sampled at 2 fps and one SSE subscriber per stream:

- **single**: one gateway on its own (no Redis): the baseline;
- **cluster-1 / -2 / -3**: 1, 2 or 3 gateways sharing the streams through Redis; the
  subscribers of stream i connect to gateway i mod k, so with k > 1 most of them read
  events that another gateway runs, through Redis.

For each arm and N: frame age (receive time - capture time) p50/p95/p99, the slowest
stream's fps, CPU cores of the gateways, Redis, Triton and the RTSP server, and the
events per second through Redis.  An arm and N are *sustained* when frame age p95 <=
500 ms and every stream reaches 90% of its rate.  The figures that matter: gateway CPU
per stream and added frame age, cluster against single.  All the gateways share the
machine's two cores, so replicas here show the cost of the cluster, not more capacity;
``docs/cluster.md`` models capacity across machines from these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import servers
from bench.event_path import path_cost
from bench.procstat import CpuMeter, Selector, group_pids, pid, stub_pids
from bench.stream_density import start_streams
from embedded_triton.repository import default_instances
from harness.helpers import GatewayProcess, stream_predictions
from harness.peers.redis import RedisServer
from harness.peers.rtsp import RtspServer

AGE_BOUND_MS = 500.0
SAMPLE_FPS = 2.0
STREAMS_PER_SERVER = 16


@dataclass
class Level:
    arm: str
    gateways: int
    streams: int
    age_p50_ms: float
    age_p95_ms: float
    age_p99_ms: float
    fps_min: float
    events_per_s: float  # received by the subscribers
    redis_events_per_s: float  # appended to Redis Streams
    cpu: dict[str, float]
    gateway_cpu_per_stream: float
    sustained: bool


@dataclass
class Report:
    started_utc: str
    levels: list[Level] = field(default_factory=list)
    paths: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def _gateways(
    k: int, triton_grpc: str, work: Path, redis: RedisServer | None, prefix: str
) -> Iterator[list[GatewayProcess]]:
    env = {
        "APP_STREAM_POLICY__ALLOWED_HOSTS": '["127.0.0.1"]',
        "APP_STREAM_POLICY__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "APP_INGEST__SUBSCRIBER_QUEUE": "64",
        "APP_STREAM_POLICY__MAX_STREAMS": "1000",
    }
    if redis is not None:
        env |= {"APP_CLUSTER__REDIS_URL": redis.url, "APP_CLUSTER__KEY_PREFIX": prefix}
    with contextlib.ExitStack() as stack:
        gws = []
        for i in range(k):
            node_env = {**env, "APP_CLUSTER__NODE_ID": f"{prefix}-{i}"} if redis is not None else env
            gws.append(stack.enter_context(servers.gateway(triton_grpc, work / f"{prefix}-{i}", extra_env=node_env)))
        yield gws


def _pids(pids: list[int]) -> Selector:
    return lambda: pids


def _counter(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def measure(
    arm: str, gws: list[GatewayProcess], cameras: list[str], *, n: int, seconds: float, meter: CpuMeter
) -> Level:
    start_streams(gws[0].url, cameras, n, 60)  # registered once: the cluster shares them out
    ages: list[float] = []
    counts: dict[str, int] = {}

    def record(d: dict[str, Any]) -> None:
        ages.append((d["_received"] - d["captured_at"]) * 1000)
        counts[d["stream"]] = counts.get(d["stream"], 0) + 1

    async def run() -> None:
        await asyncio.gather(*(stream_predictions(gws[i % len(gws)].url, f"s{i}", seconds, record) for i in range(n)))

    written0 = sum(_counter(g.url, "streamml_cluster_events_written_total") for g in gws)
    meter.start()
    started = time.monotonic()
    asyncio.run(run())
    wall = time.monotonic() - started
    cpu = meter.cores()
    written = sum(_counter(g.url, "streamml_cluster_events_written_total") for g in gws) - written0
    fps = [counts.get(f"s{i}", 0) / seconds for i in range(n)]

    def p(q: float) -> float:
        return round(float(np.percentile(ages, q)), 1) if ages else float("inf")

    ok = bool(ages) and p(95) <= AGE_BOUND_MS and min(fps) >= 0.9 * SAMPLE_FPS
    return Level(
        arm=arm,
        gateways=len(gws),
        streams=n,
        age_p50_ms=p(50),
        age_p95_ms=p(95),
        age_p99_ms=p(99),
        fps_min=round(min(fps), 2),
        events_per_s=round(len(ages) / wall, 1),
        redis_events_per_s=round(written / wall, 1),
        cpu=cpu,
        gateway_cpu_per_stream=round(cpu.get("gateways", 0.0) / n, 4),
        sustained=ok,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster_scale", description=__doc__)
    p.add_argument("--counts", default="8,24,40", help="stream counts per arm (default: %(default)s)")
    p.add_argument("--replicas", default="1,2,3", help="cluster sizes (default: %(default)s)")
    p.add_argument("--duration", type=float, default=12.0, help="measured seconds per level")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    arms = [("single", 1)] + [(f"cluster-{k}", int(k)) for k in args.replicas.split(",")]
    report = Report(started_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    print(_header(), flush=True)
    with tempfile.TemporaryDirectory(prefix="stream-ml-cluster-") as tmp:
        work = Path(tmp)
        servers.export_model(work / "repo")
        tuning = servers.ServerTuning(instance_count=default_instances(), intra_op_threads=1)
        # one RTSP server per STREAMS_PER_SERVER streams: a single one stops taking new clients
        # somewhere between 40 and 96 under load, and the rig must not be the bottleneck
        cameras = [RtspServer() for _ in range(-(-max(counts) // STREAMS_PER_SERVER))]
        redis = RedisServer(work / "redis")
        redis.start()
        try:
            with servers.triton(work / "repo", work, tuning) as tri:
                assert tri.pid is not None
                tpg = tri.pid
                assert redis.proc is not None
                rtsp_pids = [c.proc.pid for c in cameras]
                for _ in range(2):  # alternated, twice: the machine is shared
                    for server in (None, redis):
                        cost = path_cost(server)
                        report.paths.append(asdict(cost))
                        print(f"event path: {cost}", flush=True)
                base: dict[str, Selector] = {
                    "triton": lambda: group_pids(tpg, stub=False),
                    "stub": lambda: stub_pids(tpg),
                    "rtsp": lambda: rtsp_pids,
                    "redis": pid(redis.proc.pid),
                }
                for arm, k in arms:
                    clustered = arm != "single"
                    with _gateways(k, tri.grpc_url, work, redis if clustered else None, arm.replace("-", "")) as gws:
                        gpids = [g.pid for g in gws]
                        for n in counts:
                            meter = CpuMeter({**base, "gateways": _pids(gpids)})
                            urls = [c.url for c in cameras]
                            lv = measure(arm, gws, urls, n=n, seconds=args.duration, meter=meter)
                            report.levels.append(lv)
                            print(_row(lv), flush=True)
                            if not lv.sustained:
                                break
        finally:
            for camera in cameras:
                camera.stop()
            redis.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cluster-{report.started_utc.replace(':', '').replace('-', '')}.json"
    path.write_text(json.dumps(asdict(report), indent=2))
    print(_summary(report))
    print(f"wrote {path}")
    return 0


def _header() -> str:
    return (
        f"{'arm':<10} {'gw':>2} {'streams':>7} {'age p50':>8} {'p95':>7} {'p99':>7} {'fps min':>7} "
        f"{'ev/s':>6} {'redis/s':>7} {'gw cores':>8} {'redis':>6} {'triton':>7} {'per stream':>10}  ok"
    )


def _row(lv: Level) -> str:
    c = lv.cpu
    return (
        f"{lv.arm:<10} {lv.gateways:>2} {lv.streams:>7} {lv.age_p50_ms:>8.1f} {lv.age_p95_ms:>7.1f} "
        f"{lv.age_p99_ms:>7.1f} {lv.fps_min:>7.2f} {lv.events_per_s:>6.1f} {lv.redis_events_per_s:>7.1f} "
        f"{c.get('gateways', 0):>8.3f} {c.get('redis', 0):>6.3f} {c.get('triton', 0) + c.get('stub', 0):>7.3f} "
        f"{lv.gateway_cpu_per_stream:>10.4f}  {'yes' if lv.sustained else 'NO'}"
    )


def _summary(report: Report) -> str:
    """Cluster against single at each stream count both sustained: the cost of cluster mode."""
    single = {lv.streams: lv for lv in report.levels if lv.arm == "single"}
    lines = ["", "cluster mode against a single gateway, same streams (ratios measured in this run):"]
    for lv in report.levels:
        base = single.get(lv.streams)
        if lv.arm == "single" or base is None or not base.gateway_cpu_per_stream:
            continue
        lines.append(
            f"  {lv.arm:<10} {lv.streams:>3} streams: gateway CPU x{lv.cpu['gateways'] / base.cpu['gateways']:.2f} "
            f"(+{(lv.gateway_cpu_per_stream - base.gateway_cpu_per_stream) * 1000:.1f} millicores/stream), "
            f"redis {lv.cpu['redis'] * 1000:.0f} millicores, "
            f"frame age p50 {lv.age_p50_ms - base.age_p50_ms:+.1f} ms, p99 {lv.age_p99_ms - base.age_p99_ms:+.1f} ms"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
