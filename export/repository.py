"""Triton model repository layout: config.pbtxt, label file, versioned model files.

The committed ``config.pbtxt`` targets the NGC ``tritonserver:24.10-py3`` container
(onnxruntime backend on the GPU).  The embedded CPU server derives its own config
from this file (see ``embedded_triton.repository``); nobody maintains two by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ConfigMismatch

LABELS_FILE = "labels.txt"


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
    if existing.max_batch_size < 1:
        raise ConfigMismatch(f"{path}: max_batch_size must be >= 1 for the dynamic batcher")


def write_model_files(model_dir: Path, *, config_text: str, labels: list[str], write_config: bool) -> str:
    """Write labels, and the config if asked or absent; return what happened to the config."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
    cfg_path = model_dir / "config.pbtxt"
    if write_config or not cfg_path.exists():
        cfg_path.write_text(config_text)
        return "written"
    check_compatible(parse_config(cfg_path.read_text()), parse_config(config_text), cfg_path)
    return "kept (compatible)"
