"""``python -m embedded_triton``: serve a model repository with a real Triton on the CPU."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from embedded_triton.repository import CpuOptions, RepositoryError, default_instances
from embedded_triton.server import EmbeddedTriton, TritonPorts
from embedded_triton.supervisor import RestartBudget, main_loop


def main(argv: list[str] | None = None) -> int:
    d = TritonPorts()
    p = argparse.ArgumentParser(prog="python -m embedded_triton", description=__doc__)
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--work-dir", type=Path, default=Path("build/triton"), help="derived repository and log")
    p.add_argument("--venv", type=Path, default=Path(".venv-triton"), help="environment with nvidia-pytriton")
    p.add_argument("--host", default="127.0.0.1", help="address the three endpoints bind")
    p.add_argument("--grpc-port", type=int, default=d.grpc)
    p.add_argument("--http-port", type=int, default=d.http)
    p.add_argument("--metrics-port", type=int, default=d.metrics)
    p.add_argument(
        "--instances", type=int, default=default_instances(), help="model instances per model (default: one per core)"
    )
    p.add_argument(
        "--intra-op-threads", type=int, default=1, help="onnxruntime threads per instance, 0 = all cores (default: 1)"
    )
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument(
        "--watch-secs",
        type=float,
        default=2.0,
        help="check the model repository this often and load new versions (explicit model control); 0: never "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="restarts of a tritonserver that exited on its own, within --restart-window; then give up "
        "(default: %(default)s)",
    )
    p.add_argument("--restart-window", type=float, default=300.0, help="seconds (default: %(default)s)")
    p.add_argument(
        "--restart-backoff",
        type=float,
        default=1.0,
        help="delay before the first restart; doubles up to 30 s (default: %(default)s)",
    )
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="optional: after `--`, a command to run once Triton is ready (it gets APP_TRITON__URL); "
        "Triton stops when it exits",
    )
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = EmbeddedTriton(
        model_repository=args.model_repository,
        work_dir=args.work_dir,
        venv=args.venv,
        ports=TritonPorts(grpc=args.grpc_port, http=args.http_port, metrics=args.metrics_port),
        host=args.host,
        cpu=CpuOptions(instance_count=args.instances, intra_op_threads=args.intra_op_threads),
        log_verbose=args.log_verbose,
        watch_s=args.watch_secs,
    )
    try:
        budget = RestartBudget(
            max_restarts=args.max_restarts, window_s=args.restart_window, backoff_initial_s=args.restart_backoff
        )
        return main_loop(server, args.ready_timeout, command, budget)
    except RepositoryError as e:
        print(f"embedded triton: {e}", file=sys.stderr)
        return 1
