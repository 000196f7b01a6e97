"""Several Tritons behind one gateway (``triton.url: ipv4:a,b``): requests are balanced
round-robin over both, a Triton SIGKILLed mid-call costs no ``/predict`` and no stream
event (its calls are sent to the other), and two Tritons serving different versions of
the model (a roll-out half done) do not make the gateway flap."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from embedded_triton import EmbeddedTriton
from embedded_triton.repository import CpuOptions
from harness.helpers import SseRecorder, encode, gateway, scene, scrape, value, wait_until
from harness.peers.rtsp import RtspServer
from harness.results import record
from tests.conftest import MODEL
from tests.integration.conftest import new_triton

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
IMAGE = encode(scene(320, 240), "JPEG")
METADATA_CALL = re.compile(r"Process for ModelMetadata, rpc_ok=1, \d+ step START")


@contextmanager
def two_tritons(
    exported_repo: Path, tmp_path: Path, versions: tuple[str, str] = ("1", "1"), **kw: object
) -> Iterator[tuple[EmbeddedTriton, EmbeddedTriton]]:
    """Two embedded Tritons, each with its own copy of the classifier as version ``versions[i]``
    (one instance each: four stubs would crowd two cores)."""
    servers = []
    for name, version in zip("ab", versions, strict=True):
        repo = tmp_path / f"repo_{name}"
        shutil.copytree(exported_repo / MODEL, repo / MODEL)
        if version != "1":
            (repo / MODEL / "1").rename(repo / MODEL / version)
        server = new_triton(repo, tmp_path / f"triton_{name}")
        server.cpu = CpuOptions(instance_count=1)
        server.watch_s = 0
        for key, val in kw.items():
            setattr(server, key, val)
        servers.append(server)
    with ExitStack() as stack:
        a, b = (stack.enter_context(s) for s in servers)
        yield a, b


def pool_url(a: EmbeddedTriton, b: EmbeddedTriton) -> str:
    return f"ipv4:127.0.0.1:{a.ports.grpc},127.0.0.1:{b.ports.grpc}"


def requests_served(server: EmbeddedTriton) -> int:
    """Inference requests Triton served successfully (its statistics API; its Prometheus metrics
    are updated only every 2 s)."""
    r = httpx.get(f"{server.http_url}/v2/models/{MODEL}/stats", timeout=10)
    assert r.status_code == 200, r.text
    return sum(int(m["inference_stats"]["success"]["count"]) for m in r.json()["model_stats"])


@dataclass(frozen=True)
class Answer:
    status: int
    version: str  # model_version, or the start of the error body
    started: float  # monotonic
    seconds: float


class PredictLoop:
    """``/predict`` in a loop on a thread: each answer, and when the request now in flight
    started (to see one stuck on a frozen Triton)."""

    def __init__(self, url: str) -> None:
        self.answers: list[Answer] = []
        self.in_flight_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), name="predict-loop", daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                self.in_flight_since = started = time.monotonic()
                r = client.post(f"{url}/predict", files={"image": ("a.jpg", IMAGE, "image/jpeg")})
                self.in_flight_since = None
                version = r.json().get("model_version", r.text[:300])
                self.answers.append(Answer(r.status_code, version, started, time.monotonic() - started))

    def stuck_for(self) -> float:
        since = self.in_flight_since
        return 0.0 if since is None else time.monotonic() - since

    def stop(self) -> list[Answer]:
        self._stop.set()
        self._thread.join(60)
        return self.answers


def test_two_tritons_share_the_load_and_one_killed_mid_call_costs_nothing(exported_repo: Path, tmp_path: Path) -> None:
    camera = RtspServer()
    with two_tritons(exported_repo, tmp_path) as (a, b), ExitStack() as stack:
        stack.callback(camera.stop)
        env = {
            "APP_TRITON__URL": pool_url(a, b),
            "APP_TRITON__REQUEST_TIMEOUT_S": "10",
            "APP_TRITON__MAX_RECONNECT_BACKOFF_S": "1",
            "APP_RTSP_URL": camera.url,
            "APP_FRAME_SAMPLE_FPS": "5",
        }
        gw = stack.enter_context(gateway(env, tmp_path / "gw.log", access_log=False))
        sub = stack.enter_context(SseRecorder(f"{gw.url}/stream"))
        wait_until(lambda: sub.of("prediction"), 60, what="the stream's first prediction")

        # given requests and a stream balanced over both Tritons
        with httpx.Client(timeout=30) as client:
            for _ in range(10):
                r = client.post(f"{gw.url}/predict", files={"image": ("a.jpg", IMAGE, "image/jpeg")})
                assert r.status_code == 200, r.text
        served_a, served_b = requests_served(a), requests_served(b)
        assert served_a >= 3 and served_b >= 3, f"round-robin: Triton a served {served_a}, b {served_b}"
        ready = httpx.get(f"{gw.url}/health/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["components"]["triton"]["url"] == pool_url(a, b)

        # when Triton a is SIGKILLed with calls in flight on it (frozen first, so that the calls
        # it was given are still waiting for their answers when it dies)
        loops = [PredictLoop(gw.url) for _ in range(2)]
        wait_until(lambda: all(len(loop.answers) >= 3 for loop in loops), 60, what="the /predict loops running")
        assert a.pid is not None
        os.kill(a.pid, signal.SIGSTOP)
        wait_until(
            lambda: any(loop.stuck_for() > 1.0 for loop in loops), 30, what="a /predict waiting on the frozen Triton"
        )
        killed_at, killed_mono = time.time(), time.monotonic()
        os.kill(a.pid, signal.SIGKILL)
        before = sum(len(loop.answers) for loop in loops)
        wait_until(
            lambda: (
                sum(len(loop.answers) for loop in loops) >= before + 40 and len(sub.of("prediction", killed_at)) >= 10
            ),
            90,
            what="40 /predict answers and 10 stream predictions after the kill",
        )
        answers = [answer for loop in loops for answer in loop.stop()]

        # then every /predict was answered, the stuck ones by Triton b on a retry
        statuses = Counter(answer.status for answer in answers)
        assert statuses == {200: len(answers)}, f"/predict answers around the kill: {statuses}, {answers[-5:]}"
        retried = value(scrape(gw), "streamml_inference_retries_total", model=MODEL, reason="endpoint_unavailable")
        assert retried >= 1, "the calls in flight on the killed Triton were not sent again (or not counted)"
        # and the stream kept publishing, never reporting Triton unavailable
        assert not [e.data for e in sub.of("status") if e.data.get("triton") != "available"], "a status event"
        assert len(sub.of("prediction", killed_at)) >= 10
        # and the gateway is ready: one Triton of two is
        ready = httpx.get(f"{gw.url}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert requests_served(b) > served_b + 40, "Triton b took the whole load"
        after = sorted(answer.seconds for answer in answers if answer.started > killed_mono)
        stuck = [answer.seconds for answer in answers if answer.started < killed_mono < answer.started + answer.seconds]
        record(
            "triton_pool_kill",
            tritons=2,
            predict_answered=len(answers),
            predict_failed=len(answers) - statuses[200],
            retries_endpoint_unavailable=retried,
            in_flight_at_kill=len(stuck),
            predict_after_kill_p50_ms=round(after[len(after) // 2] * 1000, 1),
            predict_after_kill_max_ms=round(after[-1] * 1000, 1),
            stream_predictions_after_kill=len(sub.of("prediction", killed_at)),
            stream_status_events=len(sub.of("status")),
        )


def metadata_calls(*servers: EmbeddedTriton) -> int:
    """ModelMetadata calls the Tritons received (their verbose logs)."""
    return sum(len(METADATA_CALL.findall(s.log_path.read_text(errors="replace"))) for s in servers)


def test_tritons_serving_different_versions_do_not_make_the_gateway_flap(exported_repo: Path, tmp_path: Path) -> None:
    # given Triton a serving version 1 and Triton b version 2 of the model (a roll-out half done)
    with two_tritons(exported_repo, tmp_path, ("1", "2"), log_verbose=1) as (a, b):
        env = {"APP_TRITON__URL": pool_url(a, b), "APP_TRITON__REQUEST_TIMEOUT_S": "10"}
        with gateway(env, tmp_path / "gw.log", access_log=False) as gw, httpx.Client(timeout=30) as client:

            def predict_versions(n: int) -> Counter[str]:
                versions: Counter[str] = Counter()
                for _ in range(n):
                    r = client.post(f"{gw.url}/predict", files={"image": ("a.jpg", IMAGE, "image/jpeg")})
                    assert r.status_code == 200, r.text
                    versions[r.json()["model_version"]] += 1
                return versions

            # when requests alternate between them
            first = predict_versions(20)
            reads = metadata_calls(a, b)
            later = predict_versions(40)
            reads_later = metadata_calls(a, b) - reads

            # then answers come from both versions, each labelled with its own
            assert set(first) == set(later) == {"1", "2"}, f"versions answering: {first}, then {later}"
            # and each version's facts were read once, early: no read per answer
            assert reads <= 10, f"{reads} metadata calls for two versions (each read retried a few times at most)"
            assert reads_later == 0, f"{reads_later} more metadata calls while the same two versions answered"
            log = gw.log()
            assert log.count("read the facts of version") <= 1, log[-3000:]
            # and the gateway switched at most once, upwards, and never back
            switches = re.findall(r"now serving version (\d+) \(was (\d+)\)", log)
            assert switches in ([], [("2", "1")]), f"version switches logged: {switches}"
            # and readiness reports the newest version every time
            seen = set()
            for _ in range(6):
                ready = client.get(f"{gw.url}/health/ready")
                assert ready.status_code == 200, ready.text
                seen.add(ready.json()["components"]["models"][MODEL]["version"])
            assert seen == {"2"}, f"readiness reported versions {seen}"
            assert re.findall(r"now serving version (\d+) \(was (\d+)\)", gw.log()) == switches
            record(
                "triton_version_skew",
                answers_by_version=dict(first + later),
                metadata_calls_first_20_requests=reads,
                metadata_calls_next_40_requests=reads_later,
                version_switches=len(switches),
                readiness_versions=sorted(seen),
            )
