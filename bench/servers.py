"""What the benchmark runs against: an exported model, the embedded Triton, the gateway.

Everything listens on free loopback ports and is stopped on the way out.
Server-side tuning (``ServerTuning``) is applied to a private copy of the model
repository's ``config.pbtxt``: ``embedded_triton`` keeps the committed
``dynamic_batching`` and ``parameters`` when it derives its python-backend config,
so ``allow_spinning`` and the batcher settings reach ``onnx_model.py`` unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from embedded_triton.repository import CpuOptions, default_instances
from embedded_triton.server import EmbeddedTriton, TritonPorts
from harness import helpers
from harness.helpers import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mobilenet_v3_small"


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def add_tuning_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The embedded Triton's tuning flags, shared by the benchmarks."""
    tune = p.add_argument_group("server tuning (applied to a private copy of the config)")
    tune.add_argument(
        "--instances", type=int, default=default_instances(), help="model instances (default: one per core)"
    )
    tune.add_argument(
        "--intra-op-threads", type=int, default=1, help="ORT threads per instance, 0 = all cores (default: 1)"
    )
    tune.add_argument("--allow-spinning", choices=("0", "1"), help="ORT session.intra_op.allow_spinning")
    tune.add_argument("--preferred-batch", type=ints, help="dynamic_batching preferred_batch_size, e.g. 4,8")
    tune.add_argument("--queue-delay-us", type=int, help="dynamic_batching max_queue_delay_microseconds")
    tune.add_argument(
        "--triton-venv",
        type=Path,
        default=ROOT / ".venv-triton",
        help="environment of the embedded Triton (its onnxruntime version matters)",
    )
    return tune


@dataclass(frozen=True)
class ServerTuning:
    instance_count: int = 1
    intra_op_threads: int = 0  # 0: onnxruntime uses every core
    allow_spinning: str | None = None  # None: whatever the config (or onnx_model.py's default, "0") says
    preferred_batch_sizes: tuple[int, ...] | None = None  # None: as committed
    max_queue_delay_us: int | None = None  # None: as committed

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerTuning:
        """From the flags ``add_tuning_args`` defines."""
        return cls(
            instance_count=args.instances,
            intra_op_threads=args.intra_op_threads,
            allow_spinning=args.allow_spinning,
            preferred_batch_sizes=args.preferred_batch,
            max_queue_delay_us=args.queue_delay_us,
        )


def export_model(repo: Path, input_dtype: str = "uint8") -> Path:
    """``python -m export`` with random weights into ``repo``; returns the ONNX file."""
    cmd = [
        sys.executable,
        "-m",
        "export",
        MODEL,
        "--weights",
        "random",
        "--repo",
        str(repo),
        "--input-dtype",
        input_dtype,
        "--write-config",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"export failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return repo / MODEL / "1" / "model.onnx"


def stand_in_model(onnx_path: Path, seed: int = 0) -> Path:
    """Overwrite an exported classifier's ONNX file with a stand-in that keeps its contract
    (``input`` uint8 [B, 3, 224, 224] → ``logits`` and ``probabilities`` [B, 1000]) and does
    next to no compute: the per-channel means through one random linear layer.  For measuring
    the gateway with the model's compute off this machine's cores, as on a GPU host; its
    answers mean nothing."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.standard_normal((3, 1000)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "stand_in",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["batch", 3, 224, 224])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1000]),
        ],
        initializer=[weights, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what the embedded onnxruntime reads
    onnx.checker.check_model(model)
    onnx.save(model, onnx_path)
    return onnx_path


def tuned_copy(source: Path, target: Path, tuning: ServerTuning) -> Path:
    """A copy of ``source`` whose configs carry ``tuning``."""
    shutil.copytree(source, target)
    for cfg_path in target.glob("*/config.pbtxt"):
        cfg = text_format.Parse(cfg_path.read_text(), mc.ModelConfig())
        if tuning.allow_spinning is not None:
            cfg.parameters["allow_spinning"].string_value = tuning.allow_spinning
        if tuning.preferred_batch_sizes is not None:
            del cfg.dynamic_batching.preferred_batch_size[:]
            cfg.dynamic_batching.preferred_batch_size.extend(tuning.preferred_batch_sizes)
        if tuning.max_queue_delay_us is not None:
            cfg.dynamic_batching.max_queue_delay_microseconds = tuning.max_queue_delay_us
        cfg_path.write_text(text_format.MessageToString(cfg))
    return target


@contextlib.contextmanager
def triton(
    repo: Path, work_dir: Path, tuning: ServerTuning, venv: Path = ROOT / ".venv-triton"
) -> Iterator[EmbeddedTriton]:
    repo = tuned_copy(repo, work_dir / "source", tuning)
    ports = TritonPorts(grpc=free_port(), http=free_port(), metrics=free_port())
    cpu = CpuOptions(instance_count=tuning.instance_count, intra_op_threads=tuning.intra_op_threads)
    server = EmbeddedTriton(model_repository=repo, work_dir=work_dir / "triton", venv=venv, ports=ports, cpu=cpu)
    with server:
        yield server


def gateway_env(triton_grpc: str, workers: int = 2) -> dict[str, str]:
    """A benchmark gateway's settings: this Triton, ``workers`` preprocess threads, quiet logs."""
    return {"APP_TRITON__URL": triton_grpc, "APP_PREPROCESS__WORKERS": str(workers), "APP_SERVER__LOG_LEVEL": "warning"}


@contextlib.contextmanager
def gateway(
    triton_grpc: str, work_dir: Path, workers: int = 2, timeout: float = 60.0, extra_env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """The real gateway (``harness.helpers.GatewayProcess``, access log off), ready."""
    env = {**gateway_env(triton_grpc, workers), **(extra_env or {})}
    work_dir.mkdir(parents=True, exist_ok=True)
    with helpers.gateway(
        env,
        work_dir / "gateway.log",
        log_level="warning",
        access_log=False,
        timeout=timeout,
        ready_path="/health/ready",
    ) as gw:
        yield gw
