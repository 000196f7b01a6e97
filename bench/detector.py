"""``python -m bench.detector``: the person detector served by the embedded Triton vs in process.

Same machine, same run, the same 640x360 photo-like frames (``export.parity.scenes``,
what the gateway sends by default) on every path:

(a) eager torchvision in this process: the stock ``FasterRCNN`` called as
    ``model([image])`` (batch 1, the baseline) and with a list of 4 images (reference),
    under ``torch.inference_mode`` with torch's default threads;
(b) onnxruntime in this process on the served ``model.onnx``, one image per run:
    onnxruntime's defaults (all cores, spinning threads; the baseline), and the
    options the served model uses (1 intra-op thread, no spinning), sequentially
    and from 2 threads (2 sessions: what 2 single-threaded Triton instances could reach);
(c) batch-1 requests to the embedded Triton over gRPC at concurrency 1, 4, 8 (a sync
    client per thread, all four detector outputs), with Triton's statistics and the
    CPU cores each process group used.

The model is a seeded synthetic checkpoint (``harness/synthetic.py``, pretrained weights
cannot be downloaded here), exported with the real CLI (``python -m export
person_detector --formats onnx``), unless ``--repo`` / ``--weights`` say otherwise.
Target: served >= 0.85 x in process.  Prints a table and writes
``bench/results/detector-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torchvision
import tritonclient.grpc as grpcclient

from bench import ort_inproc, servers, triton_load
from bench.loops import Load, LoopResult, run_threads
from bench.procstat import CpuMeter, Selector, group_pids, pid, stub_pids
from bench.results import Latency, Level, Run, progress, table
from bench.servers import ServerTuning, add_tuning_args, ints
from export.detector import ARCHS, DEFAULT_ARCH, INPUT_NAME, OUTPUT_NAMES, build_detector
from export.parity import Detections, compare_detections, scenes

MODEL = "person_detector"
TARGET = 0.85  # served / in process, as for the classifier
FRAME = (360, 640)  # height, width: the gateway's default frame
POOL = 8  # distinct frames, cycled through on every path
SCENE_SEED = 1234  # not the seeds the checkpoint was calibrated on
PARTS = ("eager", "ort", "triton")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.detector", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="3 s levels, 1 s warm-up (a smoke run)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per level (default: %(default)s)")
    p.add_argument("--concurrency", type=ints, default=(1, 4, 8), help="(c) Triton levels (default: 1,4,8)")
    p.add_argument("--only", default=",".join(PARTS), help="parts to run (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="JSON directory")
    model = p.add_argument_group("model")
    model.add_argument(
        "--repo", type=Path, help=f"use this model repository (its {MODEL}/1/model.onnx) instead of exporting"
    )
    model.add_argument(
        "--weights",
        type=Path,
        help="detector checkpoint for the export and the eager model (default: the seeded synthetic one)",
    )
    model.add_argument("--arch", choices=tuple(ARCHS), default=DEFAULT_ARCH, help="default: %(default)s")
    model.add_argument(
        "--score-thresh", type=float, default=0.05, help="as exported and for eager (default: %(default)s)"
    )
    add_tuning_args(p)
    return p


@dataclasses.dataclass
class DetectorRun(Run):
    """Ratios: each Triton level against the two batch-1 in-process baselines."""

    notes: list[str] = dataclasses.field(default_factory=list)

    def _find(self, path: str, client: str) -> Level | None:
        return next((lv for lv in self.levels if lv.path == path and lv.client == client), None)

    def baselines(self) -> dict[str, Level]:
        found = {"ort defaults b1": self._find("ort", "defaults b1"), "eager b1": self._find("eager", "torch b1")}
        return {k: v for k, v in found.items() if v is not None}

    def ratios(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, base in self.baselines().items():
            for lv in self.levels:
                if lv.path == "triton":
                    out[f"triton@{lv.concurrency} / {name}"] = lv.images_per_s / base.images_per_s
        return out

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "target": TARGET, "notes": self.notes}

    def write(self, directory: Path, prefix: str = "detector-") -> Path:
        return super().write(directory, prefix)


def run_main_thread(work: Callable[[int], None], load: Load, on_start: Callable[[], None]) -> LoopResult:
    """``run_threads`` for one worker, in the calling thread: how a user loops in process.

    Eager torch in a thread other than the main one measured ~25% slower on this
    machine (8 vs 11 img/s), so sequential in-process levels stay in the main thread."""
    r = LoopResult()
    warm_end = time.perf_counter() + load.warmup
    while time.perf_counter() < warm_end:
        work(0)
    on_start()
    t0 = time.perf_counter()
    t_end = t0 + load.duration
    while (started := time.perf_counter()) < t_end:
        work(0)  # an exception ends the run: in process, nothing should fail
        r.record(started, t0, True, None)
    r.elapsed = time.perf_counter() - t0
    return r


def _in_process(
    path: str, client: str, work: Callable[[int], None], load: Load, *, batch: int, meter: CpuMeter
) -> Level:
    run = run_main_thread if load.concurrency == 1 else run_threads
    r = run(work, load, meter.start)
    cores = meter.cores()
    if r.first_error:
        print(f"  {path}/{client}: {r.errors} errors, first: {r.first_error[:300]}")
    return Level(
        path=path,
        client=client,
        concurrency=load.concurrency,
        batch=batch,
        images_per_s=len(r.latencies) * batch / r.elapsed,
        requests=len(r.latencies),
        errors=r.errors,
        seconds=r.elapsed,
        latency=Latency.of(r.latencies),
        cpu_cores=cores,
    )


def _cycler(workers: int, step: int = 1) -> list[Callable[[], int]]:
    """Per worker: the next frame index (modulo the pool); workers start at different frames."""
    return [itertools.count(i * step, step).__next__ for i in range(workers)]


def measure_eager(model: torch.nn.Module, images: np.ndarray, batch: int, load: Load, meter: CpuMeter) -> Level:
    """``model([float image, ...])``: stock torchvision, a list of ``batch`` images per call."""
    tensors = [torch.from_numpy(x) for x in images]
    nxt = _cycler(load.concurrency, batch)

    def work(i: int) -> None:
        k = nxt[i]()
        chunk = [tensors[(k + j) % len(tensors)].to(torch.float32).div_(255.0) for j in range(batch)]
        with torch.inference_mode():  # thread-local: entered in the worker
            model(chunk)

    return _in_process("eager", f"torch b{batch}", work, load, batch=batch, meter=meter)


def measure_ort(
    sessions: list[ort.InferenceSession], images: np.ndarray, load: Load, meter: CpuMeter, label: str
) -> Level:
    """One image per ``run``, as the served model runs; worker ``i`` uses ``sessions[i]``."""
    nxt = _cycler(load.concurrency)

    def work(i: int) -> None:
        k = nxt[i]() % len(images)
        sessions[i].run(list(OUTPUT_NAMES), {INPUT_NAME: images[k : k + 1]})

    return _in_process("ort", f"{label} b1", work, load, batch=1, meter=meter)


def _infer_input(image: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(INPUT_NAME, [1, *image.shape], "UINT8")
    inp.set_data_from_numpy(image[None])
    return inp


def measure_triton(url: str, images: np.ndarray, load: Load, window: triton_load.StatsWindow) -> Level:
    """Batch-1 requests from ``load.concurrency`` threads, a sync gRPC client each."""
    n = load.concurrency
    clients = [grpcclient.InferenceServerClient(url, channel_args=triton_load.CHANNEL_ARGS) for _ in range(n)]
    inputs = [[_infer_input(x) for x in images] for _ in range(n)]
    outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUT_NAMES]
    nxt = _cycler(n)

    def work(i: int) -> None:
        k = nxt[i]() % len(images)
        result = clients[i].infer(MODEL, [inputs[i][k]], outputs=outputs, client_timeout=30)
        for name in OUTPUT_NAMES:  # what an in-process caller gets: numpy arrays
            result.as_numpy(name)

    try:
        r = run_threads(work, load, window.start)
    finally:
        for c in clients:
            c.close()
    return triton_load.level("triton", "grpc-sync", load, r, window)


def _detections(outputs: list[np.ndarray]) -> Detections:
    boxes, scores, labels, num = outputs
    return Detections.from_padded(boxes[0], scores[0], labels[0], num[0])


def served_parity(url: str, onnx: Path, images: np.ndarray, score_thresh: float) -> str:
    """The served detections against onnxruntime in process, on the benchmark's frames."""
    sess = ort_inproc.session(onnx)
    lines = []
    with grpcclient.InferenceServerClient(url) as c:
        for k in range(min(2, len(images))):
            want = _detections(sess.run(list(OUTPUT_NAMES), {INPUT_NAME: images[k : k + 1]}))
            res = c.infer(
                MODEL, [_infer_input(images[k])], outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUT_NAMES]
            )
            got = _detections([res.as_numpy(n) for n in OUTPUT_NAMES])
            diff = compare_detections(
                want, got, max_detections=int(res.as_numpy("boxes").shape[1]), score_thresh=score_thresh, min_score=0.2
            )
            lines.append(f"frame {k}: {len(got.scores)} detections, {diff}{'' if diff.ok else '  MISMATCH'}")
    return "; ".join(lines)


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(model repository, checkpoint): exported here with the real CLI unless given."""
    weights: Path = args.weights
    if weights is None:
        from harness.synthetic import synthetic_detector_checkpoint

        print("creating the seeded synthetic detector checkpoint ...", flush=True)
        weights = synthetic_detector_checkpoint(work / "detector.pth")
        if args.repo is not None:
            print(f"  note: eager torchvision uses it; {args.repo} may hold other weights (pass --weights)")
    if args.repo is not None:
        return args.repo, weights
    repo = work / "repo"
    cmd = [
        sys.executable, "-m", "export", MODEL, "--arch", args.arch, "--weights", str(weights),
        "--repo", str(repo), "--formats", "onnx", "--score-thresh", str(args.score_thresh),
    ]  # fmt: skip
    print(f"exporting: {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, cwd=servers.ROOT, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"export failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return repo, weights


def _triton_ort_version(venv: Path) -> str:
    python = venv / "bin" / "python"
    cmd = [str(python), "-c", "import onnxruntime; print(onnxruntime.__version__)"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() or "unknown"


def _config(args: argparse.Namespace, tuning: ServerTuning, weights: Path) -> dict[str, object]:
    cfg: dict[str, object] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cfg.update(
        tuning=dataclasses.asdict(tuning),
        repo=str(args.repo) if args.repo else "exported by `python -m export` (--formats onnx)",
        weights=str(args.weights) if args.weights else f"synthetic seeded checkpoint ({weights.name})",
        frame_hw=FRAME,
        cpus=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        torch_threads=torch.get_num_threads(),
        onnxruntime=ort.__version__,
        onnxruntime_triton=_triton_ort_version(args.triton_venv),
    )
    return cfg


def run(args: argparse.Namespace) -> DetectorRun:
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if parts - set(PARTS):
        raise SystemExit(f"--only takes {', '.join(PARTS)}; got {args.only!r}")
    tuning = ServerTuning.from_args(args)
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    me: dict[str, Selector] = {"client": pid(os.getpid())}
    images = scenes(POOL, *FRAME, seed=SCENE_SEED)

    with tempfile.TemporaryDirectory(prefix="stream-ml-bench-detector-") as tmp:
        work = Path(tmp)
        repo, weights = prepare(args, work)
        result = DetectorRun(started_utc=started, config=_config(args, tuning, weights))
        onnx = repo / MODEL / "1" / "model.onnx"

        def add(lv: Level) -> None:
            result.levels.append(lv)
            progress(lv)

        def one(c: int = 1) -> Load:
            return Load(c, args.warmup, args.duration)

        if "eager" in parts:
            print(f"(a) eager torchvision in process ({torch.get_num_threads()} torch threads)", flush=True)
            model = build_detector(args.arch, str(weights), score_thresh=args.score_thresh).reference
            for b in (1, 4):
                add(measure_eager(model, images, b, one(), CpuMeter(dict(me))))
            del model
        if "ort" in parts:
            print("(b) onnxruntime in process, one image per run", flush=True)
            sess = ort_inproc.session(onnx)  # onnxruntime's defaults: what a user runs in process
            add(measure_ort([sess], images, one(), CpuMeter(dict(me)), "defaults"))
            del sess
            served = [ort_inproc.session(onnx, args.intra_op_threads, args.allow_spinning or "0") for _ in range(2)]
            add(measure_ort(served[:1], images, one(), CpuMeter(dict(me)), "as served"))
            add(measure_ort(served, images, one(2), CpuMeter(dict(me)), "as served x2"))
            del served
        if "triton" not in parts:
            return result
        print(f"starting the embedded Triton ({tuning}) ...", flush=True)
        with servers.triton(repo, work, tuning, args.triton_venv) as tri:
            assert tri.pid is not None
            pg = tri.pid
            sel: dict[str, Selector] = {
                **me,
                "triton": lambda: group_pids(pg, stub=False),
                "stub": lambda: stub_pids(pg),
            }
            parity = served_parity(tri.grpc_url, onnx, images, args.score_thresh)
            print(f"  served vs onnxruntime in process: {parity}", flush=True)
            result.notes.append(f"served parity: {parity}")
            print("(c) Triton over gRPC, batch-1 requests, a sync client per thread", flush=True)
            for c in args.concurrency:
                window = triton_load.StatsWindow(tri.grpc_url, MODEL, CpuMeter(dict(sel)))
                add(measure_triton(tri.grpc_url, images, one(c), window))
    return result


def verdict(result: DetectorRun) -> str:
    below = [f"{key} ({ratio:.3f})" for key, ratio in result.ratios().items() if ratio < TARGET]
    if not below:
        return f"target served >= {TARGET} x in process: met at every level"
    return f"target served >= {TARGET} x in process: BELOW at " + ", ".join(below)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
    result = run(args)
    path = result.write(args.out)
    print()
    print(table(result))  # ends with the ratios
    if result.ratios():
        print(verdict(result))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
