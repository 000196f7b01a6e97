"""Triton model repository layout: config.pbtxt, label file, versioned model files.

The committed ``config.pbtxt`` targets the NGC ``tritonserver:24.10-py3`` container
(onnxruntime backend on the GPU).  The embedded CPU server derives its own config
from this file (see ``embedded_triton.repository``); nobody maintains two by hand.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ConfigMismatch

LABELS_FILE = "labels.txt"
LABELS_PARAMETER = "class_labels"


@dataclass(frozen=True)
class ClassifierLayout:
    name: str
    num_classes: int
    input_dims: tuple[int, int, int]  # C, H, W
    input_dtype: str  # Triton type name, e.g. TYPE_UINT8
    input_name: str = "input"
    output_names: tuple[str, ...] = ("logits", "probabilities")
    max_batch_size: int = 32


def classifier_config(layout: ClassifierLayout) -> str:
    """The committed config for a classifier, as protobuf text."""
    dims = ", ".join(str(d) for d in layout.input_dims)
    outputs = ",\n".join(
        f"""  {{
    name: "{name}"
    data_type: TYPE_FP32
    dims: [ {layout.num_classes} ]
    label_filename: "{LABELS_FILE}"
  }}"""
        for name in layout.output_names
    )
    warmups = ",\n".join(
        f"""  {{
    name: "warmup_batch_{b}"
    batch_size: {b}
    inputs {{
      key: "{layout.input_name}"
      value {{ data_type: {layout.input_dtype} dims: [ {dims} ] random_data: true }}
    }}
  }}"""
        for b in (1, 8)
    )
    return f"""# Written by `python -m export {layout.name}`; committed.  Targets the NGC
