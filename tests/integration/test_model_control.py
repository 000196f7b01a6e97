"""Explicit model control in the embedded server: what `sync()` does with a broken
version and with a model whose directory goes away."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import MODEL
from tests.integration.conftest import new_triton

pytestmark = pytest.mark.integration


def served_version(client: grpcclient.InferenceServerClient) -> str:
    x = np.zeros((1, 3, 224, 224), np.uint8)
    inp = grpcclient.InferInput("input", list(x.shape), "UINT8")
    inp.set_data_from_numpy(x)
    result = client.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=1)])
    return str(result.get_response().model_version)


def test_broken_version_keeps_the_served_one_and_removal_unloads(exported_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo / MODEL, repo / MODEL)
    triton = new_triton(repo, tmp_path / "triton")
    triton.watch_s = 0  # this test drives sync() itself
    with triton:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        assert triton.sync() == {}, "nothing changed"
        assert served_version(client) == "1"
        (repo / MODEL / "2").mkdir()
        (repo / MODEL / "2" / "model.onnx").write_bytes(b"not an onnx file")
        result = triton.sync()
        assert result[MODEL].startswith("failed:") and "version 2" in result[MODEL], result
        assert served_version(client) == "1", "Triton keeps serving the version it had"
        assert triton.sync() == {}, "a broken export is reported once"
        shutil.rmtree(repo / MODEL / "2")
        assert triton.sync() == {MODEL: "loaded"}
        assert served_version(client) == "1"
        shutil.rmtree(repo / MODEL)
        assert triton.sync() == {MODEL: "unloaded"}
        assert not client.is_model_ready(MODEL)
