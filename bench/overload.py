"""Overload: ``POST /predict`` at the sustainable concurrency and at 4x it, with admission
control on (the defaults) and off, side by side in one run.

Closed loop, 640x480 JPEGs, one keep-alive connection per client (reopened when the
gateway closes it after refusing a request whose body it did not read).  Reports, per
run: answered requests/s, latency p50/p99 of the 200s, the number and p99 latency of
the 503s, and anything else (which must be 0).  A client told 503 waits its
``Retry-After`` before the next request, as a well-behaved client does.  The load client
shares the machine's cores with the gateway and Triton, as in the issue's measurement.

    python -m bench.overload [--seconds 20] [--base 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.gateway_load import sample_jpeg
from bench.servers import ServerTuning, triton
from bench.servers import gateway as start_gateway
from harness.helpers import ROOT
from harness.results import record

REPO = ROOT / "model_repository"


@dataclass
class Run:
    name: str
    concurrency: int
    admission: bool
    seconds: float
    ok: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        def pct(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)) * 1000, 1) if values else None

        total = len(self.ok) + len(self.refused) + sum(self.other.values())
        return {
            "run": self.name,
            "concurrency": self.concurrency,
            "admission": self.admission,
            "ok_per_s": round(len(self.ok) / self.seconds, 1),
            "ok_p50_ms": pct(self.ok, 50),
            "ok_p99_ms": pct(self.ok, 99),
            "refused_503": len(self.refused),
            "refused_p99_ms": pct(self.refused, 99),
            "other": dict(self.other),
            "error_rate": round(sum(self.other.values()) / total, 5) if total else None,
        }


async def _client(host: str, port: int, request: bytes, run: Run, *, t_start: float, t_end: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (started := time.perf_counter()) < t_end:
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
                }
                await reader.readexactly(int(headers.get(b"content-length", b"0")))
                close = headers.get(b"connection", b"").lower() == b"close"
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                status, close = -1, True
                if started >= t_start:
                    run.other[type(e).__name__] = run.other.get(type(e).__name__, 0) + 1
            elapsed = time.perf_counter() - started
            if started >= t_start:
                if status == 200:
                    run.ok.append(elapsed)
                elif status == 503:
                    run.refused.append(elapsed)
                elif status > 0:
                    run.other[str(status)] = run.other.get(str(status), 0) + 1
            if status == 503:  # a well-behaved client waits as told
                await asyncio.sleep(float(headers.get(b"retry-after", b"1")))
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def _load(url: str, run: Run, data: bytes, warmup: float) -> None:
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data
    t_start = time.perf_counter() + warmup
    t_end = t_start + run.seconds
    await asyncio.gather(
        *(_client(host, int(port), request, run, t_start=t_start, t_end=t_end) for _ in range(run.concurrency))
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--base", type=int, default=32, help="the sustainable concurrency (4x is the overload)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overload.json")
    args = p.parse_args(argv)
    data = sample_jpeg(640, 480)
    runs = [
        Run("sustainable", args.base, True, args.seconds),
        Run("4x, admission on", args.base * 4, True, args.seconds),
        Run("4x, admission off", args.base * 4, False, args.seconds),
    ]
    with tempfile.TemporaryDirectory() as tmp, triton(REPO, Path(tmp), ServerTuning()) as server:
        for run in runs:
            env = {} if run.admission else {"APP_ADMISSION__MAX_IN_FLIGHT": "10000"}
            with start_gateway(server.grpc_url, Path(tmp) / run.name.replace(" ", "_"), extra_env=env) as gw:
                asyncio.run(_load(gw.url, run, data, args.warmup))
            print(json.dumps(run.summary()), flush=True)
    rows = [run.summary() for run in runs]
    print(f"\n{'run':<20} {'conc':>5} {'ok/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'503s':>6} {'503 p99':>8} other")
    for r in rows:
        print(
            f"{r['run']!s:<20} {r['concurrency']!s:>5} {r['ok_per_s']!s:>7} {r['ok_p50_ms']!s:>8} "
            f"{r['ok_p99_ms']!s:>8} {r['refused_503']!s:>6} {r['refused_p99_ms']!s:>8} {r['other']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    record("overload", runs=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
