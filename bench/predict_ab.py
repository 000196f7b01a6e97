"""``python -m bench.predict_ab --base <checkout>``: ``POST /predict``'s cost over a direct
client, for this checkout's gateway and another's, alternated in one run.

One embedded Triton serves both.  Each turn starts one checkout's gateway (``uvicorn
gateway.main:create_app --factory`` run from that checkout, so its ``gateway`` package is
the one imported), warms it, then takes ``--samples`` paired measurements
(``gateway_load.measure_paired``: the gateway and a direct client doing the same decode,
preprocessing and gRPC call take turns request by request at concurrency 1), and stops it;
the checkouts' turns alternate, and which goes first swaps every round, so that the
machine's drift slows both alike.  For each measurement it prints the p50 ratio, the p50
gap, and the gateway's event-loop thread CPU per request (the work every request adds in
series to the worker thread's), then the median and range of each per checkout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import gateway_load, servers, triton_load
from harness.helpers import ROOT, GatewayProcess

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    ratio: float  # gateway p50 / direct p50
    gap_ms: float  # gateway p50 - direct p50
    loop_cpu_ms: float  # the event-loop thread's CPU per gateway request

    def __str__(self) -> str:
        return f"ratio {self.ratio:.3f}  gap {self.gap_ms:.2f} ms  loop CPU {self.loop_cpu_ms:.2f} ms/request"


def thread_cpu_s(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def turn(
    checkout: Path, work: Path, grpc_url: str, spec: triton_load.ModelSpec, args: argparse.Namespace
) -> list[Sample]:
    log = work / f"gateway-{checkout.name}.log"
    gw = GatewayProcess(servers.gateway_env(grpc_url), log, log_level="warning", access_log=False)
    gw.cwd = checkout
    gw.start(ready_path="/health/ready")
    data = gateway_load.sample_jpeg()
    try:
        gateway_load.measure_paired(gw.url, grpc_url, spec, data, args.requests // 3)  # warm
        out = []
        for _ in range(args.samples):
            cpu0 = thread_cpu_s(gw.pid, gw.pid)  # uvicorn's event loop runs on the main thread
            g, d = gateway_load.measure_paired(gw.url, grpc_url, spec, data, args.requests)
            loop_ms = (thread_cpu_s(gw.pid, gw.pid) - cpu0) / (args.requests + 20) * 1000  # 20 warm-up pairs
            out.append(Sample(g.p50_ms / d.p50_ms, g.p50_ms - d.p50_ms, loop_ms))
        return out
    finally:
        gw.stop()


def _summary(name: str, samples: list[Sample]) -> str:
    def part(values: list[float], fmt: str) -> str:
        v = sorted(values)
        return f"median {statistics.median(v):{fmt}} [{v[0]:{fmt}}-{v[-1]:{fmt}}]"

    return (
        f"{name:8s} ratio {part([s.ratio for s in samples], '.3f')}  gap ms {part([s.gap_ms for s in samples], '.2f')}"
        f"  loop CPU ms/request {part([s.loop_cpu_ms for s in samples], '.2f')}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. a git worktree of HEAD~1)")
    p.add_argument("--rounds", type=int, default=4, help="turns of each checkout (default: 4)")
    p.add_argument("--samples", type=int, default=2, help="paired measurements per turn (default: 2)")
    p.add_argument("--requests", type=int, default=300, help="requests of each, per measurement (default: 300)")
    p.add_argument("--repo", type=Path, help="model repository (default: export random weights)")
    args = p.parse_args(argv)
    checkouts = {"base": args.base.resolve(), "this": ROOT}
    if not (checkouts["base"] / "gateway" / "main.py").is_file():
        p.error(f"--base {args.base}: no gateway/main.py there")
    defaults = argparse.ArgumentParser()
    servers.add_tuning_args(defaults)
    tuning = servers.ServerTuning.from_args(defaults.parse_args([]))  # the served model's usual options
    results: dict[str, list[Sample]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory(prefix="stream-ml-predict-ab-") as tmp:
        work = Path(tmp)
        repo = args.repo
        if repo is None:
            print(f"exporting {servers.MODEL} (random weights) ...", flush=True)
            servers.export_model(work / "repo")
            repo = work / "repo"
        with servers.triton(repo, work, tuning) as tri:
            spec = triton_load.ModelSpec.read(tri.grpc_url, servers.MODEL)
            for i in range(args.rounds):
                for name in list(checkouts) if i % 2 == 0 else list(checkouts)[::-1]:
                    for s in turn(checkouts[name], work, tri.grpc_url, spec, args):
                        results[name].append(s)
                        print(f"{name:8s} {s}", flush=True)
    print()
    for name, samples in results.items():
        print(_summary(name, samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
