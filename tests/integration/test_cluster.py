"""Cluster mode against real servers: redis-server (Debian), three gateways (uvicorn), the
embedded Triton and the GStreamer RTSP server.

The tests run in order on one cluster (module scope): the spread of 12 streams, events
across gateways, resuming, runtime add/remove, a gateway SIGKILLed, Redis restarted
empty.  An ``OwnershipAudit`` samples every gateway's ``GET /cluster`` and ``GET /streams``
throughout and checks at the end that no stream ever ran on two gateways at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedded_triton import EmbeddedTriton
from harness.helpers import GatewayProcess, SseRecorder, scrape, total, wait_until
from harness.peers.redis import RedisServer
from harness.peers.rtsp import RtspServer

pytestmark = pytest.mark.integration

LEASE_S = 3.0
STREAMS = [f"cam{i:02d}" for i in range(1, 13)]
NODES = ("gw-a", "gw-b", "gw-c")
MODEL = "mobilenet_v3_small"


@dataclass
class Cluster:
    redis: RedisServer
    camera: RtspServer
    triton: EmbeddedTriton
    env: dict[str, str]
    tmp: Path
    nodes: dict[str, GatewayProcess] = field(default_factory=dict)
    gone: dict[int, float] = field(default_factory=dict)  # gateway pid -> when it was SIGKILLed or had stopped

    def start(self, node: str) -> GatewayProcess:
        gw = GatewayProcess({**self.env, "APP_CLUSTER__NODE_ID": node}, self.tmp / f"{node}.log")
        gw.start()
        self.nodes[node] = gw
        return gw

    def live(self) -> dict[str, GatewayProcess]:
        return {n: g for n, g in self.nodes.items() if g.proc is not None and g.proc.poll() is None}

    def url(self, node: str) -> str:
        return self.nodes[node].url


def _get(url: str, timeout: float = 5) -> Any:
    r = httpx.get(url, timeout=timeout)
    r.raise_for_status()
    return r.json()


def _owners(url: str) -> dict[str, str | None]:
    return {row["id"]: row["owner"] for row in _get(f"{url}/streams")}


def _settled(c: Cluster, expect: set[str]) -> bool:
    """Every live gateway lists exactly ``expect``, each owned by a live gateway, and runs what it owns."""
    live = c.live()
    try:
        views = {n: _owners(g.url) for n, g in live.items()}
        running = {n: set(_get(f"{g.url}/cluster")["running"]) for n, g in live.items()}
    except httpx.HTTPError:
        return False
    for view in views.values():
        if set(view) != expect or any(owner not in live for owner in view.values()):
            return False
    first = next(iter(views.values()))
    return all(sid in running[owner] for sid, owner in first.items() if owner is not None)


class OwnershipAudit:
    """Samples every live gateway every 0.2 s: each ``GET /streams`` must show each stream once, and
    the stream runs recorded by each gateway (``GET /cluster`` history) must never overlap."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.samples = 0
        self.duplicates: list[str] = []
        self.last: dict[tuple[str, int], dict[str, Any]] = {}  # (node, pid) -> its last /cluster answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ownership-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=3) as client:
            while not self._stop.wait(0.2):
                for node, gw in list(self.c.live().items()):
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        rows = client.get(f"{gw.url}/streams").json()
                        ids = [r["id"] for r in rows]
                        if len(ids) != len(set(ids)):
                            self.duplicates.append(f"{node}: {ids}")
                        self.last[(node, gw.pid)] = client.get(f"{gw.url}/cluster").json()
                        self.samples += 1

    def runs(self) -> list[tuple[str, str, float, float]]:
        """(stream, node, started, stopped) of every run seen.  A run still open in a gone gateway's
        last answer ended at its log line "stopped stream" (a clean stop: it had stopped before its
        lease was released, but its HTTP server was no longer sampled), else when the process went."""
        out = []
        now = time.time()
        for (node, pid), status in self.last.items():  # each process of a gateway: a restart is another
            end = self.c.gone.get(pid, now)
            stops = _logged_stops(self.c.nodes[node].log()) if pid in self.c.gone else {}
            for run in status["history"]:
                stopped = run["stopped_at"]
                if stopped is None:
                    stopped = next((t for t in stops.get(run["stream"], []) if t >= run["started_at"]), end)
                out.append((run["stream"], f"{node}[{pid}]", run["started_at"], min(stopped, end)))
        return out

    def check(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self.samples > 0, "the audit never reached a gateway"
        assert not self.duplicates, f"a stream was listed twice: {self.duplicates[:3]}"
        by_stream: dict[str, list[tuple[str, float, float]]] = {}
        for sid, node, start, stop in self.runs():
            by_stream.setdefault(sid, []).append((node, start, stop))
        for sid, runs in by_stream.items():
            runs.sort(key=lambda r: r[1])
            for (n1, _, e1), (n2, s2, _) in itertools.pairwise(runs):
                assert n1 == n2 or s2 >= e1, f"stream {sid} ran on {n1} until {e1:.3f} and on {n2} from {s2:.3f}"


_STOPPED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO .*: cluster: node \S+ stopped stream (\S+) after")


def _logged_stops(log: str) -> dict[str, list[float]]:
    """stream -> the times (epoch, in order) a gateway's log says it stopped running it here; the log's
    time is cut to the millisecond, so 1 ms is added: each is at or after the run's real end."""
    out: dict[str, list[float]] = {}
    for line in log.splitlines():
        if m := _STOPPED.match(line):
            at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() + 0.001  # local time, as logged
            out.setdefault(m[2], []).append(at)
    return out


def _triton_inferences(triton: EmbeddedTriton) -> int:
    stats = _get(f"{triton.http_url}/v2/models/{MODEL}/stats")
    return sum(int(m.get("inference_count", 0)) for m in stats["model_stats"])


def _gateway_inferences(c: Cluster) -> int:
    return int(sum(total(scrape(g.url), "streamml_inferences_total") for g in c.live().values()))


@pytest.fixture(scope="module")
def cluster(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(tmp / "redis")
    redis.start()
    camera = RtspServer(fps=10)
    streams = [{"id": sid, "url": camera.url, "sample_fps": 1} for sid in STREAMS]
    env = {
        "APP_TRITON__URL": triton.grpc_url,
        "APP_TRITON__REQUEST_TIMEOUT_S": "10",
        "APP_CLUSTER__REDIS_URL": redis.url,
        "APP_CLUSTER__LEASE_S": str(LEASE_S),
        "APP_STREAMS": json.dumps(streams),
        "APP_FRAME_WIDTH": "320",
        "APP_FRAME_HEIGHT": "180",
        "APP_STREAM_POLICY__ALLOWED_HOSTS": '["127.0.0.1"]',
        "APP_STREAM_POLICY__ALLOWED_NETWORKS": '["127.0.0.0/8"]',
        "APP_INGEST__KEEPALIVE_S": "1",
    }
    c = Cluster(redis, camera, triton, env, tmp)
    try:
        for node in NODES:
            c.start(node)
        yield c
    finally:
        for gw in c.nodes.values():
            gw.stop()
        camera.stop()
        redis.stop()


@pytest.fixture(scope="module")
def audit(cluster: Cluster) -> Iterator[OwnershipAudit]:
    a = OwnershipAudit(cluster)
    yield a
    a.check()


def test_streams_spread_across_three_gateways_once_each(cluster: Cluster, audit: OwnershipAudit) -> None:
    # Given three gateways sharing 12 configured streams through Redis
    wait_until(lambda: _settled(cluster, set(STREAMS)), 60, what="12 streams owned by live gateways")
    # Then each gateway runs some, and every gateway lists all 12 with the same owners
    owners = _owners(cluster.url("gw-a"))
    assert {_owners(cluster.url(n)) == owners for n in NODES} == {True}
    per_node = {n: sorted(s for s, o in owners.items() if o == n) for n in NODES}
    assert all(per_node.values()), f"rendezvous hashing left a gateway idle: {per_node}"
    wait_until(
        lambda: all(r["state"] == "running" for r in _get(f"{cluster.url('gw-b')}/streams")), 60, what="all running"
    )
    # And Triton ran one inference per inference the gateways started (each frame once, on one gateway)
    before_t, before_g = _triton_inferences(cluster.triton), _gateway_inferences(cluster)
    wait_until(lambda: _gateway_inferences(cluster) >= before_g + 36, 60, what="36 more stream inferences")
    after_g = _gateway_inferences(cluster)
    after_t = _triton_inferences(cluster.triton)
    # in flight at either reading: at most one per stream
    assert abs((after_t - before_t) - (after_g - before_g)) <= len(STREAMS), (after_t - before_t, after_g - before_g)
    for node in NODES:
        samples = scrape(cluster.url(node))
        sampled = total(samples, "streamml_frames_sampled_total")
        dropped = total(samples, "streamml_frames_dropped_total")
        inferred = total(samples, "streamml_inferences_total")
        assert abs(sampled - dropped - inferred) <= len(per_node[node]), (node, sampled, dropped, inferred)


def _owner_of(cluster: Cluster, sid: str) -> str:
    owner = _owners(cluster.url("gw-a"))[sid]
    assert owner is not None
    return owner


def _calm(c: Cluster) -> bool:
    """No live gateway is settling (after joining, or after Redis answered again): each takes
    streams over at its next tick."""
    try:
        return all(_get(f"{g.url}/health")["cluster"]["settling_s"] is None for g in c.live().values())
    except httpx.HTTPError:
        return False


def _stream_of(cluster: Cluster, node: str) -> str:
    return next(s for s, o in _owners(cluster.url("gw-a")).items() if o == node)


def test_any_gateway_serves_the_events_of_a_stream_another_runs(cluster: Cluster, audit: OwnershipAudit) -> None:
    # Given a stream run by gw-b
    sid = _stream_of(cluster, "gw-b")
    # When a client subscribes on gw-a
    with SseRecorder(f"{cluster.url('gw-a')}/streams/{sid}/events", seconds=60) as rec:
        wait_until(lambda: len(rec.of("prediction")) >= 3, 30, what="3 predictions relayed by gw-a")
    events = rec.of("prediction")
    # Then it gets gw-b's predictions, with consecutive ids of one run
    assert {e.data["stream"] for e in events} == {sid}
    ids = [tuple(map(int, e.id.split("-"))) for e in events if e.id]
    assert all(b == (a[0], a[1] + 1) or b[0] > a[0] for a, b in itertools.pairwise(ids)), ids

    # And its frames too (frame.jpg, for the viewer behind a load balancer): shared through Redis
    def frame() -> httpx.Response | None:
        r = httpx.get(f"{cluster.url('gw-a')}/streams/{sid}/frame.jpg", timeout=10)
        return r if r.status_code == 200 else None

    wait_until(frame, 15, what="a frame of gw-b's stream on gw-a")
    r = frame()
    assert r is not None and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert int(r.headers["x-frame-index"]) >= 1
    missing = httpx.get(f"{cluster.url('gw-a')}/streams/nope/frame.jpg", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "stream_not_found"


def test_last_event_id_resumes_without_a_hole_on_another_gateway(cluster: Cluster, audit: OwnershipAudit) -> None:
    sid = _stream_of(cluster, "gw-c")
    # Given a client that read some events from gw-a and went away
    with SseRecorder(f"{cluster.url('gw-a')}/streams/{sid}/events", seconds=60) as first:
        wait_until(lambda: len(first.of("prediction")) >= 2, 30, what="2 predictions")
    last = [e for e in first.events if e.id][-1].id
    assert last is not None
    run, seq = map(int, last.split("-"))
    time.sleep(3)  # the gap to resume across: ~3 predictions at 1 fps
    # When it reconnects to gw-b with Last-Event-ID
    resume = {"Last-Event-ID": last}
    with SseRecorder(f"{cluster.url('gw-b')}/streams/{sid}/events", seconds=60, headers=resume) as again:
        wait_until(lambda: len([e for e in again.events if e.id]) >= 4, 30, what="the replay and live events")
    # Then the ids continue from it with nothing missing or repeated
    ids = [tuple(map(int, e.id.split("-"))) for e in again.events if e.id]
    assert ids[0] == (run, seq + 1), (last, ids[:3])
    assert all(b == (a[0], a[1] + 1) for a, b in itertools.pairwise(ids)), ids
    assert not [e for e in again.of("status") if e.data.get("reason") == "events_lost"]


def test_post_on_one_gateway_runs_somewhere_and_delete_on_another_stops_it(
    cluster: Cluster, audit: OwnershipAudit
) -> None:
    # When a stream is added on gw-a
    body = {"id": "added", "url": cluster.camera.url, "sample_fps": 1}
    r = httpx.post(f"{cluster.url('gw-a')}/streams", json=body, timeout=10)
    assert r.status_code == 201, r.text
    assert httpx.post(f"{cluster.url('gw-b')}/streams", json=body, timeout=10).status_code == 409
    # Then some gateway runs it, and every gateway lists it
    wait_until(lambda: _settled(cluster, {*STREAMS, "added"}), 30, what="the added stream owned")
    owner = _owner_of(cluster, "added")
    wait_until(lambda: "added" in _get(f"{cluster.url(owner)}/cluster")["running"], 10, what="it runs on its owner")
    with SseRecorder(f"{cluster.url('gw-c')}/streams/added/events", seconds=60) as rec:
        wait_until(lambda: len(rec.of("prediction")) >= 1, 30, what="a prediction of the added stream")
        # When it is deleted on gw-c
        assert httpx.delete(f"{cluster.url('gw-c')}/streams/added", timeout=10).status_code == 204
        # Then it stops everywhere, and its subscribers get its last status and the end of the response
        wait_until(
            lambda: all("added" not in _get(f"{g.url}/cluster")["running"] for g in cluster.live().values()),
            15,
            what="no gateway runs it",
        )
        wait_until(lambda: any(e.data.get("reason") == "stream removed" for e in rec.of("status")), 15, what="last")
    assert all("added" not in _owners(g.url) for g in cluster.live().values())
    assert httpx.delete(f"{cluster.url('gw-a')}/streams/added", timeout=10).status_code == 404


def test_a_killed_gateway_s_streams_move_and_subscribers_stay(cluster: Cluster, audit: OwnershipAudit) -> None:
    wait_until(lambda: _settled(cluster, set(STREAMS)) and _calm(cluster), 30, what="a settled cluster")
    victims = sorted(s for s, o in _owners(cluster.url("gw-a")).items() if o == "gw-b")
    assert victims
    sid = victims[0]
    # Given a client on gw-a reading a stream gw-b runs
    with SseRecorder(f"{cluster.url('gw-a')}/streams/{sid}/events", seconds=120) as rec:
        wait_until(lambda: len(rec.of("prediction")) >= 2, 30, what="predictions before the kill")
        # When gw-b is SIGKILLed
        gw_b = cluster.nodes["gw-b"]
        os.kill(gw_b.pid, signal.SIGKILL)
        killed = time.time()
        cluster.gone[gw_b.pid] = killed
        assert gw_b.proc is not None
        gw_b.proc.wait(10)
        # Then its streams are owned again within lease_s + 5 s
        wait_until(lambda: _settled(cluster, set(STREAMS)), LEASE_S + 5, interval=0.1, what="takeover")
        took = time.time() - killed
        # And the client on gw-a never disconnected, and gets the new run's events
        wait_until(lambda: len(rec.of("prediction", after=killed + took)) >= 2, 30, what="predictions after")
        assert rec.response is None, "the subscriber was disconnected"
    runs = {e.id.split("-")[0] for e in rec.of("prediction") if e.id}
    assert len(runs) >= 2, "the stream did not start a new run on its new owner"
    print(f"takeover in {took:.2f}s (lease_s {LEASE_S})")
    # gw-b comes back under the same id: it takes back its streams (hashing), handing over cleanly
    cluster.start("gw-b")
    wait_until(lambda: _settled(cluster, set(STREAMS)) and "gw-b" in _owners(cluster.url("gw-a")).values(), 30)


def test_redis_restarted_empty_streams_keep_running_and_resynchronise(cluster: Cluster, audit: OwnershipAudit) -> None:
    wait_until(lambda: _settled(cluster, set(STREAMS)), 30, what="a settled cluster")
    owners = _owners(cluster.url("gw-a"))
    local = next(s for s, o in owners.items() if o == "gw-c")
    with SseRecorder(f"{cluster.url('gw-c')}/streams/{local}/events", seconds=120) as rec:
        wait_until(lambda: len(rec.of("prediction")) >= 1, 30, what="a prediction")
        # When Redis dies
        cluster.redis.kill()
        down = time.time()
        # Then every gateway says so, keeps running its streams, and its local subscribers keep getting events
        wait_until(
            lambda: all(_get(f"{g.url}/health")["cluster"]["state"] == "redis_down" for g in cluster.live().values()),
            15,
            what="redis_down on every gateway",
        )
        wait_until(lambda: len(rec.of("prediction", after=down + 1)) >= 2, 30, what="local events while Redis is down")
        running = {n: set(_get(f"{g.url}/cluster")["running"]) for n, g in cluster.live().items()}
        assert set().union(*running.values()) == set(STREAMS), running
        # And registry changes answer 503 with an error body
        r = httpx.post(f"{cluster.url('gw-a')}/streams", json={"id": "x", "url": cluster.camera.url}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "cluster_unavailable", r.text
        assert httpx.delete(f"{cluster.url('gw-a')}/streams/{local}", timeout=10).status_code == 503
        assert httpx.get(f"{cluster.url('gw-a')}/health/ready", timeout=10).status_code == 200
        # When Redis comes back empty (no persistence)
        cluster.redis.start()
        # Then the gateways register the streams again and everything settles with no stream owned twice;
        # each gateway first settles (it keeps what it runs, and says for how long), then takes streams over
        settling: set[str] = set()

        def resynchronised() -> bool:
            for node, g in cluster.live().items():
                with contextlib.suppress(httpx.HTTPError):
                    if (_get(f"{g.url}/health")["cluster"]["settling_s"] or 0) > 0:
                        settling.add(node)
            return settling == set(cluster.live()) and _settled(cluster, set(STREAMS)) and _calm(cluster)

        wait_until(resynchronised, 30, what="resynchronised, each gateway having settled")
        assert all(_get(f"{g.url}/health")["cluster"]["state"] == "active" for g in cluster.live().values())
        up = time.time()
        wait_until(lambda: len(rec.of("prediction", after=up)) >= 2, 30, what="events after Redis came back")
        assert rec.response is None, "the local subscriber was disconnected"


def test_a_gateway_that_stops_cleanly_hands_its_streams_over_at_once(cluster: Cluster, audit: OwnershipAudit) -> None:
    # (a gateway still settling after Redis came back, as the test before leaves them, takes nothing over)
    wait_until(lambda: _settled(cluster, set(STREAMS)) and _calm(cluster), 30, what="a settled cluster")
    sid = _stream_of(cluster, "gw-c")
    with SseRecorder(f"{cluster.url('gw-a')}/streams/{sid}/events", seconds=120) as rec:
        wait_until(lambda: len(rec.of("prediction")) >= 1, 30, what="a prediction")
        # When gw-c is stopped with SIGTERM (a rolling update, a scale-down)
        stopping = time.time()
        gw_c = cluster.nodes["gw-c"]
        pid, proc = gw_c.pid, gw_c.proc
        gw_c.stop()
        cluster.gone[pid] = time.time()  # its streams stopped by now, whatever its last sample said
        # Then its streams move without waiting for its lease to expire
        try:
            wait_until(lambda: _settled(cluster, set(STREAMS)), LEASE_S, interval=0.1, what="a handover")
        except AssertionError as e:
            tail = "\n".join(gw_c.log().splitlines()[-15:])
            raise AssertionError(f"{e}; gw-c exited {proc and proc.returncode}, its log ends:\n{tail}") from None
        moved = time.time() - stopping
        # And the client on gw-a was told, and goes on with the new owner's events
        wait_until(lambda: len(rec.of("prediction", after=stopping + moved)) >= 1, 30, what="the new owner's events")
        assert rec.response is None, "the subscriber was disconnected"
    reasons = [e.data["reason"] for e in rec.of("status")]
    assert "moving" in reasons, reasons
    print(f"handover on SIGTERM in {moved:.2f}s")
