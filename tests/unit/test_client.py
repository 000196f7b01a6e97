"""The Triton client's retries: a crashed model instance, a retired version, and with several
Tritons a call that met one that cannot serve it; nothing else.  Readiness and facts reads
with several Tritons."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from tritonclient.utils import InferenceServerException

from gateway.config import TritonSettings
from gateway.errors import InferenceFailed, InferenceTimeout, InferenceUnavailable, ModelDegraded, ModelNotFound
from gateway.inference.client import (
    CRASH_PAUSE_MAX_S,
    CRASH_PAUSE_S,
    DNS_ENDPOINTS,
    FACT_TRIES,
    MAX_ENDPOINT_RETRIES,
    TritonClient,
    _Attempts,
    endpoints,
)

CRASHED = InferenceServerException("Stub process 'mobilenet_v3_small_0_1' is not healthy.", "StatusCode.INTERNAL")
BROKEN = InferenceServerException("onnxruntime: invalid input shape", "StatusCode.INTERNAL")


def patched(client: TritonClient, *answers: Any) -> MagicMock:
    """``grpc.infer`` answers both channels: the aio one awaits it, the sync one (a worker
    thread's blocking call) runs it to its end; one record of calls for both."""
    grpc, sync = MagicMock(), MagicMock()
    grpc.infer = AsyncMock(side_effect=list(answers))
    sync.infer.side_effect = lambda *a, **kw: asyncio.run(grpc.infer(*a, **kw))
    client._client, client._sync = grpc, sync
    return grpc


def client_answering(*answers: Any) -> tuple[TritonClient, MagicMock, list[tuple[str, str]]]:
    retries: list[tuple[str, str]] = []
    client = TritonClient(TritonSettings(), on_retry=lambda m, why: retries.append((m, why)))
    return client, patched(client, *answers), retries


Infer = Callable[..., Any]


@pytest.fixture(params=["aio", "blocking"])
def infer(request: pytest.FixtureRequest) -> Infer:
    """One inference with the client's retries: awaited on an event loop, or blocking (a worker thread)."""

    def run(client: TritonClient, instances: int = 1) -> Any:
        if request.param == "aio":
            return asyncio.run(client._infer("mobilenet_v3_small", [], [], instances=instances))
        return client._infer_blocking("mobilenet_v3_small", [], [], instances=instances)

    return run


def test_a_crashed_instance_is_retried_once_and_the_retry_answers(infer: Infer) -> None:
    client, grpc, retries = client_answering(CRASHED, "answer")
    assert infer(client) == "answer"
    assert grpc.infer.await_count == 2
    assert retries == [("mobilenet_v3_small", "crashed_instance")], "each retry is counted by reason"


def test_a_crash_on_every_try_means_the_model_is_degraded(infer: Infer) -> None:
    client, grpc, _ = client_answering(CRASHED, CRASHED, CRASHED, CRASHED, "never")
    with pytest.raises(ModelDegraded) as e:
        infer(client)
    assert e.value.status == 503 and e.value.code == "model_degraded"
    assert grpc.infer.await_count == 4, "retried three times at least, not more"


def test_other_failures_are_not_retried(infer: Infer) -> None:
    client, grpc, retries = client_answering(BROKEN, "never")
    with pytest.raises(InferenceFailed) as e:
        infer(client)
    assert not isinstance(e.value, ModelDegraded)
    assert grpc.infer.await_count == 1 and retries == []


def test_with_three_instances_a_crash_is_retried_once_per_instance_and_once_more(infer: Infer) -> None:
    client, grpc, retries = client_answering(CRASHED, CRASHED, CRASHED, CRASHED, "answer")
    assert infer(client, instances=3) == "answer"
    assert len(retries) == 4
    client, grpc, _ = client_answering(CRASHED, CRASHED, CRASHED, CRASHED, CRASHED, "never")
    with pytest.raises(ModelDegraded):
        infer(client, instances=3)
    assert grpc.infer.await_count == 5


def test_each_crash_retry_waits_longer_than_the_last() -> None:
    # a retry sent at once goes to the dead instance whenever the healthy ones are busy: each one waits,
    # four times as long as the one before (jittered down by half at most), never more than the cap
    tries = _Attempts(TritonClient(TritonSettings()), "mobilenet_v3_small", 4, lambda: 0.0)
    crashed = InferenceFailed("Stub process 'mobilenet_v3_small_0_1' is not healthy.")
    pauses = [tries.after(crashed) or 0.0 for _ in range(5)]
    for i, pause in enumerate(pauses):
        full = min(CRASH_PAUSE_MAX_S, CRASH_PAUSE_S * 4**i)
        assert full / 2 <= pause <= full, f"retry {i + 1} waited {pause}"
    assert pauses[1] > pauses[0] and pauses[2] > pauses[1]
    with pytest.raises(ModelDegraded):
        tries.after(crashed)


# --- several Tritons ---------------------------------------------------------------------------

TWO = "ipv4:127.0.0.1:8001,127.0.0.1:8011"
RESET = InferenceServerException(
    "Stream removed (recvmsg:Connection reset by peer (104))", "StatusCode.UNAVAILABLE"
)  # the call was on a Triton that was SIGKILLed
REFUSED = InferenceServerException(
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8011: Connection refused",
    "StatusCode.UNAVAILABLE",
)
MISSING = InferenceServerException(
    "Request for unknown model: 'mobilenet_v3_small' is not found", "StatusCode.NOT_FOUND"
)
RETIRED = InferenceServerException(
    "Request for unknown model: 'mobilenet_v3_small' version 1 is not at ready state", "StatusCode.UNAVAILABLE"
)
LATE = InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")
INVALID = InferenceServerException("unexpected shape for input 'input'", "StatusCode.INVALID_ARGUMENT")


def pool_answering(url: str, *answers: Any, **settings: Any) -> tuple[TritonClient, MagicMock, list[tuple[str, str]]]:
    retries: list[tuple[str, str]] = []
    client = TritonClient(TritonSettings(url=url, **settings), on_retry=lambda m, why: retries.append((m, why)))
    return client, patched(client, *answers), retries


@pytest.mark.parametrize(
    ("url", "count"),
    [
        ("localhost:8001", 1),
        ("triton.example:8001", 1),  # a name may resolve to several addresses: still one Triton (pick_first)
        ("ipv4:127.0.0.1:8001", 1),
        (TWO, 2),
        ("ipv4:10.0.0.1:8001,10.0.0.2:8001,10.0.0.3:8001,", 3),
        ("ipv6:[::1]:8001,[::1]:8011", 2),
        ("dns:///triton-headless:8001", DNS_ENDPOINTS),
        ("dns://10.96.0.10/triton-headless.ml.svc:8001", DNS_ENDPOINTS),
        ("unix:/run/triton.sock", 1),
    ],
)
def test_the_target_says_how_many_tritons_there_are(url: str, count: int) -> None:
    assert endpoints(url) == count


def channel_args(url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    made = MagicMock()
    monkeypatch.setattr("gateway.inference.client.grpcaio.InferenceServerClient", made)
    asyncio.run(TritonClient(TritonSettings(url=url)).start())
    (target,), kwargs = made.call_args
    assert target == url, "the target goes to gRPC as it is"
    return dict(kwargs["channel_args"])


def test_several_tritons_are_balanced_round_robin_and_one_keeps_grpcs_default(monkeypatch: pytest.MonkeyPatch) -> None:
    pooled = channel_args(TWO, monkeypatch)
    assert json.loads(pooled["grpc.service_config"]) == {"loadBalancingConfig": [{"round_robin": {}}]}
    assert "grpc.service_config" not in channel_args("localhost:8001", monkeypatch), "host:port is unchanged"
    assert pooled["grpc.keepalive_time_ms"] == 10_000, "the other channel arguments stay"


@pytest.mark.parametrize(("error", "reason"), [(RESET, "endpoint_unavailable"), (MISSING, "endpoint_lacks_model")])
def test_with_several_tritons_a_call_that_met_an_unusable_one_goes_to_another(
    error: InferenceServerException, reason: str, infer: Infer
) -> None:
    client, grpc, retries = pool_answering(TWO, error, "answer")
    assert infer(client) == "answer"
    assert grpc.infer.await_count == 2 and retries == [("mobilenet_v3_small", reason)]


def test_endpoint_retries_are_bounded_by_the_number_of_tritons(infer: Infer) -> None:
    # given two Tritons that both refuse (both down)
    client, grpc, retries = pool_answering(TWO, REFUSED, REFUSED, REFUSED, "never")
    with pytest.raises(InferenceUnavailable) as e:
        infer(client)
    # then it was sent to each once more, and the refusal stands (503)
    assert grpc.infer.await_count == 3, "the first try and one retry per Triton"
    assert e.value.code == "inference_unavailable" and "Connection refused" in e.value.message
    assert [why for _, why in retries] == ["endpoint_unavailable"] * 2
    # and never more than MAX_ENDPOINT_RETRIES, however many Tritons the target names
    many = "ipv4:" + ",".join(f"10.0.0.{i}:8001" for i in range(1, 10))
    client, grpc, _ = pool_answering(many, *([REFUSED] * 10))
    with pytest.raises(InferenceUnavailable):
        infer(client)
    assert grpc.infer.await_count == 1 + MAX_ENDPOINT_RETRIES


@pytest.mark.parametrize("error", [RESET, REFUSED, MISSING])
def test_with_one_triton_nothing_is_sent_elsewhere(error: InferenceServerException, infer: Infer) -> None:
    client, grpc, retries = pool_answering("localhost:8001", error, "never")
    with pytest.raises((InferenceUnavailable, ModelNotFound)):
        infer(client)
    assert grpc.infer.await_count == 1 and retries == []


@pytest.mark.parametrize(("error", "kind"), [(LATE, InferenceTimeout), (INVALID, InferenceFailed)])
def test_what_cannot_be_transient_is_not_retried_on_another_triton(
    error: InferenceServerException, kind: type[Exception], infer: Infer
) -> None:
    # a spent deadline stays spent; a request Triton rejected would be rejected by every Triton
    client, grpc, retries = pool_answering(TWO, error, "never")
    with pytest.raises(kind):
        infer(client)
    assert grpc.infer.await_count == 1 and retries == []


def test_the_older_retries_still_work_beside_the_endpoint_ones(infer: Infer) -> None:
    # a retired version, a crashed instance and a dead Triton in one request: each counted by reason
    client, _, retries = pool_answering(TWO, RETIRED, CRASHED, RESET, "answer")
    assert infer(client) == "answer"
    assert [why for _, why in retries] == ["retired_version", "crashed_instance", "endpoint_unavailable"]
    # and a second retired-version refusal is one Triton among several not ready: sent elsewhere
    client, _, retries = pool_answering(TWO, RETIRED, RETIRED, "answer")
    assert infer(client) == "answer"
    assert [why for _, why in retries] == ["retired_version", "endpoint_unavailable"]


def timed_answers(*answers: Any, seconds: float) -> tuple[Any, list[float]]:
    """A fake ``infer`` that takes ``seconds`` to give each answer, and the client timeouts it was sent with."""
    timeouts: list[float] = []
    pending = list(answers)

    async def infer_call(*args: Any, client_timeout: float, **kwargs: Any) -> Any:
        timeouts.append(client_timeout)
        await asyncio.sleep(seconds)
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return infer_call, timeouts


def test_no_endpoint_retry_is_sent_past_the_request_deadline(infer: Infer) -> None:
    # given a 0.3 s deadline, and a Triton that takes 0.28 s to reset the connection
    client, grpc, retries = pool_answering(TWO, request_timeout_s=0.3)
    grpc.infer, timeouts = timed_answers(RESET, "never", seconds=0.28)
    # then no retry goes out with less than MIN_ATTEMPT_S left: the refusal is the answer
    with pytest.raises(InferenceUnavailable):
        infer(client)
    assert timeouts == [0.3] and retries == []


def test_a_crash_retry_still_gets_the_whole_deadline(infer: Infer) -> None:
    # Triton takes up to ~1 s to say "not healthy": the older retries keep a full deadline per try
    client, grpc, retries = pool_answering(TWO, request_timeout_s=0.3)
    grpc.infer, timeouts = timed_answers(CRASHED, "answer", seconds=0.28)
    assert infer(client) == "answer"
    assert timeouts == [0.3, 0.3] and [why for _, why in retries] == ["crashed_instance"]


def test_an_endpoint_retry_gets_what_is_left_of_the_deadline(infer: Infer) -> None:
    client, grpc, _ = pool_answering(TWO, request_timeout_s=1.0)
    grpc.infer, timeouts = timed_answers(RESET, "answer", seconds=0.1)
    assert infer(client) == "answer"
    assert timeouts[0] == 1.0 and 0.8 < timeouts[1] < 0.95, f"client timeouts {timeouts}: one deadline for both"


def ready_client(url: str, answers: list[Any], method: str = "is_server_ready") -> tuple[TritonClient, AsyncMock]:
    client = TritonClient(TritonSettings(url=url))
    grpc = MagicMock()
    probe = AsyncMock(side_effect=answers)
    setattr(grpc, method, probe)
    client._client = grpc
    return client, probe


@pytest.mark.parametrize(
    ("answers", "ready"),
    [([False, True], True), ([REFUSED, True], True), ([True, REFUSED], True), ([False, REFUSED], False)],
)
def test_several_tritons_are_ready_when_any_of_them_is(answers: list[Any], ready: bool) -> None:
    client, probe = ready_client(TWO, answers)
    assert asyncio.run(client.server_ready()) is ready
    assert probe.await_count <= 2, "one probe per Triton, asked at once"
    client, probe = ready_client(TWO, answers, "is_model_ready")
    assert asyncio.run(client.model_ready("mobilenet_v3_small")) is ready


def test_one_triton_is_asked_once() -> None:
    client, probe = ready_client("localhost:8001", [False, True])
    assert asyncio.run(client.server_ready()) is False
    assert probe.await_count == 1


# --- reading a version's facts -----------------------------------------------------------------

META_2 = SimpleNamespace(versions=["2"])
CONFIG = SimpleNamespace(config="config of v2")
VERSION_MISSING = InferenceServerException(
    "Request for unknown model: 'mobilenet_v3_small' version 2 is not found", "StatusCode.NOT_FOUND"
)


def facts_client(url: str, metadata: list[Any], config: list[Any]) -> tuple[TritonClient, MagicMock]:
    client = TritonClient(TritonSettings(url=url))
    grpc = MagicMock()
    grpc.get_model_metadata = AsyncMock(side_effect=metadata)
    grpc.get_model_config = AsyncMock(side_effect=config)
    grpc.get_model_repository_index = AsyncMock(return_value=SimpleNamespace(models=[]))
    client._client = grpc
    return client, grpc


def test_each_call_for_a_version_is_asked_again_until_it_meets_a_triton_that_has_it() -> None:
    # given two Tritons, one without version 2: round-robin sends metadata to one and config to
    # the other, so each call is asked again on its own (asking them again as a pair would not do)
    client, grpc = facts_client(TWO, [VERSION_MISSING, META_2], [VERSION_MISSING, CONFIG])
    assert asyncio.run(client._metadata_and_config("mobilenet_v3_small", "2")) == (META_2, "config of v2")
    assert grpc.get_model_metadata.await_count == 2 and grpc.get_model_config.await_count == 2
    # the config is asked for the version the metadata named, not for "the newest" (another Triton's)
    client, grpc = facts_client(TWO, [META_2], [CONFIG])
    asyncio.run(client._metadata_and_config("mobilenet_v3_small", ""))
    assert grpc.get_model_config.await_args.args == ("mobilenet_v3_small", "2")


def test_facts_reads_are_bounded() -> None:
    client, grpc = facts_client(TWO, [VERSION_MISSING] * 10, [])
    with pytest.raises(ModelNotFound):
        asyncio.run(client._metadata_and_config("mobilenet_v3_small", "2"))
    assert grpc.get_model_metadata.await_count == min(FACT_TRIES, 4), "twice the number of Tritons"


def test_with_one_triton_a_version_is_asked_once_and_a_swap_read_again() -> None:
    client, grpc = facts_client("localhost:8001", [VERSION_MISSING], [])
    with pytest.raises(ModelNotFound):
        asyncio.run(client._metadata_and_config("mobilenet_v3_small", "2"))
    assert grpc.get_model_metadata.await_count == 1
    # the newest version retired between the metadata and the config: read once more from the top
    client, grpc = facts_client("localhost:8001", [SimpleNamespace(versions=["1"]), META_2], [VERSION_MISSING, CONFIG])
    assert asyncio.run(client._metadata_and_config("mobilenet_v3_small", "")) == (META_2, "config of v2")
    # an unknown model is still reported with what Triton serves
    client, grpc = facts_client("localhost:8001", [MISSING], [])
    with pytest.raises(ModelNotFound, match="unknown model 'mobilenet_v3_small'"):
        asyncio.run(client._metadata_and_config("mobilenet_v3_small", ""))
