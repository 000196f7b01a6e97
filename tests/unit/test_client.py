"""The Triton client's one retry: a crashed model instance or a retired version, nothing else."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from tritonclient.utils import InferenceServerException

from gateway.config import TritonSettings
from gateway.errors import InferenceFailed, ModelDegraded
from gateway.inference.client import TritonClient

CRASHED = InferenceServerException("Stub process 'mobilenet_v3_small_0_1' is not healthy.", "StatusCode.INTERNAL")
BROKEN = InferenceServerException("onnxruntime: invalid input shape", "StatusCode.INTERNAL")


def client_answering(*answers: Any) -> tuple[TritonClient, MagicMock, list[tuple[str, str]]]:
    retries: list[tuple[str, str]] = []
    client = TritonClient(TritonSettings(), on_retry=lambda m, why: retries.append((m, why)))
    grpc = MagicMock()
    grpc.infer = AsyncMock(side_effect=list(answers))
    client._client = grpc
    return client, grpc, retries


def infer(client: TritonClient) -> Any:
    return asyncio.run(client._infer("mobilenet_v3_small", [], []))


def test_a_crashed_instance_is_retried_once_and_the_retry_answers() -> None:
    client, grpc, retries = client_answering(CRASHED, "answer")
    assert infer(client) == "answer"
    assert grpc.infer.await_count == 2
    assert retries == [("mobilenet_v3_small", "crashed_instance")], "each retry is counted by reason"


def test_a_crash_on_every_try_means_the_model_is_degraded() -> None:
    client, grpc, _ = client_answering(CRASHED, CRASHED, CRASHED, "never")
    with pytest.raises(ModelDegraded) as e:
        infer(client)
    assert e.value.status == 503 and e.value.code == "model_degraded"
    assert grpc.infer.await_count == 3, "retried twice at least, not more"


def test_other_failures_are_not_retried() -> None:
    client, grpc, retries = client_answering(BROKEN, "never")
    with pytest.raises(InferenceFailed) as e:
        infer(client)
    assert not isinstance(e.value, ModelDegraded)
    assert grpc.infer.await_count == 1 and retries == []


def test_with_three_instances_a_crash_is_retried_once_per_instance() -> None:
    client, grpc, retries = client_answering(CRASHED, CRASHED, CRASHED, "answer")
    assert asyncio.run(client._infer("mobilenet_v3_small", [], [], instances=3)) == "answer"
    assert len(retries) == 3
    client, grpc, _ = client_answering(CRASHED, CRASHED, CRASHED, CRASHED, "never")
    with pytest.raises(ModelDegraded):
        asyncio.run(client._infer("mobilenet_v3_small", [], [], instances=3))
    assert grpc.infer.await_count == 4
