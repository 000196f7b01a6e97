"""Deriving the embedded (python backend, CPU) repository from the committed one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from embedded_triton.repository import CpuOptions, RepositoryError, build, derive_config, fingerprint, rebuild_model
from harness.helpers import ROOT
from tests.conftest import DETECTOR, MODEL

COMMITTED = ROOT / "model_repository" / MODEL / "config.pbtxt"


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_derived_config_keeps_the_serving_contract() -> None:
    committed = parse(COMMITTED)
    derived = derive_config(committed, CpuOptions(instance_count=2, intra_op_threads=1))
    assert derived.backend == "python" and derived.platform == ""
    assert [(g.kind, g.count) for g in derived.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "model_warmup", "version_policy"):
        assert getattr(derived, field) == getattr(committed, field), f"{field} must be kept as committed"
    assert derived.parameters["intra_op_threads"].string_value == "1"


def test_build_links_models_and_labels(exported_repo: Path, tmp_path: Path) -> None:
    names = build(exported_repo, tmp_path / "rt", CpuOptions())
    assert names == [MODEL, DETECTOR]
    detector = tmp_path / "rt" / DETECTOR / "1"
    assert (detector / "model.onnx").resolve() == (exported_repo / DETECTOR / "1" / "model.onnx").resolve()
    assert not (detector / "model.pt").exists(), "the CPU server runs the ONNX twin, not TorchScript"
    version = tmp_path / "rt" / MODEL / "1"
    assert (version / "model.onnx").resolve() == (exported_repo / MODEL / "1" / "model.onnx").resolve()
    assert (version / "model.py").is_file()
    assert (tmp_path / "rt" / MODEL / "labels.txt").read_text().count("\n") == 1000
    assert parse(tmp_path / "rt" / MODEL / "config.pbtxt").backend == "python"


def test_unexported_model_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "src" / MODEL).mkdir(parents=True)
    (tmp_path / "src" / MODEL / "config.pbtxt").write_text(COMMITTED.read_text())
    with pytest.raises(RepositoryError, match="python -m export"):
        build(tmp_path / "src", tmp_path / "rt", CpuOptions())


def test_non_onnx_platform_is_refused() -> None:
    cfg = parse(COMMITTED)
    cfg.platform = "tensorflow_savedmodel"
    with pytest.raises(RepositoryError, match="runs ONNX models"):
        derive_config(cfg, CpuOptions())


def test_libtorch_detector_is_served_from_its_onnx_twin() -> None:
    committed = parse(ROOT / "model_repository" / DETECTOR / "config.pbtxt")
    assert committed.platform == "pytorch_libtorch" and committed.default_model_filename == "model.pt"
    derived = derive_config(committed, CpuOptions(instance_count=2, intra_op_threads=1))
    assert derived.backend == "python" and derived.parameters["onnx_file"].string_value == "model.onnx"
    assert "INFERENCE_MODE" not in derived.parameters and "DISABLE_OPTIMIZED_EXECUTION" not in derived.parameters
    assert derived.parameters["class_labels"].string_value.split(",")[1] == "person"
    for field in ("name", "max_batch_size", "input", "output", "dynamic_batching", "model_warmup"):
        assert getattr(derived, field) == getattr(committed, field), f"{field} must be kept as committed"


def test_rebuild_picks_up_a_new_version_and_ignores_staging(exported_repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(exported_repo / MODEL, src / MODEL)
    build(src, tmp_path / "rt", CpuOptions())
    before = fingerprint(src / MODEL)
    (src / MODEL / ".staging-2-abc").mkdir()  # the exporter at work: not a version yet
    (src / MODEL / ".staging-2-abc" / "model.onnx").write_bytes(b"half")
    (src / MODEL / "01").mkdir()  # Triton ignores versions that start with 0
    assert fingerprint(src / MODEL) == before
    shutil.copytree(src / MODEL / "1", src / MODEL / "2")
    assert fingerprint(src / MODEL) != before
    assert rebuild_model(src / MODEL, tmp_path / "rt", CpuOptions()) == MODEL
    assert sorted(p.name for p in (tmp_path / "rt").iterdir()) == [MODEL], "no leftovers beside it"
    assert sorted(p.name for p in (tmp_path / "rt" / MODEL).iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert (tmp_path / "rt" / MODEL / "2" / "model.py").is_file()