# tritonserver:24.10-py3 container (onnxruntime backend, GPU).  The embedded CPU
# server derives its python-backend config from this file at start-up.
name: "{layout.name}"
platform: "onnxruntime_onnx"
max_batch_size: {layout.max_batch_size}
input [
  {{
    name: "{layout.input_name}"
    data_type: {layout.input_dtype}
    format: FORMAT_NCHW
    dims: [ {dims} ]
  }}
]
output [
{outputs}
]
# Requests from concurrent clients and streams are batched on the server: whatever
# queues while the instances are busy forms the next batch. A long extra delay buys
# little (measured: 500 us cost 0.6 ms at concurrency 1 and no throughput at 8-16).
dynamic_batching {{
  preferred_batch_size: [ 4, 8, 16 ]
  max_queue_delay_microseconds: 100
}}
instance_group [
  {{
    count: 1
    kind: KIND_GPU
  }}
]
model_warmup [
{warmups}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""


def parse_config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def check_compatible(existing: mc.ModelConfig, expected: mc.ModelConfig, path: Path) -> None:
    """The tensors and batch size of a kept config must match the exported model."""

    def io(cfg: mc.ModelConfig) -> tuple[object, ...]:
        ins = tuple((t.name, t.data_type, tuple(t.dims)) for t in cfg.input)
        outs = tuple((t.name, t.data_type, tuple(t.dims)) for t in cfg.output)
        return cfg.name, ins, outs

    if io(existing) != io(expected):
        raise ConfigMismatch(
            f"{path} does not describe the exported model:\n  config:   {io(existing)}\n  exported: {io(expected)}\n"
            "  rerun with --write-config to regenerate it"
        )
    want = expected.parameters.get(LABELS_PARAMETER)
    have = existing.parameters.get(LABELS_PARAMETER)
    if want is not None and (have is None or have.string_value != want.string_value):
        raise ConfigMismatch(
            f"{path}: parameter {LABELS_PARAMETER!r} does not list the exported model's labels; "
            "rerun with --write-config to regenerate it"
        )
    if existing.max_batch_size < 1:
        raise ConfigMismatch(f"{path}: max_batch_size must be >= 1 for the dynamic batcher")


def next_version(model_dir: Path) -> int:
    """One past the highest numbered version directory (1 for a new model)."""
    versions = (
        [int(p.name) for p in model_dir.iterdir() if p.is_dir() and _is_version(p.name)] if model_dir.is_dir() else []
    )
    return max(versions, default=0) + 1


def _is_version(name: str) -> bool:
    # Triton ignores sub-directories that are not numbers or that start with 0.
    return name.isdigit() and not name.startswith("0")


def config_action(model_dir: Path, *, config_text: str, write_config: bool) -> str:
    """``write`` or ``keep``; a kept config must describe the new model.  Called before
    anything is exported, so a mismatch leaves the repository untouched."""
    cfg_path = model_dir / "config.pbtxt"
    if write_config or not cfg_path.exists():
        return "write"
    check_compatible(parse_config(cfg_path.read_text()), parse_config(config_text), cfg_path)
    return "keep"


@contextmanager
def staged_version(model_dir: Path, version: int) -> Iterator[Path]:
    """A hidden staging directory that becomes ``model_dir/<version>`` only if the block
    succeeds (exported and checked).  Triton ignores non-numeric directories, so a
    server watching the repository never sees a half-written or unchecked version."""
    model_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    stage.chmod(0o755)  # mkdtemp makes it 0700; a server running as another user must read it
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    final = model_dir / str(version)
    if final.exists():  # re-exporting a version: swap, then drop the old files
        old = model_dir / f".replaced-{version}-{stage.name.rsplit('-', 1)[-1]}"
        final.rename(old)
        stage.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(final)


def atomic_text(path: Path, text: str) -> None:
    """Write beside, then rename: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_model_files(model_dir: Path, *, config_text: str, labels: list[str], action: str, version: int) -> None:
    """Labels (model level, read by Triton, and a copy in the version directory that
    records which labels that version was exported with), then the config if asked.
    Every file is replaced atomically: a running Triton may read them at any time."""
    text = "".join(f"{label}\n" for label in labels)
    version_dir = model_dir / str(version)
    if version_dir.is_dir():
        atomic_text(version_dir / LABELS_FILE, text)
    atomic_text(model_dir / LABELS_FILE, text)
    if action == "write":
        atomic_text(model_dir / "config.pbtxt", config_text)


@dataclass(frozen=True)
class DetectorLayout:
    name: str
    arch: str
    labels: tuple[str, ...]
    max_detections: int
    warmup_hw: tuple[int, int]  # the frame size the gateway sends by default
    min_size: int
    max_size: int
    input_name: str = "images"
    max_batch_size: int = 8


def detector_config(layout: DetectorLayout) -> str:
    """The committed config for the person detector (TorchScript on LibTorch, GPU)."""
    bad = [label for label in layout.labels if "," in label]
    if bad:
        raise ConfigMismatch(f"labels may not contain commas (they are joined with commas in the config): {bad}")
    k = layout.max_detections
    h, w = layout.warmup_hw
    warmups = ",\n".join(
        f"""  {{
    name: "warmup_batch_{b}"
    batch_size: {b}
    count: 2
    inputs {{
      key: "{layout.input_name}"
      value {{ data_type: TYPE_UINT8 dims: [ 3, {h}, {w} ] random_data: true }}
    }}
  }}"""
        for b in (1, layout.max_batch_size)
    )
    return f"""# Written by `python -m export {layout.name} --arch {layout.arch}`; committed.
# Targets the NGC tritonserver:24.10-py3 container: TorchScript (model.pt) on the
# LibTorch backend, on the GPU.  model.onnx sits beside it; the embedded CPU server
# derives a python-backend (onnxruntime) config from this file at start-up.
#
# Contract: images [B, 3, H, W] uint8, any H and W (the model resizes inside: shorter
# side {layout.min_size}, longer at most {layout.max_size}); outputs padded to K = {k} detections,
# best first: boxes [B, K, 4] (x1, y1, x2, y2 in input pixels), scores [B, K],
# labels [B, K] (index into {LABELS_FILE}, -1 in padding), num_detections [B].
# The LibTorch backend matches outputs by position: keep this order.
name: "{layout.name}"
platform: "pytorch_libtorch"
default_model_filename: "model.pt"
max_batch_size: {layout.max_batch_size}
input [
  {{
    name: "{layout.input_name}"
    data_type: TYPE_UINT8
    format: FORMAT_NCHW
    dims: [ 3, -1, -1 ]
  }}
]
output [
  {{
    name: "boxes"
    data_type: TYPE_FP32
    dims: [ {k}, 4 ]
  }},
  {{
    name: "scores"
    data_type: TYPE_FP32
    dims: [ {k} ]
  }},
  {{
    name: "labels"
    data_type: TYPE_INT64
    dims: [ {k} ]
    label_filename: "{LABELS_FILE}"
  }},
  {{
    name: "num_detections"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }}
]
# Only requests of the same frame size batch together; the gateway sends every
# frame at its configured size.  Detection costs milliseconds per image even on a
# GPU, so a short wait for company pays for itself.
dynamic_batching {{
  preferred_batch_size: [ 4, {layout.max_batch_size} ]
  max_queue_delay_microseconds: 2000
}}
instance_group [
  {{
    count: 1
    kind: KIND_GPU
  }}
]
parameters [
  {{
    key: "INFERENCE_MODE"
    value: {{ string_value: "true" }}
  }},
  {{
    # The profiling executor re-specializes for every new shape (and proposal
    # count), which makes first calls slow and latency jumpy for detectors.
    key: "DISABLE_OPTIMIZED_EXECUTION"
    value: {{ string_value: "true" }}
  }},
  {{
    # Read by the gateway (the label file itself is not served by Triton).
    key: "{LABELS_PARAMETER}"
    value: {{ string_value: "{",".join(layout.labels)}" }}
  }}
]
model_warmup [
{warmups}
]
version_policy: {{ latest: {{ num_versions: 1 }} }}
"""
