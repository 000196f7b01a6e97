"""Derive the embedded (CPU, python backend) repository from the committed one.

For every model directory with a ``config.pbtxt``:
- the config is parsed and rewritten: ``backend: "python"``, ``KIND_CPU``
  instances, onnxruntime parameters; names, tensors, ``max_batch_size``,
  ``dynamic_batching``, warm-up and label files are kept as committed;
- each version directory links its ``model.onnx`` and gets the generic
  ``model.py`` (``embedded_triton/onnx_model.py``); a TorchScript (LibTorch)
  model is served from the ``model.onnx`` the exporter writes beside ``model.pt``;
- label files are linked.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

ONNX_MODEL_PY = Path(__file__).with_name("onnx_model.py")


class RepositoryError(Exception):
    """The committed repository cannot be served by the embedded server."""


def default_instances() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@dataclass(frozen=True)
class CpuOptions:
    """How the CPU variant runs: one single-threaded onnxruntime instance per core
    (measured on 2 cores: 2 x 1 thread reaches ~2 cores of work; 1 x 2 threads
    stalls at ~1.3 without spinning, and spinning burns the cores gRPC needs)."""

    instance_count: int = field(default_factory=default_instances)
    intra_op_threads: int = 1  # 0: onnxruntime picks (all cores)


ONNX_TWIN = "model.onnx"  # what the exporter writes beside a TorchScript model.pt


def derive_config(cfg: mc.ModelConfig, options: CpuOptions) -> mc.ModelConfig:
    out = mc.ModelConfig()
    out.CopyFrom(cfg)
    if cfg.platform == "onnxruntime_onnx" or cfg.backend == "onnxruntime":
        onnx_file = cfg.default_model_filename or ONNX_TWIN
    elif cfg.platform == "pytorch_libtorch" or cfg.backend == "pytorch":
        onnx_file = ONNX_TWIN  # the same contract, exported to ONNX by `python -m export`
        for key in [k for k in out.parameters if k.isupper()]:  # LibTorch options do not apply
            del out.parameters[key]
        out.ClearField("default_model_filename")
    else:
        raise RepositoryError(
            f"{cfg.name}: the embedded server runs ONNX models (or TorchScript models with a "
            f"{ONNX_TWIN} beside them); got platform {cfg.platform!r}, backend {cfg.backend!r}"
        )
    out.platform = ""
    out.backend = "python"
    del out.instance_group[:]
    out.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=options.instance_count)
    out.ClearField("optimization")  # GPU accelerators (TensorRT, ...) do not apply
    out.parameters["onnx_file"].string_value = onnx_file
    out.parameters["intra_op_threads"].string_value = str(options.intra_op_threads)
    return out


def model_dirs(source: Path) -> list[Path]:
    return sorted(p for p in source.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file())


def build_model(model_dir: Path, out_dir: Path, options: CpuOptions) -> str:
    """Derive one model directory into ``out_dir`` (created); return the model's name."""
    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    name = cfg.name or model_dir.name
    derived = derive_config(cfg, options)
    filename = derived.parameters["onnx_file"].string_value
    out_dir.mkdir()
    # Triton ignores version directories that are not numbers or start with 0 (and the
    # exporter stages new versions under hidden names): so does this.
    versions = [
        v
        for v in model_dir.iterdir()
        if v.is_dir() and v.name.isdigit() and not v.name.startswith("0") and (v / filename).is_file()
    ]
    if not versions:
        raise RepositoryError(
            f"{model_dir}: no exported version (expected {model_dir}/1/{filename}); run `python -m export {name}`"
        )
    for v in versions:
        (out_dir / v.name).mkdir()
        (out_dir / v.name / filename).symlink_to(v / filename)
        shutil.copyfile(ONNX_MODEL_PY, out_dir / v.name / "model.py")
    for label_file in {t.label_filename for t in cfg.output if t.label_filename}:
        if not (model_dir / label_file).is_file():
            raise RepositoryError(f"{model_dir}: label file {label_file} is missing")
        (out_dir / label_file).symlink_to(model_dir / label_file)
    (out_dir / "config.pbtxt").write_text(
        f"# Derived from {model_dir / 'config.pbtxt'} by embedded_triton; do not edit.\n"
        + text_format.MessageToString(derived)
    )
    return name


def build(source: Path, target: Path, options: CpuOptions) -> list[str]:
    """(Re)create ``target`` from ``source``; return the model names."""
    source = source.resolve()
    if not source.is_dir():
        raise RepositoryError(f"model repository {source} does not exist")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    names = [build_model(model_dir, target / model_dir.name, options) for model_dir in model_dirs(source)]
    if not names:
        raise RepositoryError(f"{source} holds no model (no */config.pbtxt)")
    return names


def rebuild_model(model_dir: Path, target: Path, options: CpuOptions) -> str:
    """Re-derive one model in a live repository: built aside under a hidden name, then
    swapped in, so Triton (explicit model control: it reads only when told to load)
    never sees a half-built directory."""
    fresh = target / f".{model_dir.name}.new"
    old = target / f".{model_dir.name}.old"
    for leftover in (fresh, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        name = build_model(model_dir.resolve(), fresh, options)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    current = target / model_dir.name
    if current.exists():
        current.rename(old)
    fresh.rename(current)
    shutil.rmtree(old, ignore_errors=True)
    return name


def fingerprint(model_dir: Path) -> tuple[object, ...]:
    """What a change to a model looks like: the config, label files, and each version's
    files (name, size, mtime).  The exporter publishes a version by renaming a staged
    directory, so a version is either absent or complete."""
    files: list[tuple[str, int, int]] = []
    for path in sorted(model_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file():
            st = path.stat()
            files.append((path.name, st.st_size, st.st_mtime_ns))
        elif path.is_dir() and path.name.isdigit():
            for f in sorted(path.iterdir()):
                if f.is_file():
                    st = f.stat()
                    files.append((f"{path.name}/{f.name}", st.st_size, st.st_mtime_ns))
    return tuple(files)
