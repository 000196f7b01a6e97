"""``python -m bench``: onnxruntime in process vs Triton over gRPC vs the gateway, in one run.

(a) onnxruntime in this process (batch 1 = baseline, larger batches = ceiling);
(b) batch-1 requests to the embedded Triton over gRPC at several concurrencies;
(c) ``POST /predict`` through the real gateway vs a direct client doing the same work.
Prints a table and writes ``bench/results/<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from bench import gateway_load, ort_inproc, servers, triton_load
from bench.loops import Load
from bench.procstat import CpuMeter, Selector, group_pids, pid, stub_pids
from bench.results import Level, Run, progress, table
from bench.servers import ServerTuning, add_tuning_args, ints


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2 s levels, 0.5 s warm-up (a smoke run)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per level (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per level (default: %(default)s)")
    p.add_argument("--concurrency", type=ints, default=(1, 4, 8, 16), help="(b) levels (default: 1,4,8,16)")
    p.add_argument("--gateway-concurrency", type=ints, default=(1, 4, 8), help="(c) levels (default: 1,4,8)")
    p.add_argument(
        "--paired-requests",
        type=int,
        default=300,
        help="(c) requests of each, gateway and direct taking turns at concurrency 1 (0: none; default: 300)",
    )
    p.add_argument("--ort-batches", type=ints, default=(1, 8, 16), help="(a) batch sizes (default: 1,8,16)")
    p.add_argument("--clients", default="aio,sync", help="(b) gRPC clients: aio, sync or both (default: %(default)s)")
    p.add_argument("--only", default="a,b,c", help="parts to run (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="JSON directory")
    p.add_argument("--repo", type=Path, help="use this model repository instead of exporting random weights")
    p.add_argument("--input-dtype", choices=("uint8", "float32"), default="uint8", help="model input (exported)")
    tune = add_tuning_args(p)
    tune.add_argument("--gateway-workers", type=int, default=2, help="gateway preprocess threads (default: 2)")
    return p


def _config(args: argparse.Namespace, tuning: ServerTuning) -> dict[str, object]:
    skip = {"out", "repo", "triton_venv"}
    cfg: dict[str, object] = {k: v for k, v in vars(args).items() if k not in skip}
    cfg["triton_venv"] = str(args.triton_venv)
    cfg.update(
        tuning=dataclasses.asdict(tuning),
        repo=str(args.repo) if args.repo else "exported (random weights)",
        cpus=os.cpu_count(),
        python=platform.python_version(),
        onnxruntime=ort.__version__,
    )
    return cfg


def run(args: argparse.Namespace) -> Run:
    parts = set(args.only.split(","))
    tuning = ServerTuning.from_args(args)
    result = Run(started_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), config=_config(args, tuning))
    me: dict[str, Selector] = {"client": pid(os.getpid())}

    def add(lv: Level) -> None:
        result.levels.append(lv)
        progress(lv)

    with tempfile.TemporaryDirectory(prefix="stream-ml-bench-") as tmp:
        work = Path(tmp)
        repo = args.repo
        if repo is None:
            print(f"exporting {servers.MODEL} (random weights, {args.input_dtype} input) ...", flush=True)
            servers.export_model(work / "repo", args.input_dtype)
            repo = work / "repo"
        if "a" in parts:
            print("(a) onnxruntime in process", flush=True)
            onnx = repo / servers.MODEL / "1" / "model.onnx"
            # onnxruntime's own defaults (every core, spinning threads): what a user runs in process
            sess = ort_inproc.session(onnx)
            for b in args.ort_batches:
                add(ort_inproc.measure(sess, b, args.duration, args.warmup, CpuMeter(dict(me)), label="ort defaults"))
            # the options the served model uses; the faster batch-1 figure is the baseline
            sess = ort_inproc.session(onnx, args.intra_op_threads, args.allow_spinning or "0")
            add(ort_inproc.measure(sess, 1, args.duration, args.warmup, CpuMeter(dict(me)), label="as served"))
            del sess
        if not parts & {"b", "c"}:
            return result
        print("starting the embedded Triton ...", flush=True)
        with servers.triton(repo, work, tuning, args.triton_venv) as tri:
            assert tri.pid is not None
            pg = tri.pid
            sel: dict[str, Selector] = {
                **me,
                "triton": lambda: group_pids(pg, stub=False),
                "stub": lambda: stub_pids(pg),
            }
            spec = triton_load.ModelSpec.read(tri.grpc_url, servers.MODEL)

            def window(extra: dict[str, Selector] | None = None) -> triton_load.StatsWindow:
                return triton_load.StatsWindow(tri.grpc_url, spec.name, CpuMeter({**sel, **(extra or {})}))

            if "b" in parts:
                print("(b) Triton over gRPC, batch-1 requests", flush=True)
                clients: dict[str, Callable[..., Level]] = {
                    "aio": triton_load.measure_aio,
                    "sync": triton_load.measure_sync,
                }
                for c in args.concurrency:
                    for name in args.clients.split(","):
                        add(clients[name](tri.grpc_url, spec, Load(c, args.warmup, args.duration), window()))
            if "c" in parts:
                print("starting the gateway ...", flush=True)
                data = gateway_load.sample_jpeg()
                with servers.gateway(tri.grpc_url, work / "gateway", args.gateway_workers) as gw:
                    gpid = gw.pid
                    print(f"(c) POST /predict ({len(data)} B JPEG, 640x480) vs a direct client", flush=True)
                    for c in args.gateway_concurrency:
                        load = Load(c, args.warmup, args.duration)
                        add(gateway_load.measure_gateway(gw.url, data, load, window({"gateway": pid(gpid)})))
                        add(gateway_load.measure_direct(tri.grpc_url, spec, data, load, window({"gateway": pid(gpid)})))
                    if args.paired_requests:
                        print(f"(c) paired at concurrency 1: {args.paired_requests} requests each", flush=True)
                        result.paired = dict(
                            zip(
                                ("gateway", "direct"),
                                gateway_load.measure_paired(gw.url, tri.grpc_url, spec, data, args.paired_requests),
                                strict=True,
                            )
                        )
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 0.5)
        args.paired_requests = min(args.paired_requests, 60)
    result = run(args)
    path = result.write(args.out)
    print()
    print(table(result))
    print(f"\nwrote {path}")
    return 0
